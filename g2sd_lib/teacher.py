"""The teacher stage: obtain both teachers, prove they are right, leave them in one layout.

Generic distillation needs the pretrained MAE *with its decoder*; specific distillation needs the
fine-tuned classifier. Whatever the mode, the stage writes ``runs/teacher/mae.safetensors`` and
``runs/teacher/classifier.safetensors`` (+ JSON sidecars) after loading each strictly in its role:

* ``download`` (paper): the official MAE checkpoints, md5 prefixes checked and sha256 recorded on
  first fetch, converted from the official pickle layout;
* ``bundled`` (fmnist): the small teacher committed under ``teachers/``, sha256-checked;
* ``train``: the project's recipe, MAE pretraining then fine-tuning, through ``run_stage``.
"""

import shutil
from pathlib import Path

from . import checkpoints
from .config import teacher_paths, teacher_stage_config
from .download import fetch_official
from .stages import launch

MODES = ("bundled", "train", "download")


def _copy_saved(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    shutil.copyfile(src.with_suffix(".json"), dest.with_suffix(".json"))


def _convert(src: Path, role: str, dest: Path) -> dict:
    """Load an official checkpoint strictly in ``role`` and save it in our layout."""
    model, info = checkpoints.load_model(src, role)
    sidecar = checkpoints.save_model(model, dest, extra={"source": str(src), "official_kind": info.kind})
    return sidecar


def obtain_teacher(params: dict, workdir=".", nproc: int = 1) -> dict:
    """Run the teacher stage in the mode ``params['teacher']['mode']``; returns a summary dict.

    The summary holds, per teacher (``gd``, ``sd``), the path, kind, architecture name, parameter
    count and sha256; in ``train`` mode also the recipe's training histories.
    """
    cfg = params["teacher"]
    mode = cfg.get("mode")
    if mode not in MODES:
        raise ValueError(f"teacher.mode must be one of {', '.join(MODES)}, got {mode!r}")
    out = teacher_paths(workdir)
    summary = {"mode": mode}
    if mode == "download":
        d = cfg["download"]
        cache = Path(d.get("cache_dir") or "checkpoints")
        record = cache / "hashes.json"
        for key, role in (("gd", "gd-teacher"), ("sd", "sd-teacher")):
            src = fetch_official(d[key], cache, base_url=d.get("base_url"), hash_record=record)
            _convert(src, role, out[key])
    elif mode == "bundled":
        b = cfg["bundled"]
        for key, name in (("gd", "mae"), ("sd", "classifier")):
            src = Path(b[name])
            if not src.exists():
                raise FileNotFoundError(f"bundled teacher {src} is missing; set teacher.mode: train in params.yaml "
                                        "to train one (see teachers/README.md)")
            checkpoints.load_saved_model(src, expected_sha256=b.get(f"{name}_sha256"))
            _copy_saved(src, out[key])
    else:
        histories = {}
        for step in ("pretrain", "finetune"):
            stage_cfg = teacher_stage_config(params, step, workdir)
            histories[step] = launch(stage_cfg, nproc)
            produced = Path(stage_cfg["out_dir"]) / "model.safetensors"
            _copy_saved(produced, out["gd" if step == "pretrain" else "sd"])
        summary["histories"] = histories
    for key, role in (("gd", "gd-teacher"), ("sd", "sd-teacher")):
        _, info = checkpoints.load_model(out[key], role)
        sidecar = checkpoints.read_state_dict(out[key])[1]
        summary[key] = {"path": str(out[key]), "kind": info.kind, "model": info.arch["name"],
                        "params": info.num_params, "sha256": sidecar.get("sha256")}
    return summary
