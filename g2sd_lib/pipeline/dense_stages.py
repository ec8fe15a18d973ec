"""The dense stages of the pipeline: canvases, the dense teachers, the dense students.

The profiles' section ``dense`` (every profile has it, with the same keys)::

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

Outputs live under ``<root>/dense`` (``root``: the profile's run directory, ``runs/<profile>``): ``canvases/{train,val,test}.pt`` and
``<task>/teacher``, ``<task>/<run>/seed<k>`` (each a training run directory of
:func:`g2sd_lib.engine.train`). The configurations come from :func:`g2sd_lib.pipeline.config.dense_stage_config`
(kinds ``segmentation`` / ``detection``) and run through :func:`g2sd_lib.pipeline.stages.run_stage`, the
one runner of every stage; this module holds what is dense-specific: canvases, models, tasks,
metrics.
"""

from pathlib import Path

import torch

from ..checkpoints import load_training_state
from ..data import train_val_split
from ..dense import load_dense_model
from ..dense.backbone import load_backbone
from ..dense.canvases import DenseLoader, load_dense, make_canvases, save_dense
from ..dense.detection import DetectionDistillation, DetectionTraining, build_detector, evaluate_detection
from ..dense.paper import ADE20K_SEGMENTATION, COCO_DETECTION
from ..dense.segmentation import SegmentationDistillation, SegmentationTraining, ViTSegmenter, evaluate_segmentation
from ..fmnist import load_fashion_mnist
from .config import canvas_paths, check_canvases, run_dir
from .schema import DenseStage, typed_stage

DENSE_NUM_CLASSES = 11  # background + the 10 Fashion-MNIST classes


def external_recipes() -> dict:
    """What the ``external`` profiles record in place of dense runs: the paper-scale recipes."""
    return {"segmentation": ADE20K_SEGMENTATION, "detection": COCO_DETECTION}


def build_canvases(params: dict, root="runs") -> dict[str, dict]:
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
    for offset, (split, path) in enumerate(canvas_paths(root).items()):
        items, item_labels = sources[split]
        out[split] = make_canvases(items, item_labels, c[split], size=c["size"], max_items=c["max_items"],
                                   seed=c["seed"] + offset)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_dense(path, out[split])
    return out


def trained_models(params: dict, task: str, root="runs") -> dict[str, dict]:
    """The trained models of ``task``: ``{"teacher": {None: path}, run: {seed: path}}`` (``model.safetensors``)."""
    group = f"dense/{task}"
    out = {"teacher": {None: run_dir(root, group, "teacher") / "model.safetensors"}}
    for run in params["dense"]["runs"]:
        out[run] = {seed: run_dir(root, group, run, seed) / "model.safetensors" for seed in params["dense"]["seeds"]}
    return out


def _given(section) -> dict:
    """The options a section states (the builders' own defaults for the rest, as the profile leaves them)."""
    return section.model_dump(exclude_unset=True)


def build_dense_model(cfg: dict | DenseStage, img_size: int) -> torch.nn.Module:
    """The untrained segmenter / detector of a dense stage (its configuration, validated here, or the typed
    stage) with its ViT initialised from the stage's ``init``."""
    stage = typed_stage(cfg)
    if stage.kind == "segmentation":
        model = ViTSegmenter(stage.model, num_classes=DENSE_NUM_CLASSES, img_size=img_size, **_given(stage.head))
        vit = model.vit
    else:
        model = build_detector(stage.model, num_classes=DENSE_NUM_CLASSES, img_size=img_size, **_given(stage.head))
        vit = model.backbone.vit
    if stage.init:
        load_backbone(vit, stage.init)
    return model


def build_dense_task(cfg: dict | DenseStage, img_size: int):
    """The training task of a dense stage: supervised, or G2SD's specific distillation from its ``teacher``."""
    stage = typed_stage(cfg)
    model = build_dense_model(stage, img_size)
    seg = stage.kind == "segmentation"
    if stage.distill is None:
        return (SegmentationTraining if seg else DetectionTraining)(model, **_given(stage.task))
    teacher = load_dense_model(stage.teacher)
    return (SegmentationDistillation if seg else DetectionDistillation)(teacher, model, **_given(stage.distill),
                                                                         **_given(stage.task))


def evaluate_dense(model, loader, task: str) -> dict:
    """``{"miou", "aacc"}`` or ``{"box_ap", "box_ap50", ...}`` (fractions) of ``model`` over ``loader``."""
    evaluate = evaluate_segmentation if task == "segmentation" else evaluate_detection
    return {k.lower(): v for k, v in evaluate(model, loader).items()}


def dense_run(stage: DenseStage, batch_size: int, seed: int, rank: int, world: int):
    """What :func:`g2sd_lib.pipeline.stages.run_stage` trains for a dense kind: ``(task, train loader, evaluate)``.

    Validation is mIoU / box AP on the val canvases. A detection distillation resumed from
    ``last.pt`` continues its warm-up where it stopped (its counter counts training loss calls).
    """
    root = Path(stage.data.canvases)
    train_data, val_data = load_dense(root / "train.pt"), load_dense(root / "val.pt")
    task = build_dense_task(stage, img_size=train_data["images"].shape[-1])
    kind = stage.kind
    loader = DenseLoader(train_data, kind, batch_size, shuffle=True, drop_last=True, seed=seed, rank=rank,
                         world_size=world, flip=stage.flip)
    val_loader = DenseLoader(val_data, kind, stage.data.eval_batch_size, shuffle=False)
    state = Path(stage.out_dir) / "last.pt"
    if isinstance(task, DetectionDistillation) and state.exists():
        task.iteration = load_training_state(state)["epoch"] * len(loader)

    def evaluate(model):
        return {f"val_{k}": v for k, v in evaluate_dense(model, val_loader, kind).items()}

    return task, loader, evaluate

