"""The stage configurations: what ``config.stage_config``, ``config.teacher_stage_config`` and
``config.dense_stage_config`` produce, as pydantic models (``extra="forbid"``, strict numbers:
``epochs: '1'`` is an error, never coerced, while ``1.0e-3`` and ints for float fields pass).

A classification stage's model is the configuration the stage is built from
(:func:`g2sd_lib.pipeline.schema.typed_stage`): its defaults are the only ones, and a missing section is
its defaults. Validation never fills them into the configuration dict (the pipeline hashes params as written).
"""

from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Len, Lt
from pydantic import BaseModel, ConfigDict, Field, Strict

NUM_CLASSES = {"fmnist": 10, "imagenet": 1000}

Int, Str, Bool = (Annotated[t, Strict()] for t in (int, str, bool))
Count = Annotated[int, Strict(), Ge(1)]  # epochs, batch sizes, image counts, widths
Natural = Annotated[int, Strict(), Ge(0)]
NonNeg = Annotated[float, Strict(), Ge(0)]
Positive = Annotated[float, Strict(), Gt(0)]
Unit = Annotated[float, Strict(), Ge(0), Le(1)]  # probabilities, loss mixing weights
Rate = Annotated[float, Strict(), Ge(0), Lt(1)]  # Adam betas, dropout, label smoothing
Ratio = Annotated[float, Strict(), Gt(0), Lt(1)]  # mask ratio
Decay = Annotated[float, Strict(), Gt(0), Le(1)]  # layer-wise lr decay
Scales = Annotated[list[Positive], Len(4, 4)]  # pyramid sizes relative to the patch grid, finest first


EVAL_BATCH_SIZE = 256  # validation / evaluation batch of a configuration that does not set one


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Data(Section):
    dataset: Literal["fmnist", "imagenet"] = "fmnist"
    root: Str | None = None
    val_size: Natural = 5000
    split_seed: Int = 0
    train_subset: Count | None = None
    val_subset: Count | None = None
    labels: Count | None = None  # label-scarce: a stratified draw of this many labelled images for supervised stages
    labels_seed: Int = 0
    test_subset: Count | None = None
    eval_batch_size: Count = EVAL_BATCH_SIZE
    input_size: Count = 224  # imagenet only
    num_workers: Natural = 8  # imagenet only


class Augment(Section):
    crop_scale: Annotated[list[Annotated[float, Strict(), Gt(0), Le(1)]], Len(2, 2)] = [0.2, 1.0]
    flip: Bool = True
    reprob: Unit = 0.0
    mixup: NonNeg = 0.0
    cutmix: NonNeg = 0.0
    smoothing: Rate = 0.0


class ModelKwargs(Section):
    """The ViT constructor arguments a profile may override (add one here when a profile needs it)."""
    drop_path_rate: Rate = 0.0
    drop_rate: Rate = 0.0
    proj_drop_rate: Rate = 0.0
    attn_drop_rate: Rate = 0.0
    img_size: Count | None = None  # a model built for other images than its name's (e.g. small ImageNet tests)
    in_chans: Count | None = None


class Train(Section):
    """The fields of :class:`g2sd_lib.train_config.TrainConfig` but ``out_dir`` (the stage sets it)."""
    epochs: Count
    batch_size: Count
    blr: Positive
    min_lr: NonNeg = 0.0
    warmup_epochs: NonNeg = 0.0
    weight_decay: NonNeg = 0.05
    betas: Annotated[list[Rate], Len(2, 2)] = [0.9, 0.999]
    accum_steps: Count = 1
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    teacher_amp: Literal["same", "auto", "bf16", "fp16", "none"] = "same"
    device: Str = "auto"
    seed: Int = 0
    save_every: Count = 1
    eval_every: Count = 1
    progress: Literal[True, False, "auto"] = "auto"
    compile: Literal["none", "default", "reduce-overhead"] = "none"
    extra: dict[str, Any] = {}


class MAETask(Section):
    mask_ratio: Ratio = 0.75
    norm_pix_loss: Bool = False


class GDTask(Section):
    mask_ratio: Ratio = 0.75
    target_block: Count = 4
    supervise_all: Bool = True
    smooth_l1_beta: NonNeg = 2.0
    encoder_loss_weight: NonNeg = 0.0


