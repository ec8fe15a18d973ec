"""The GPU session's ``repro`` step: the `gpu` profile through DVC, its independent stages at once
(``python -m g2sd_lib.pipeline.repro gpu``: ``concurrent_stages`` of them, each training
``concurrent_runs`` seeds at once), timed per stage; what it made comes back even when the deadline
stops it halfway. A dry run does it in a scratch copy of the working tree, with the profile shrunk.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gpu_common import REPO, log, profile_path, target_repo  # first: it puts the repository on the path

from g2sd_lib.pipeline.profiles import load_profile_file, shrink

# what repro brings back from the repository it ran in (no checkpoints: histories, reports, the lock)
REPRO_FILES = ("reports/gpu", "reports/README.md", "reports/tables", "dvc.lock", "params.yaml",
               "g2sd_lib/pipeline/profiles/gpu.yaml", "teachers/gpu.md", "teachers/README.md")


def _collect(repo: Path, dest: Path) -> None:
    histories = (repo / "runs" / "gpu").rglob("history.json")  # a stopped repro's finished runs too
    for src in [*(repo / rel for rel in REPRO_FILES), *histories]:
        if src.is_dir():
            shutil.copytree(src, dest / src.relative_to(repo), dirs_exist_ok=True)
        elif src.is_file():
            (dest / src.relative_to(repo)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / src.relative_to(repo))


def _call(cmd: list[str], cwd: Path, env: dict, log_path: Path) -> None:
    """Run ``cmd``, its lines to stdout and to ``log_path``. When the session stops meanwhile (SIGTERM,
    the deadline), the command gets SIGTERM and a moment to stop its own processes (g2sd_lib.pipeline.repro stops
    its stages), unlike subprocess.run, which would SIGKILL it and leave them running."""
    log(" ".join(cmd[1:]))
    with open(log_path, "a") as logf:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                logf.write(line)
            if proc.wait() != 0:
                raise RuntimeError(f"{' '.join(cmd[1:])} failed (exit {proc.returncode}); see {log_path}")
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def repro(out: Path, dry: bool) -> None:
    """The `gpu` profile through DVC with independent stages at once, timed per stage (g2sd_lib.pipeline.repro
    --json, written each time a stage ends), then ``reports/README.md`` (g2sd_lib.pipeline.compare). What it made
    goes to ``out/repro`` even when the session is stopped halfway (``REPRO_FILES`` and every run's history).
    A dry run does it in the scratch copy, with the `gpu` profile shrunk (``shrink``) on this CPU."""
    import yaml

    repo = target_repo(out, dry)
    if dry:  # the profile the adopt step wrote, shrunk; comments are lost in the scratch copy only
        profile = profile_path(repo, "gpu")
        shrunk = shrink(load_profile_file(profile), canvases=(64, 16, 16))  # one full dense batch of 64
        profile.write_text(yaml.safe_dump(shrunk, sort_keys=False))
    here = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *here]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # dvc, papermill
    log_path = out / "repro.log"
    try:
        _call([sys.executable, "-m", "g2sd_lib.pipeline.profiles", "enable", "gpu"], repo, env, log_path)
        # the profile's stages only: the entry notebook is profile-free (its inputs are the `fmnist` bundle)
        _call([sys.executable, "-m", "g2sd_lib.pipeline.repro", "gpu", "--targets", "report@gpu", "explore@gpu",
               "--json", str(out / "pipeline_gpu.json"), *(["--allow-cpu"] if dry else [])], repo, env, log_path)
        _call([sys.executable, "-m", "g2sd_lib.pipeline.compare"], repo, env, log_path)  # reports/README.md
    finally:
        _collect(repo, out / "repro")
