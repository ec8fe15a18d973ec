"""What the GPU session's steps share (``benchmarks/gpu_session.py`` runs them): the repository, the
log line, the training processes started (so that a stopped session ends them), where ``adopt`` and
``repro`` work, and the files of a bundled teacher."""

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib.pipeline import stages  # noqa: E402

# every training process started here, so a stopped session can end them (launch_all ends its own
# when it is interrupted, but not those of a launch_all running in another thread); the session's
# main() installs it. Once the session stops, no new one starts, and the threads' work (the sweep's
# scratch runs, the twin teacher) gets a short grace before the last pack.
children, helpers, stopping = [], [], threading.Event()


def track_children() -> None:
    start = stages.start_run

    def tracked(*args, **kwargs):
        if stopping.is_set():
            raise RuntimeError("the GPU session is stopping: no new training process")
        started = start(*args, **kwargs)
        children.append(started[0])
        return started
    stages.start_run = tracked


def log(msg: str) -> None:
    print(f"[gpu_session {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def target_repo(out: Path, dry: bool) -> Path:
    """Where ``adopt`` and ``repro`` work: this repository on the device; in a dry run a scratch copy of
    its working tree (the files git tracks or would track, and the data) in a git repository of its own,
    next to ``out`` so that it is not packed, and this repository stays as it is."""
    if not dry:
        return REPO
    scratch = out.parent / f"{out.name}_dry_repo"
    if not (scratch / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, listed):
            if (REPO / rel).is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, scratch / rel)
        shutil.copytree(REPO / "data", scratch / "data", dirs_exist_ok=True)  # git-ignored, as on the device
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=dry", "-c", "user.email=dry@localhost", "commit", "-qm", "dry run copy"]):
            subprocess.run(cmd, cwd=scratch, check=True)
    return scratch


def profile_path(repo: Path, profile: str) -> Path:
    """A profile's YAML file in ``repo`` (this one or the dry run's scratch copy)."""
    return repo / "g2sd_lib" / "pipeline" / "profiles" / f"{profile}.yaml"


def bundles(teachers: Path) -> dict:
    """``{prefix: its files}`` for each teacher bundled in ``teachers`` (card ``<prefix>.md``)."""
    return {card.stem: [card, *(teachers / f"{card.stem}_{role}{ext}" for role in ("mae", "classifier")
                                for ext in (".safetensors", ".json"))]
            for card in sorted(teachers.glob("*.md"))}
