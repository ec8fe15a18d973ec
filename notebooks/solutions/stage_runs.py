"""The pipeline's trained runs, for the solutions whose exercise is about them (notebooks 02-04).

``G2SD_RUNS`` names a profile's run directory (``runs/<profile>``, as ``make repro`` leaves it; the
tests point it at smoke runs they train); unset, the repository's ``runs/fmnist`` is used, then
``runs/smoke``. The teachers are that profile's own, the ones its students were distilled from.
"""

import os
from pathlib import Path

from stage_common import repo_root

from g2sd_lib import checkpoints
from g2sd_lib.pipeline import config


def runs_dir() -> Path:
    """``runs/<profile>`` holding a GD student and the students of notebook 03."""
    if os.environ.get("G2SD_RUNS"):
        candidates = [Path(os.environ["G2SD_RUNS"])]
    else:
        candidates = [repo_root() / "runs" / p for p in ("fmnist", "smoke")]
    for root in candidates:
        if (root / "pretrain" / "gd" / "model.safetensors").exists():
            return root
    raise FileNotFoundError(f"no trained runs in {', '.join(map(str, candidates))}: run the pipeline first "
                            "(`make repro`, or `make repro P=smoke` for a quick one) or set G2SD_RUNS=runs/<profile>")


def teacher(role: str):
    """The profile's teacher for ``role`` (``gd-teacher`` or ``sd-teacher``), in eval mode."""
    paths = config.teacher_paths(runs_dir())
    return checkpoints.load_model(paths["gd" if role == "gd-teacher" else "sd"], role)[0].eval()


def gd_student():
    """The generically distilled student (``pretrain/gd``), in eval mode."""
    return checkpoints.load_saved_model(runs_dir() / "pretrain" / "gd" / "model.safetensors").eval()


def student(name: str, seed: int | None = None):
    """A trained student of notebook 03 (its first seed found when ``seed`` is None), in eval mode."""
    base = runs_dir() / "students" / name
    seeds = [seed] if seed is not None else sorted(int(p.name[4:]) for p in base.glob("seed*"))
    for s in seeds:
        path = config.run_dir(runs_dir(), "students", name, s) / "model.safetensors"
        if path.exists():
            return checkpoints.load_saved_model(path).eval()
    raise FileNotFoundError(f"no trained student {name!r} under {base}")
