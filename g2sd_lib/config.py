"""From ``params.yaml`` sections to the stage configurations ``stages.run_stage`` takes.

``params.yaml`` groups runs: ``pretrain`` (GD and the MAE-student baseline), ``students`` (the
G2SD student and the baselines) and ``dense`` (the dense teachers and students). Inside a group,
``common`` holds the shared settings and each run overrides them (deep merge). Run outputs live
under ``<workdir>/runs/<group>/<run>[/seed<k>]`` (dense: group ``dense/<task>``).
"""

import copy
from pathlib import Path

# The paper's comparison: every student and what initialises it.
PRETRAIN_RUNS = ("gd", "mae_student")
STUDENT_RUNS = ("g2sd", "gd_only", "sd_only", "mae", "scratch", "kd")
DENSE_TASKS = ("segmentation", "detection")
EVAL_BATCH_SIZE = 256  # validation / evaluation batch when a profile does not set one


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


def dense_stage_config(params: dict, task: str, run: str, workdir=".", seed: int | None = None) -> dict:
    """The ``run_stage`` configuration (kind ``segmentation`` / ``detection``) of ``run`` of ``task``:
    ``teacher`` or a ``dense.runs`` name.

    The teacher's ViT starts from the teacher stage's MAE encoder (as the official dense teachers
    start from MAE ViT-B); a student's from the pretrain run its ``init`` names, or at random.
    A distilled student learns from ``runs/dense/<task>/teacher``.
    """
    from .dense.stages import canvas_paths, check_canvases
    if task not in DENSE_TASKS:
        raise ValueError(f"unknown dense task {task!r}; choose one of {', '.join(DENSE_TASKS)}")
    check_canvases(params)
    dense = params["dense"]
    section, common = dense[task], dense.get("common", {})
    cfg = {"kind": task, "run": run, "head": dict(section.get("head") or {}), "task": dict(section.get("task") or {}),
           "flip": common.get("flip", True),
           "data": {"canvases": str(canvas_paths(workdir)["train"].parent),
                    "eval_batch_size": dense["data"].get("eval_batch_size", EVAL_BATCH_SIZE)}}
    group = f"dense/{task}"
    if run == "teacher":
        cfg.update(model=section["teacher_model"], init=str(teacher_paths(workdir)["gd"]), distill=None,
                   train=deep_merge(common.get("train", {}), section.get("teacher_train", {})),
                   out_dir=str(run_dir(workdir, group, "teacher")))
        cfg["train"].setdefault("seed", dense["seeds"][0])
        return cfg
    runs = dense["runs"]
    if run not in runs:
        raise ValueError(f"no dense run {run!r}; known: teacher, {', '.join(runs)}")
    spec = runs[run]
    cfg.update(model=section["student_model"],
               init=str(run_dir(workdir, "pretrain", spec["init"]) / "model.safetensors") if spec.get("init") else None,
               train=deep_merge(common.get("train", {}), section.get("student_train", {})),
               out_dir=str(run_dir(workdir, group, run, seed)))
    cfg["distill"] = dict(section.get("distill") or {}) if spec.get("distill") else None
    if spec.get("distill"):
        cfg["teacher"] = str(run_dir(workdir, group, "teacher") / "model.safetensors")
    if seed is not None:
        cfg["train"]["seed"] = seed
    return cfg
