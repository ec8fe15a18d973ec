"""The dense stages of the pipeline: canvases, the dense teachers, the dense students.

``params.yaml`` section ``dense`` (every profile has it, with the same keys)::

    dense:
      dataset: canvases | external   # external: the paper profile, run by detectron2 / mmseg (.paper)
      seeds: [0]                     # student seeds (the teachers train once, with the first)
      data: {size, max_items, train, val, test, seed, eval_batch_size}
      common: {flip, train: TrainConfig fields}
      segmentation / detection:
        teacher_model, student_model # vit_* names (encoders initialised from the teacher MAE / pretrain runs)
        head: builder kwargs of ViTSegmenter / build_detector (widths, proposal counts)
        task: training options (aux_weight, layer_decay)
        distill: options of SegmentationDistillation / DetectionDistillation
        teacher_train, student_train: TrainConfig overrides
      runs: {name: {init: gd | mae_student | null, distill: bool}}

Outputs live under ``<workdir>/runs/dense``: ``canvases/{train,val,test}.pt`` and
``<task>/teacher``, ``<task>/<run>/seed<k>`` (each a training run directory of
:func:`g2sd_lib.engine.train`). ``python -m g2sd_lib.dense.stages CONFIG.json`` runs one stage
(under ``torchrun`` for several processes).
"""

import json
import sys
from pathlib import Path

import torch

from ..checkpoints import load_training_state
from ..config import deep_merge, run_dir, teacher_paths
from ..data import load_fashion_mnist, train_val_split
from ..engine import TrainConfig, init_distributed, train, world_info
from ..stages import launch as stage_launch
from . import load_dense_model
from .backbone import load_backbone
from .data import DenseLoader, load_dense, make_canvases, save_dense
from .detection import DetectionDistillation, DetectionTraining, build_detector, evaluate_detection
from .paper import ADE20K_SEGMENTATION, COCO_DETECTION
from .segmentation import SegmentationDistillation, SegmentationTraining, ViTSegmenter, evaluate_segmentation

DENSE_TASKS = ("segmentation", "detection")
SPLITS = ("train", "val", "test")
NUM_CLASSES = 11  # background + the 10 Fashion-MNIST classes
METRIC = {"segmentation": "miou", "detection": "box_ap"}  # the headline metric of each task (a fraction)


def canvas_paths(workdir=".") -> dict[str, Path]:
    root = Path(workdir) / "runs" / "dense" / "canvases"
    return {split: root / f"{split}.pt" for split in SPLITS}


def dense_run_dir(workdir, task: str, run: str, seed: int | None = None) -> Path:
    path = Path(workdir) / "runs" / "dense" / task / run
    return path / f"seed{seed}" if seed is not None else path


def check_canvases(params: dict) -> None:
    """Refuse the profiles whose dense tasks do not run here (``external``), with where they run."""
    dataset = params["dense"]["dataset"]
    if dataset == "external":
        raise RuntimeError("this profile's dense tasks run outside the pipeline, in detectron2 (COCO) and "
                           "mmsegmentation (ADE20K): see g2sd_lib.dense.paper for the recipes and hook points")
    if dataset != "canvases":
        raise ValueError(f"dense.dataset must be 'canvases' or 'external', got {dataset!r}")


def external_recipes() -> dict:
    """What the ``external`` profiles record in place of dense runs: the paper-scale recipes."""
    return {"segmentation": ADE20K_SEGMENTATION, "detection": COCO_DETECTION}


def build_canvases(params: dict, workdir=".") -> dict[str, dict]:
    """Make and save the train / val / test canvases; return them.

    Items come from the same splits as classification: train canvases from the training split
    without the validation images, val canvases from the validation images, test canvases from the
    test set. Each split has its own generator seed (``seed``, ``seed + 1``, ``seed + 2``).
    """
    check_canvases(params)
    d, c = params["data"], params["dense"]["data"]
    images, labels = load_fashion_mnist("train", d.get("root"))
    tr_idx, va_idx = train_val_split(len(images), d.get("val_size", 5000), d.get("split_seed", 0))
    test_images, test_labels = load_fashion_mnist("test", d.get("root"))
    sources = {"train": (images[tr_idx], labels[tr_idx]), "val": (images[va_idx], labels[va_idx]),
               "test": (test_images, test_labels)}
    out = {}
    for offset, (split, path) in enumerate(canvas_paths(workdir).items()):
        items, item_labels = sources[split]
        out[split] = make_canvases(items, item_labels, c[split], size=c["size"], max_items=c["max_items"],
                                   seed=c["seed"] + offset)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_dense(path, out[split])
    return out


