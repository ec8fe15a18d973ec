#!/usr/bin/env bash
# Collects into .whl/ the wheels the GPU machine (x86-64, CPython 3.12, no network) lacks for
# running the DVC pipeline (dvc repro -> papermill -> ipykernel kernel -> g2sd_lib + pydantic).
# On the device: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#     --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# then, for `dvc repro` (its stages call `papermill`, the kernel imports g2sd_lib from the repo):
#     export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$PWD
# The packages the device already has are listed in benchmarks/device_packages.txt.
# Usage: benchmarks/device_wheels.sh   (from anywhere; needs the venv from `make setup` and PyPI)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
DEST="$ROOT/.whl"
DEVICE_LIST="$ROOT/benchmarks/device_packages.txt"
MAX_MIB="${MAX_MIB:-24}"   # the wheels' share of the 64 MiB a device call carries (tree ~12, data ~26)
ROOTS="dvc papermill ipykernel pydantic nbformat nbclient ipywidgets"
# Left out although required, to fit the 64 MiB (22 MiB): debugpy (ipykernel runs without it: no
# debugger), jedi (IPython runs without it: no completion), widgetsnbextension (the classic
# notebook's front-end files), cryptography and pygit2 (dvc's remotes and one of scmrepo's git
# backends; dulwich is the other). Checked here: papermill ran a kernel with debugpy and jedi
# removed; `dvc repro`, `dvc status` and `dvc commit -f` of a matrix pipeline ran with cryptography
# and pygit2 removed, in a repository dulwich made, with no git binary on the PATH.
SKIP="debugpy jedi widgetsnbextension cryptography pygit2"
mkdir -p "$DEST"

# 1. Closure of the run-time requirements of ROOTS as installed in the venv, with markers
#    evaluated for Linux x86_64 / CPython 3.12 and extras skipped, minus the device's packages
#    and our own g2sd-lib. Prints "name==version" lines.
NEEDED="$(SKIP="$SKIP" "$PY" - "$DEVICE_LIST" $ROOTS <<'PYEOF'
import os, sys
from importlib.metadata import distribution, PackageNotFoundError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
env = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
       "platform_machine": "x86_64", "python_version": "3.12", "python_full_version": "3.12.3",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "extra": ""}
device = {canon(l.strip()) for l in open(sys.argv[1]) if l.strip()} | {"g2sd-lib"}
device |= {canon(n) for n in os.environ["SKIP"].split()}
seen, todo = {}, [canon(n) for n in sys.argv[2:]]
while todo:
    name = todo.pop()
    if name in seen:
        continue
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        sys.exit(f"error: {name} is required but not installed in the venv")
    seen[name] = dist.version
    for r in map(Requirement, dist.requires or []):
        if r.marker and not r.marker.evaluate(env):  # extra == "" drops extras
            continue  # an extra's requirement, or one excluded on Linux / Python 3.12
        todo.append(canon(r.name))
for name in sorted(set(seen) - device):
    print(f"{name}=={seen[name]}")
PYEOF
)"
echo "needed on the device ($(wc -l <<<"$NEEDED") distributions):" $NEEDED

# Drop wheels left from earlier runs that are not wanted (other versions / distributions).
"$PY" - "$DEST" $NEEDED <<'PYEOF'
import sys, pathlib
from packaging.utils import parse_wheel_filename, canonicalize_name as canon
want = {tuple(canon(x) for x in s.split("==")) for s in sys.argv[2:]}
for f in pathlib.Path(sys.argv[1]).glob("*.whl"):
    name, version, *_ = parse_wheel_filename(f.name)
    if (name, canon(str(version))) not in want:
        print("removing stale", f.name); f.unlink()
PYEOF

# 2. One cp312 manylinux x86_64 (or pure-python) wheel per distribution; build one locally
#    from the sdist when PyPI has no wheel (pure-python packages only, checked in step 3).
PLATFORMS=""
for t in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    PLATFORMS+=" --platform ${t}_x86_64"
done
shopt -s nullglob nocaseglob
for req in $NEEDED; do
    name="${req%%==*}" version="${req#*==}"
    have=("$DEST/${name//-/_}-$version-"*.whl)   # wheel file names spell "-" as "_"
    if [ ${#have[@]} -gt 0 ]; then continue; fi  # already there from an earlier run
    if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp $PLATFORMS -d "$DEST" "$req" 2>/dev/null; then
        continue
    fi
    echo "no compatible wheel on PyPI for $req: building one from the sdist"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$req"
done

# 3. Check: exactly one wheel per distribution, each installable on cp312 manylinux x86_64;
#    list with sizes; fail when the total exceeds MAX_MIB.
"$PY" - "$DEST" "$MAX_MIB" $NEEDED <<'PYEOF'
import sys, pathlib
from packaging.utils import parse_wheel_filename, canonicalize_name as canon
from packaging.tags import cpython_tags, compatible_tags
dest, max_mib, want = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
plats = [f"manylinux_2_{n}_x86_64" for n in range(28, 4, -1)] + \
        ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
ok_tags = set(cpython_tags((3, 12), platforms=plats)) | set(compatible_tags((3, 12), "cp312", plats))
found, bad, total = {}, [], 0
for f in sorted(dest.glob("*.whl")):
    name, version, _, tags = parse_wheel_filename(f.name)
    found.setdefault(name, []).append(f.name)
    if not tags & ok_tags:
        bad.append(f"{f.name}: tags not compatible with cp312 manylinux x86_64")
    size = f.stat().st_size; total += size
    print(f"{size / 2**20:8.2f} MiB  {f.name}")
print(f"{total / 2**20:8.2f} MiB  total, {len(found)} wheels")
bad += [f"{n}: {len(fs)} wheels {fs}" for n, fs in found.items() if len(fs) > 1]
bad += [f"{r}: no wheel" for r in want if canon(r.split("==")[0]) not in found]
if total > max_mib * 2**20:
    bad.append(f"total {total / 2**20:.2f} MiB exceeds {max_mib} MiB")
if bad:
    sys.exit("error:\n  " + "\n  ".join(bad))
PYEOF
