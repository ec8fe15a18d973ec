"""From ``params.yaml`` sections to the stage configurations ``stages.run_stage`` takes.

``params.yaml`` groups runs: ``pretrain`` (GD and the MAE-student baseline) and ``students`` (the
G2SD student and the baselines). Inside a group, ``common`` holds the shared settings and each run
overrides them (deep merge). Run outputs live under ``<workdir>/runs/<group>/<run>``.
"""

import copy
from pathlib import Path

# The paper's comparison: every student and what initialises it.
PRETRAIN_RUNS = ("gd", "mae_student")
STUDENT_RUNS = ("g2sd", "gd_only", "sd_only", "mae", "scratch", "kd")


def deep_merge(base: dict, override: dict) -> dict:
    """Copy of ``base`` with ``override`` merged in, recursively for nested dicts."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_dir(workdir, group: str, run: str, seed: int | None = None) -> Path:
    path = Path(workdir) / "runs" / group / run
    return path / f"seed{seed}" if seed is not None else path


def teacher_paths(workdir=".") -> dict:
    """Where the teacher stage leaves the two teachers (our safetensors layout): ``gd`` the MAE with
    decoder, ``sd`` the fine-tuned classifier."""
    root = Path(workdir) / "runs" / "teacher"
    return {"gd": root / "mae.safetensors", "sd": root / "classifier.safetensors"}


def stage_config(params: dict, group: str, run: str, workdir=".", seed: int | None = None) -> dict:
    """The ``run_stage`` configuration of run ``run`` of ``group`` (``pretrain`` or ``students``).

    ``init`` names a pretrain run (``gd``, ``mae_student``) or is null; teachers come from the
    teacher stage. ``seed`` overrides ``train.seed`` and gives the run its own directory.
    """
    section = params[group]
    if run not in section or run == "common":
        known = [k for k in section if k != "common"]
        raise ValueError(f"no run {run!r} in params section {group!r}; known: {', '.join(known)}")
    cfg = deep_merge(section.get("common", {}), section[run])
    cfg["data"] = deep_merge(params.get("data", {}), cfg.get("data", {}))
    cfg.setdefault("train", {})
    if seed is not None:
        cfg["train"]["seed"] = seed
    cfg["out_dir"] = str(run_dir(workdir, group, run, seed))
    teachers = teacher_paths(workdir)
    if cfg["kind"] == "gd":
        cfg["teacher"] = str(teachers["gd"])
    elif cfg["kind"] in ("sd", "kd"):
        cfg["teacher"] = str(teachers["sd"])
    init = cfg.pop("init", None)
    if init:
        cfg["init"] = str(run_dir(workdir, "pretrain", init) / "model.safetensors")
    return cfg


def teacher_stage_config(params: dict, step: str, workdir=".") -> dict:
    """``run_stage`` configuration of the teacher recipe (``train`` mode): step ``pretrain`` (MAE)
    or ``finetune`` (classifier initialised from the pretrained encoder)."""
    cfg = copy.deepcopy(params["teacher"][step])
    cfg["data"] = deep_merge(params.get("data", {}), cfg.get("data", {}))
    cfg["out_dir"] = str(run_dir(workdir, "teacher", step))
    if step == "finetune":
        cfg["init"] = str(run_dir(workdir, "teacher", "pretrain") / "model.safetensors")
    return cfg