def dense_stage_config(params: dict, task: str, run: str, workdir=".", seed: int | None = None) -> dict:
    """The :func:`run_dense_stage` configuration of ``run`` (``teacher`` or a ``dense.runs`` name) of ``task``.

    The teacher's ViT starts from the teacher stage's MAE encoder (as the official dense teachers
    start from MAE ViT-B); a student's from the pretrain run its ``init`` names, or at random.
    A distilled student learns from ``runs/dense/<task>/teacher``.
    """
    if task not in DENSE_TASKS:
        raise ValueError(f"unknown dense task {task!r}; choose one of {', '.join(DENSE_TASKS)}")
    check_canvases(params)
    dense = params["dense"]
    section = dense[task]
    common = dense.get("common", {})
    cfg = {"task": task, "run": run, "head": dict(section.get("head") or {}),
           "options": dict(section.get("task") or {}), "flip": common.get("flip", True),
           "canvases": str(canvas_paths(workdir)["train"].parent),
           "eval_batch_size": dense["data"].get("eval_batch_size", 256)}
    if run == "teacher":
        cfg.update(model=section["teacher_model"], init=str(teacher_paths(workdir)["gd"]), distill=None,
                   train=deep_merge(common.get("train", {}), section.get("teacher_train", {})),
                   out_dir=str(dense_run_dir(workdir, task, "teacher")))
        cfg["train"].setdefault("seed", dense["seeds"][0])
        return cfg
    runs = dense["runs"]
    if run not in runs:
        raise ValueError(f"no dense run {run!r}; known: teacher, {', '.join(runs)}")
    spec = runs[run]
    cfg.update(model=section["student_model"],
               init=str(run_dir(workdir, "pretrain", spec["init"]) / "model.safetensors") if spec.get("init") else None,
               train=deep_merge(common.get("train", {}), section.get("student_train", {})),
               out_dir=str(dense_run_dir(workdir, task, run, seed)))
    if spec.get("distill"):
        cfg["distill"] = dict(section.get("distill") or {})
        cfg["teacher"] = str(dense_run_dir(workdir, task, "teacher") / "model.safetensors")
    else:
        cfg["distill"] = None
    if seed is not None:
        cfg["train"]["seed"] = seed
    return cfg


def trained_models(params: dict, task: str, workdir=".") -> dict[str, dict]:
    """The trained models of ``task``: ``{"teacher": {None: path}, run: {seed: path}}`` (``model.safetensors``)."""
    out = {"teacher": {None: dense_run_dir(workdir, task, "teacher") / "model.safetensors"}}
    for run in params["dense"]["runs"]:
        out[run] = {seed: dense_run_dir(workdir, task, run, seed) / "model.safetensors" for seed in params["dense"]["seeds"]}
    return out


def build_dense_model(cfg: dict, img_size: int) -> torch.nn.Module:
    """The untrained segmenter / detector of ``cfg`` with its ViT initialised from ``cfg['init']``."""
    if cfg["task"] == "segmentation":
        model = ViTSegmenter(cfg["model"], num_classes=NUM_CLASSES, img_size=img_size, **cfg["head"])
        vit = model.vit
    else:
        model = build_detector(cfg["model"], num_classes=NUM_CLASSES, img_size=img_size, **cfg["head"])
        vit = model.backbone.vit
    if cfg.get("init"):
        load_backbone(vit, cfg["init"])
    return model


def build_dense_task(cfg: dict, img_size: int):
    """The training task of ``cfg``: supervised, or G2SD's specific distillation from ``cfg['teacher']``."""
    model = build_dense_model(cfg, img_size)
    seg = cfg["task"] == "segmentation"
    if cfg.get("distill") is None:
        return (SegmentationTraining if seg else DetectionTraining)(model, **cfg["options"])
    teacher = load_dense_model(cfg["teacher"])
    return (SegmentationDistillation if seg else DetectionDistillation)(teacher, model, **cfg["distill"],
                                                                         **cfg["options"])


def evaluate_dense(model, loader, task: str) -> dict:
    """``{"miou", "aacc"}`` or ``{"box_ap", "box_ap50", ...}`` (fractions) of ``model`` over ``loader``."""
    evaluate = evaluate_segmentation if task == "segmentation" else evaluate_detection
    return {k.lower(): v for k, v in evaluate(model, loader).items()}


def run_dense_stage(cfg: dict) -> list[dict]:
    """Train one dense run of ``cfg`` (see :func:`dense_stage_config`); returns the per-epoch history.

    Validation (mIoU / box AP on the val canvases) runs after each ``eval_every`` epochs. A
    detection distillation resumed from ``last.pt`` continues its warm-up where it stopped.
    """
    train_cfg = TrainConfig(out_dir=cfg["out_dir"], **cfg["train"]).validate()
    init_distributed()
    rank, world = world_info()
    root = Path(cfg["canvases"])
    train_data, val_data = load_dense(root / "train.pt"), load_dense(root / "val.pt")
    torch.manual_seed(train_cfg.seed)
    task = build_dense_task(cfg, img_size=train_data["images"].shape[-1])
    loader = DenseLoader(train_data, cfg["task"], train_cfg.batch_size, shuffle=True, drop_last=True,
                         seed=train_cfg.seed, rank=rank, world_size=world, flip=cfg.get("flip", True))
    val_loader = DenseLoader(val_data, cfg["task"], cfg.get("eval_batch_size", 256), shuffle=False)
    state = Path(cfg["out_dir"]) / "last.pt"
    if isinstance(task, DetectionDistillation) and state.exists():  # the counter counts training loss calls
        task.iteration = load_training_state(state)["epoch"] * len(loader)

    def evaluate(model):
        return {f"val_{k}": v for k, v in evaluate_dense(model, val_loader, cfg["task"]).items()}

    return train(task, loader, train_cfg, evaluate)


def launch(cfg: dict, nproc: int = 1) -> list[dict]:
    """:func:`run_dense_stage` in this process (``nproc`` 1) or under ``torchrun`` (see :func:`g2sd_lib.stages.launch`)."""
    return stage_launch(cfg, nproc, run=run_dense_stage, module="g2sd_lib.dense.stages")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m g2sd_lib.dense.stages CONFIG.json")
    run_dense_stage(json.loads(Path(argv[0]).read_text()))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