class FinetuneTask(Section):
    layer_decay: Decay | None = None


class SDTask(FinetuneTask):
    loss_type: Literal["g2sd", "nkd"] = "g2sd"
    layer_decay: Decay | None = 0.75


class KDTask(FinetuneTask):
    alpha: Unit = 0.5
    temperature: Positive = 4.0


class Stage(Section):
    """A classification stage configuration (``config.stage_config``, ``config.teacher_stage_config``)."""
    model: Str
    out_dir: Str
    data: Data = Field(default_factory=Data)
    augment: Augment = Field(default_factory=Augment)
    model_kwargs: ModelKwargs = Field(default_factory=ModelKwargs)
    train: Train


class MAEStage(Stage):
    kind: Literal["mae"]
    task: MAETask = Field(default_factory=MAETask)


class GDStage(Stage):
    kind: Literal["gd"]
    teacher: Str
    task: GDTask = Field(default_factory=GDTask)


class FinetuneStage(Stage):
    kind: Literal["finetune"]
    init: Str | None = None
    task: FinetuneTask = Field(default_factory=FinetuneTask)


class SDStage(FinetuneStage):
    kind: Literal["sd"]
    teacher: Str
    task: SDTask = Field(default_factory=SDTask)


class KDStage(FinetuneStage):
    kind: Literal["kd"]
    teacher: Str
    task: KDTask = Field(default_factory=KDTask)


STAGES = {"mae": MAEStage, "gd": GDStage, "sd": SDStage, "finetune": FinetuneStage, "kd": KDStage}


class SegHead(ModelKwargs):
    decoder: Literal["upernet", "mlp"] = "upernet"
    channels: Count | None = None
    aux_channels: Count | None = None
    scales: Scales = [4.0, 2.0, 1.0, 0.5]
    out_indices: Annotated[list[Natural], Len(4, 4)] | None = None
    pool_scales: list[Count] = [1, 2, 3, 6]
    dropout: Rate = 0.1


class DetectorKwargs(Section):
    """The torchvision ``FasterRCNN`` arguments a profile may set."""
    rpn_pre_nms_top_n_train: Count = 2000
    rpn_post_nms_top_n_train: Count = 2000
    rpn_pre_nms_top_n_test: Count = 1000
    rpn_post_nms_top_n_test: Count = 1000
    rpn_batch_size_per_image: Count = 256
    box_batch_size_per_image: Count = 512
    box_detections_per_img: Count = 100
    rpn_nms_thresh: Unit = 0.7
    box_nms_thresh: Unit = 0.5
    box_score_thresh: Unit = 0.05


class DetHead(ModelKwargs):
    out_channels: Count = 256
    scales: Scales = [4.0, 2.0, 1.0, 0.5]
    anchor_sizes: Annotated[list[Count], Len(5, 5)] | None = None
    box_head_convs: Natural = 4
    box_head_fc: Count = 1024
    adapter_channels: Count | None = None
    detector_kwargs: DetectorKwargs | None = None


class SegOptions(Section):
    aux_weight: NonNeg = 0.4
    layer_decay: Decay | None = 0.65


class DetOptions(Section):
    layer_decay: Decay | None = 0.7


class SegDistill(Section):
    tau: Positive = 1.0
    weight: NonNeg = 3.0


class DetDistill(Section):
    feat_weight: NonNeg = 0.001
    obj_weight: NonNeg = 0.1
    warmup_iters: Natural = 500


class DenseStageData(Section):
    canvases: Str  # the directory of train.pt / val.pt
    eval_batch_size: Count = EVAL_BATCH_SIZE


class DenseStage(Section):
    """A dense stage configuration (``config.dense_stage_config``)."""
    run: Str
    model: Str
    init: Str | None = None
    teacher: Str | None = None  # required when ``distill`` is set
    flip: Bool = True
    data: DenseStageData
    train: Train
    out_dir: Str


class SegStage(DenseStage):
    kind: Literal["segmentation"]
    head: SegHead
    task: SegOptions
    distill: SegDistill | None = None


class DetStage(DenseStage):
    kind: Literal["detection"]
    head: DetHead
    task: DetOptions
    distill: DetDistill | None = None


DENSE_STAGES = {"segmentation": SegStage, "detection": DetStage}
