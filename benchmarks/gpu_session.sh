#!/usr/bin/env bash
# The `gpu` profile's work on a lent GPU: the teacher, then the whole profile, in one call if time allows.
#
# Here (CPU, before the device call):
#   benchmarks/gpu_session.sh prepare
#     puts into .whl/ (git-ignored; the device call carries it: carry [".whl"]) the wheels the
#     device lacks (benchmarks/device_wheels.sh) and Fashion-MNIST compressed with xz, and prints
#     what the call will carry (tracked files + .whl/ must stay under 64 MiB).
#   benchmarks/gpu_session.sh dry sweep adopt repro bench
#     the exact steps, shrunk, on this CPU (minutes; adopt and repro in a scratch copy of the tree):
#     run it before spending device time.
#
# On the device (its own python3 3.12 with torch; nothing can be downloaded there):
#   bash benchmarks/gpu_session.sh run --deadline-min 8 sweep adopt repro bench   (timeout_s 600)
#     the teacher chosen on validation and bundled, made the profile's, then the pipeline;
#   bash benchmarks/gpu_session.sh run --deadline-min 8 repro   (a later session, if the first ran out
#     of time: adopt from its archives here first, benchmarks/README.md)
#   bash benchmarks/gpu_session.sh run --deadline-min 8 repro layer_decay kd   (once the repro fits: the
#     pretrained students' layer decay and KD's alpha and temperature chosen on validation at its budget)
#     installs the wheels into /tmp/site, unpacks the data, makes the tree a git repository (DVC
#     needs one), then runs benchmarks/gpu_session.py ARGS --out /tmp/gpu_session --pack-to $OUT: only
#     archives go to $OUT (the device returns at most 8 files of 16 MiB): gpu_session.tar.gz (histories,
#     metrics, logs, reports; no training checkpoints) and teachers_<prefix>.tar.gz per bundled teacher,
#     renewed every minute, so a call cut off at its limit still returns them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA=data/fashion-mnist
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
mode="${1:?usage: gpu_session.sh prepare | dry STEPS... | run STEPS...}"
shift

case "$mode" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    bash benchmarks/device_wheels.sh | tail -1
    mkdir -p .whl/fmnist
    for f in $FILES; do
        [ -f ".whl/fmnist/$f.xz" ] || xz -9 -k -c "$DATA/$f" > ".whl/fmnist/$f.xz"
    done
    tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -sb .whl | cut -f1)
    echo "the call carries $(( (tracked + carried) / 1048576 )) MiB (tracked files $(( tracked / 1048576 )), .whl $(( carried / 1048576 ))); the limit is 64"
    [ $(( tracked + carried )) -lt $(( 64 * 1048576 )) ] || { echo "over 64 MiB: carry less"; exit 1; }
    ;;
dry)
    dest="${OUT:-/tmp/gpu_session_dry}"
    .venv/bin/python benchmarks/gpu_session.py --dry --out "$dest/work" --pack-to "$dest" --concurrent 3 "$@"
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$ROOT" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    mkdir -p "$DATA"
    for f in $FILES; do  # python's lzma: the device may lack the xz binary
        python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
            ".whl/fmnist/$f.xz" "$DATA/$f"
    done
    python3 -m g2sd_lib.fmnist verify --dest "$DATA"
    if [ ! -d .git ]; then  # DVC needs a git repository; dulwich (a carried wheel) makes one if git is missing
        if command -v git >/dev/null; then
            git init -q && echo /.whl/ >> .git/info/exclude && git add -A \
                && git -c user.name=gpu -c user.email=gpu@localhost commit -qm "device copy"
        else
            python3 -c "from dulwich import porcelain; porcelain.init('.')"
        fi
    fi
    nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
    python3 benchmarks/gpu_session.py --out /tmp/gpu_session --pack-to "${OUT:?set OUT to the results folder}" "$@"
    ;;
*)
    echo "unknown mode $mode: prepare | dry | run" >&2; exit 2 ;;
esac
