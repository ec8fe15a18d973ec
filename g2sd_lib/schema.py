"""One validated configuration: every ``params.yaml`` section and every stage configuration is
checked against this schema before any work starts.

Pydantic models (``extra="forbid"``, strict numbers: ``epochs: '1'`` is an error, never coerced,
while ``1.0e-3`` and ints for float fields pass) give keys, types and ranges; plain functions add
the cross-field rules (class counts, decoder depth, patch sizes, warm-up within the epochs, teacher
mode). Every failure becomes one line ``path: problem (got value); allowed: what`` (with a
did-you-mean for unknown keys and choices), and all lines of a configuration are raised together
as one :class:`ConfigError`. Validation never fills defaults into the configuration: the pipeline
hashes params as written. The defaults below mirror the code that reads each key.
"""

import difflib
import functools
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Len, Lt
from pydantic import BaseModel, ConfigDict, Strict, StringConstraints, TypeAdapter, ValidationError

from .download import OFFICIAL_CHECKPOINTS
from .models import ENCODER_SIZES, mae_kwargs, vit_kwargs

NUM_CLASSES = {"fmnist": 10, "imagenet": 1000}
MISSING = object()

Int, Str, Bool = (Annotated[t, Strict()] for t in (int, str, bool))
Count = Annotated[int, Strict(), Ge(1)]  # epochs, batch sizes, image counts, widths
Natural = Annotated[int, Strict(), Ge(0)]
NonNeg = Annotated[float, Strict(), Ge(0)]
Positive = Annotated[float, Strict(), Gt(0)]
Unit = Annotated[float, Strict(), Ge(0), Le(1)]  # probabilities, loss mixing weights
Rate = Annotated[float, Strict(), Ge(0), Lt(1)]  # Adam betas, dropout, label smoothing
Ratio = Annotated[float, Strict(), Gt(0), Lt(1)]  # mask ratio
Decay = Annotated[float, Strict(), Gt(0), Le(1)]  # layer-wise lr decay
Seeds = Annotated[list[Int], Len(1)]
Scales = Annotated[list[Positive], Len(4, 4)]  # pyramid sizes relative to the patch grid, finest first
Sha256 = Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Data(Section):
    dataset: Literal["fmnist", "imagenet"] = "fmnist"
    root: Str | None = None
    val_size: Natural = 5000
    split_seed: Int = 0
    train_subset: Count | None = None
    val_subset: Count | None = None
    test_subset: Count | None = None
    eval_batch_size: Count = 512
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


class Train(Section):
    """The fields of :class:`g2sd_lib.engine.TrainConfig` but ``out_dir`` (the stage sets it)."""
    epochs: Count
    batch_size: Count
    blr: Positive
    min_lr: NonNeg = 0.0
    warmup_epochs: NonNeg = 0.0
    weight_decay: NonNeg = 0.05
    betas: Annotated[list[Rate], Len(2, 2)] = [0.9, 0.999]
    accum_steps: Count = 1
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    device: Str = "auto"
    seed: Int = 0
    save_every: Count = 1
    eval_every: Count = 1
    progress: Literal[True, False, "auto"] = "auto"
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
    data: Data | None = None
    augment: Augment | None = None
    model_kwargs: ModelKwargs | None = None
    train: Train


class MAEStage(Stage):
    kind: Literal["mae"]
    task: MAETask | None = None


class GDStage(Stage):
    kind: Literal["gd"]
    teacher: Str
    task: GDTask | None = None


class FinetuneStage(Stage):
    kind: Literal["finetune"]
    init: Str | None = None
    task: FinetuneTask | None = None


class SDStage(FinetuneStage):
    kind: Literal["sd"]
    teacher: Str
    task: SDTask | None = None


class KDStage(FinetuneStage):
    kind: Literal["kd"]
    teacher: Str
    task: KDTask | None = None


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
    eval_batch_size: Count = 256


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


class DenseTask(Section):
    teacher_model: Str
    student_model: Str
    teacher_train: dict[str, Any] | None = None  # overrides of common.train, checked merged
    student_train: dict[str, Any] | None = None


class SegSection(DenseTask):
    head: SegHead | None = None
    task: SegOptions | None = None
    distill: SegDistill | None = None


class DetSection(DenseTask):
    head: DetHead | None = None
    task: DetOptions | None = None
    distill: DetDistill | None = None


class DenseData(Section):
    size: Count
    max_items: Count | None = None  # required (with train, val, test) for canvases
    train: Count | None = None
    val: Count | None = None
    test: Count | None = None
    seed: Int = 0
    eval_batch_size: Count = 256


class DenseCommon(Section):
    flip: Bool = True
    train: dict[str, Any] = {}  # checked merged with each task's overrides


class DenseRun(Section):
    init: Str | None = None
    distill: Bool = False


class Dense(Section):
    dataset: Literal["canvases", "external"]
    seeds: Seeds
    data: DenseData
    common: DenseCommon | None = None
    segmentation: SegSection
    detection: DetSection
    runs: dict[str, DenseRun]


class Bundled(Section):
    mae: Str
    classifier: Str
    mae_sha256: Sha256 | None = None
    classifier_sha256: Sha256 | None = None


class Download(Section):
    gd: Str
    sd: Str
    base_url: Str | None = None
    cache_dir: Str | None = None


class Teacher(Section):
    mode: Literal["bundled", "train", "download"]
    bundled: Bundled | None = None  # required by mode bundled
    download: Download | None = None  # required by mode download
    reconstruction_images: Count = 8
    pretrain: dict[str, Any] | None = None  # mode train: stage configurations, checked as such
    finetune: dict[str, Any] | None = None


class Evaluate(Section):
    attention_images: Count = 6
    throughput_batch: Count = 256


Group = dict[str, dict[str, Any]]  # common + runs, checked run by run after merging
SECTIONS = {"profile": Str, "nproc": Count, "seeds": Seeds, "data": Data, "teacher": Teacher,
            "pretrain": Group, "students": Group, "evaluate": Evaluate, "dense": Dense}


# ----------------------------------------------------------------------------- problems and messages
class ConfigError(ValueError):
    """A configuration broke the schema; ``problems`` holds one line per failure."""

    def __init__(self, header: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{header} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n"
                         + "\n".join(f"  - {p}" for p in problems))


class Problem(NamedTuple):
    loc: tuple  # key path inside the checked configuration
    problem: str
    allowed: str
    value: Any = MISSING
    hint: str | None = None  # the closest allowed key or choice

    def line(self) -> str:
        path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in self.loc).lstrip(".") or "<root>"
        got = "" if self.value is MISSING else f" (got {_short(self.value)})"
        hint = f" did you mean {self.hint!r}?" if self.hint else ""
        return f"{path}: {self.problem}{got};{hint} allowed: {self.allowed}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _close(word, choices) -> str | None:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def _raise(problems: list[Problem], header: str) -> None:
    lines = list(dict.fromkeys(p.line() for p in problems))  # merged configs repeat shared problems
    if lines:
        raise ConfigError(header, lines)


def _unwrap(tp):
    """``tp`` without ``Annotated`` constraints and ``| None``: the model or container inside."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            tp = next(a for a in get_args(tp) if a is not NoneType)
        else:
            return tp


def _type_at(tp, loc):
    """The annotation validating the value at ``loc`` under ``tp`` (a model or container type)."""
    for key in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(key)
            if field is None:
                return None
            tp = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        else:
            tp = get_args(tp)[-1] if get_args(tp) else Any  # list item / mapping value
    return tp


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
          Any: "any value"}


def _describe(tp, metadata=()) -> str:
    """Plain words for what ``tp`` accepts, e.g. ``a number > 0 and < 1``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _describe(args[0], (*args[1:], *metadata))
    if origin in (Union, UnionType):
        return _describe(next(a for a in args if a is not NoneType), metadata) + " or null"
    if origin is Literal:
        return "one of " + " | ".join(map(str, args))
    bounds = [f"{sym} {getattr(m, attr)}" for m in metadata for attr, sym in _BOUNDS if hasattr(m, attr)]
    bounds += [f"matching {m.pattern}" for m in metadata if getattr(m, "pattern", None)]
    if origin is list:
        low = next((m.min_length for m in metadata if isinstance(m, Len)), 0)
        high = next((m.max_length for m in metadata if isinstance(m, Len)), None)
        size = f"a list of {low} items" if low == high else "a non-empty list" if low else "a list"
        return f"{size}, each {_describe(args[0])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping with keys " + ", ".join(sorted(tp.model_fields))
    return " ".join([_NAMES.get(origin or tp, str(tp)), " and ".join(bounds)]).rstrip()


def _from_pydantic(tp, err: dict) -> Problem:
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input", MISSING)
    if kind == "extra_forbidden":
        known = sorted(_unwrap(_type_at(tp, loc[:-1])).model_fields)
        return Problem(loc, "unknown key", ", ".join(known), value, _close(loc[-1], known))
    target = _type_at(tp, loc)
    hint = _close(value, get_args(_unwrap(target))) if kind == "literal_error" else None
    if kind == "missing":
        problem, value = "required key missing", MISSING
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        problem = "out of range"
    elif kind in ("too_short", "too_long"):
        problem = "wrong length"
    elif kind == "literal_error":
        problem = "not an allowed choice"
    elif kind.endswith("_type"):
        problem = "wrong type"
    else:
        problem = err["msg"].lower()
    return Problem(loc, problem, _describe(target), value, hint)


@functools.cache
def _adapter(tp) -> TypeAdapter:
    return TypeAdapter(tp)


def _check(tp, value) -> tuple[list[Problem], Any]:
    """(problems, validated value or None) of ``value`` against ``tp``."""
    try:
        return [], _adapter(tp).validate_python(value)
    except ValidationError as e:
        return [_from_pydantic(tp, err) for err in e.errors()], None


def _has(node, loc) -> bool:
    for key in loc:
        if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) \
                and key < len(node):
            node = node[key]
        else:
            return False
    return True


def _relocate(problems, layers, fallback) -> list[Problem]:
    """Problems of a merged configuration, each moved to the params key that wrote the value.

    ``layers``: ``(under, path, source)`` in merge priority: a problem at ``under + rest`` belongs
    to ``path + rest`` when ``source`` holds ``rest``; else (a missing key) to ``fallback + loc``.
    """
    out = []
    for p in problems:
        for under, path, source in layers:
            rest = p.loc[len(under):]
            if p.loc[:len(under)] == under and _has(source, rest):
                out.append(p._replace(loc=(*path, *rest)))
                break
        else:
            out.append(p._replace(loc=(*fallback, *p.loc)))
    return out


# --------------------------------------------------------------------------------- cross-field rules
def _arch(name: str) -> dict | None:
    """Constructor arguments of a model name (``mae_vit_*`` or ``vit_*``), None if it is not one."""
    try:
        return mae_kwargs(name) if name.startswith("mae_") else vit_kwargs(name)
    except ValueError:
        return None


def _name_problems(name, loc, mae: bool = False) -> list[Problem]:
    if _arch(name) is not None and (name.startswith("mae_") or not mae):
        return []
    pattern = "mae_vit_<size>_patch<p>_dec<D>d<N>b" if mae else "vit_<size>_patch<p> (or an mae_vit_ name)"
    return [Problem(loc, "not a model name", f"{pattern}, size one of {', '.join(ENCODER_SIZES)}", name)]


def _model_problems(name, loc, *, mae: bool, size: int, chans: int, exact: bool, multiple: int = 1):
    """The model name parses, fits images of ``size`` px x ``chans`` and its patch divides ``size``."""
    if _name_problems(name, loc, mae):
        return _name_problems(name, loc, mae)
    arch = _arch(name)
    if arch["in_chans"] != chans or exact and arch["img_size"] != size:
        fit = [s for s, v in ENCODER_SIZES.items() if v[4] == chans and (not exact or v[3] == size)]
        return [Problem(loc, f"built for {arch['img_size']} px x {arch['in_chans']} channel images",
                        f"a model for {size} px x {chans} channel images (sizes {', '.join(fit) or 'none'})", name)]
    step = arch["patch_size"] * multiple
    if size % step:
        return [Problem(loc, f"its patch {'x 2 ' * (multiple == 2)}does not divide the image size {size}",
                        f"a model whose patch {'x 2 ' * (multiple == 2)}divides {size}", name)]
    return []


def _with_data(params: dict, valid: dict, own):
    """A stage's ``data``: the params section with the stage's own overrides merged in."""
    from .config import deep_merge

    return deep_merge(params["data"] if "data" in valid else {}, own) if isinstance(own, dict) else own


def _train_problems(train: Train, raw: dict, loc=("train",)):
    if train.warmup_epochs > train.epochs:
        return [Problem((*loc, "warmup_epochs"), "out of range", f"a number in [0, epochs = {train.epochs}]",
                        raw["warmup_epochs"])]
    return []


def _stage(cfg) -> tuple[list[Problem], Stage | None]:
    """Problems of one classification stage configuration and the validated stage."""
    if not isinstance(cfg, dict):
        return [Problem((), "wrong type", "a mapping", cfg)], None
    kind = cfg.get("kind", MISSING)
    if not isinstance(kind, str) or kind not in STAGES:
        what = "required key missing" if kind is MISSING else "not an allowed choice"
        return [Problem(("kind",), what, "one of " + " | ".join(STAGES), kind, _close(kind, STAGES))], None
    problems, stage = _check(STAGES[kind], cfg)
    if stage is None:
        return problems, None
    data = stage.data or Data()
    size, chans = (28, 1) if data.dataset == "fmnist" else (data.input_size, 3)
    problems += _model_problems(stage.model, ("model",), mae=kind in ("mae", "gd"), size=size, chans=chans, exact=True)
    problems += _train_problems(stage.train, cfg["train"])
    if data.dataset == "imagenet" and not data.root:
        problems.append(Problem(("data", "root"), "required for imagenet", "a directory with train/ and val/",
                                data.root))
    if stage.augment and stage.augment.crop_scale[0] > stage.augment.crop_scale[1]:
        problems.append(Problem(("augment", "crop_scale"), "lower bound above upper", "[lo, hi] with lo <= hi",
                                cfg["augment"]["crop_scale"]))
    return problems, stage


def _dense_stage(cfg) -> list[Problem]:
    if not isinstance(cfg, dict):
        return [Problem((), "wrong type", "a mapping", cfg)]
    kind = cfg.get("kind", MISSING)
    if not isinstance(kind, str) or kind not in DENSE_STAGES:
        what = "required key missing" if kind is MISSING else "not an allowed choice"
        return [Problem(("kind",), what, "one of " + " | ".join(DENSE_STAGES), kind, _close(kind, DENSE_STAGES))]
    problems, stage = _check(DENSE_STAGES[kind], cfg)
    if stage is None:
        return problems
    problems += _name_problems(stage.model, ("model",))
    if stage.distill is not None and not stage.teacher:
        problems.append(Problem(("teacher",), "required key missing", "the dense teacher's checkpoint (distill is set)"))
    return problems + _train_problems(stage.train, cfg["train"])


def _teacher_problems(params: dict, valid: dict) -> list[Problem]:
    """Teacher mode and the sections it needs; the ``train`` recipe's two stage configurations."""
    teacher, problems = valid["teacher"], []
    needs = {"bundled": ("bundled",), "download": ("download",), "train": ("pretrain", "finetune")}[teacher.mode]
    problems += [Problem(("teacher", key), "required key missing", f"a mapping (teacher.mode is {teacher.mode!r})")
                 for key in needs if getattr(teacher, key) is None]
    dataset = valid["data"].dataset if "data" in valid else None
    if teacher.mode == "download":
        full = [n for n in OFFICIAL_CHECKPOINTS if n.endswith("_full.pth")]
        tuned = [n for n in OFFICIAL_CHECKPOINTS if "_finetuned_" in n]
        for key, names, role in (("gd", full, "a pretrained MAE with decoder"), ("sd", tuned, "a fine-tuned classifier")):
            name = getattr(teacher.download, key, None) if teacher.download else None
            if name is not None and name not in names:
                problems.append(Problem(("teacher", "download", key), f"not {role}", ", ".join(names), name,
                                        _close(name, names)))
        if dataset not in (None, "imagenet"):
            problems.append(Problem(("teacher", "mode"), f"the official teachers have 1000 classes, data.dataset "
                                    f"{dataset!r} has {NUM_CLASSES[dataset]}", "bundled | train for Fashion-MNIST",
                                    teacher.mode))
    for step, kind in (("pretrain", "mae"), ("finetune", "finetune")):
        raw = params["teacher"].get(step)
        if not isinstance(raw, dict):
            continue
        cfg = dict(raw, data=_with_data(params, valid, raw.get("data", {})), out_dir=f"runs/teacher/{step}")
        if step == "finetune":
            cfg["init"] = "runs/teacher/pretrain/model.safetensors"
        if str(cfg.get("kind")) in STAGES and cfg["kind"] != kind:
            found, stage = [Problem(("kind",), f"not the kind of teacher.{step}", kind, cfg["kind"])], None
        else:
            found, stage = _stage(cfg)
        if stage is not None and step == "finetune" and isinstance(params["teacher"].get("pretrain"), dict):
            pretrained = str(params["teacher"]["pretrain"].get("model"))
            found += _same_encoder(stage.model, ("model",), pretrained, "teacher.pretrain")
        problems += _relocate(found, [((), ("teacher", step), raw), (("data",), ("data",), params.get("data"))],
                              ("teacher", step))
    return problems


def _same_encoder(name, loc, source, source_path) -> list[Problem]:
    """``name`` can be initialised from the encoder of model ``source`` (same width, depth, heads, patch)."""
    keys = ("embed_dim", "depth", "num_heads", "patch_size", "in_chans")
    a, b = _arch(name), _arch(source)
    if a and b and any(a[k] != b[k] for k in keys):
        return [Problem(loc, f"its encoder differs from that of {source_path} ({source})",
                        f"a model with the encoder of {source}", name)]
    return []


def _target_block(target_block, depth: int, teacher: str) -> list[Problem]:
    if 1 <= target_block <= depth:
        return []
    return [Problem(("task", "target_block"), "out of range",
                    f"an integer in 1..{depth} (the decoder blocks of the teacher {teacher})", target_block)]


def _run_problems(params: dict, valid: dict) -> tuple[list[Problem], dict]:
    """Every run of ``pretrain`` and ``students``, checked as the stage configuration it becomes
    (common merged in, as ``config.stage_config`` does); returns the problems and the pretrain
    runs' model names (what the students' ``init`` loads)."""
    from .config import PRETRAIN_RUNS, STUDENT_RUNS, deep_merge

    teacher = valid.get("teacher")
    teacher_mae = (teacher.pretrain or {}).get("model") if teacher and teacher.mode == "train" else None
    problems, encoders = [], {}
    for group, runs, kinds in (("pretrain", PRETRAIN_RUNS, ("mae", "gd")),
                               ("students", STUDENT_RUNS, ("sd", "finetune", "kd"))):
        if group not in valid:
            continue
        section, names = params[group], ("common", *runs)
        common = section.get("common", {})
        problems += [Problem((group, k), "unknown run", ", ".join(names), section[k], _close(k, names))
                     for k in section if k not in names]
        for run in runs:
            if run not in section:
                problems.append(Problem((group, run), "required key missing", f"a mapping: the {run} run"))
                continue
            cfg = deep_merge(common, section[run])
            found = [Problem((k,), "set by the pipeline", "no such key", cfg[k]) for k in ("out_dir", "teacher") if k in cfg]
            cfg["data"] = _with_data(params, valid, cfg.get("data", {}))
            cfg["out_dir"] = f"runs/{group}/{run}"
            if cfg.get("kind") in ("gd", "sd", "kd"):
                cfg["teacher"] = "runs/teacher/checkpoint.safetensors"
            init = cfg.pop("init", None)
            if init:
                if init not in PRETRAIN_RUNS:
                    found.append(Problem(("init",), "not a pretrain run", " | ".join(PRETRAIN_RUNS) + " or null",
                                         init, _close(init, PRETRAIN_RUNS)))
                cfg["init"] = f"runs/pretrain/{init}/model.safetensors"
            if str(cfg.get("kind")) in STAGES and cfg["kind"] not in kinds:
                more, stage = [Problem(("kind",), f"not a {group} kind", " | ".join(kinds), cfg["kind"])], None
            else:
                more, stage = _stage(cfg)
            found += more
            if stage is not None and stage.kind == "gd" and _arch(str(teacher_mae)):
                arch = _arch(teacher_mae)
                found += _target_block((stage.task or GDTask()).target_block, arch["decoder_depth"], teacher_mae)
                if _arch(stage.model)["patch_size"] != arch["patch_size"]:
                    found.append(Problem(("model",), "its patch grid differs from the teacher's",
                                         f"patch {arch['patch_size']}, as teacher.pretrain.model", stage.model))
            if stage is not None and group == "pretrain":
                encoders[run] = stage.model
            elif stage is not None and str(init) in encoders and not more:
                found += _same_encoder(stage.model, ("model",), encoders[init], f"pretrain.{init}")
            problems += _relocate(found, [((), (group, run), section[run]), ((), (group, "common"), common),
                                          (("data",), ("data",), params.get("data"))], (group, run))
    return problems, encoders


def _scale_problems(scales, grid: int, loc, given) -> list[Problem]:
    if scales != sorted(scales, reverse=True):
        return [Problem(loc, "not finest first", "4 decreasing scales, e.g. [4, 2, 1, 0.5]", given)]
    if grid * min(scales) < 1 or grid * min(scales) % 1:
        return [Problem(loc, f"the {grid} x {grid} patch grid cannot be pooled to {min(scales)}",
                        f"scales whose smallest times {grid} is a whole number >= 1", given)]
    return []


def _dense_problems(params: dict, valid: dict, encoders: dict) -> list[Problem]:
    """Dataset, canvas counts, models against the canvas size, merged trains, run inits."""
    from .config import PRETRAIN_RUNS, deep_merge

    dense, raw, problems = valid["dense"], params["dense"], []
    canvases = dense.dataset == "canvases"
    dataset = valid["data"].dataset if "data" in valid else None
    if canvases and dataset not in (None, "fmnist"):
        problems.append(Problem(("dense", "dataset"), f"canvases are made of Fashion-MNIST items, data.dataset is "
                                f"{dataset!r}", "external", dense.dataset))
    if canvases:
        problems += [Problem(("dense", "data", k), "required for canvases", "an integer >= 1", None)
                     for k in ("max_items", "train", "val", "test") if getattr(dense.data, k) is None]
    teacher = valid.get("teacher")
    teacher_mae = (teacher.pretrain or {}).get("model") if teacher and teacher.mode == "train" else None
    common_train = (raw.get("common") or {}).get("train") or {}
    for task, head_type in (("segmentation", SegHead), ("detection", DetHead)):
        section = getattr(dense, task)
        for role, source in (("teacher", teacher_mae), ("student", None)):
            name, loc = getattr(section, f"{role}_model"), ("dense", task, f"{role}_model")
            found = _model_problems(name, loc, mae=False, size=dense.data.size, chans=1 if canvases else 3,
                                    exact=False, multiple=2)
            if not found:
                grid = dense.data.size // _arch(name)["patch_size"]
                scales = (section.head or head_type()).scales
                found += _scale_problems(scales, grid, ("dense", task, "head", "scales"),
                                         (raw[task].get("head") or {}).get("scales", scales))
                found += _same_encoder(name, loc, str(source), "teacher.pretrain") if source else []
                found += [p for run in dense.runs.values() if role == "student" and run.init in encoders
                          for p in _same_encoder(name, loc, encoders[run.init], f"pretrain.{run.init}")]
            override = raw[task].get(f"{role}_train") or {}
            merged = deep_merge(common_train, override)
            more, train = _check(Train, merged)
            more += _train_problems(train, merged, ()) if train else []
            problems += found + _relocate(more, [((), ("dense", task, f"{role}_train"), override),
                                                 ((), ("dense", "common", "train"), common_train)],
                                          ("dense", "common", "train"))
    problems += [Problem(("dense", "runs", name, "init"), "not a pretrain run", " | ".join(PRETRAIN_RUNS) + " or null",
                         run.init, _close(run.init, PRETRAIN_RUNS))
                 for name, run in dense.runs.items() if run.init is not None and run.init not in PRETRAIN_RUNS]
    return problems


# ------------------------------------------------------------------------------------------ public
def validate_params(params: dict, source: str = "params.yaml", partial: bool = False) -> dict:
    """Check a whole params dict (any profile) against the schema; returns ``params`` unchanged.

    Every section is checked (keys, types, ranges), every run as the stage configuration it
    becomes, plus the cross-section rules (teacher mode and dataset, decoder depth of a ``train``
    teacher, encoders the ``init`` runs hand over, dense canvases). ``partial``: only the sections
    present are checked (the notebooks receive some sections only). Raises :class:`ConfigError`
    listing every problem, each at its key path in ``source``.
    """
    if not isinstance(params, dict):
        raise ConfigError(f"invalid configuration in {source}", [Problem((), "wrong type", "a mapping", params).line()])
    problems = [Problem((k,), "unknown key", ", ".join(SECTIONS), params[k], _close(k, SECTIONS))
                for k in params if k not in SECTIONS]
    problems += [Problem((k,), "required key missing", _describe(tp)) for k, tp in SECTIONS.items()
                 if k not in params and not partial]
    valid = {}
    for key, tp in SECTIONS.items():
        if key in params:
            found, value = _check(tp, params[key])
            problems += [p._replace(loc=(key, *p.loc)) for p in found]
            if not found:
                valid[key] = value
    if "teacher" in valid:
        problems += _teacher_problems(params, valid)
    found, encoders = _run_problems(params, valid)
    problems += found
    if "dense" in valid:
        problems += _dense_problems(params, valid, encoders)
    _raise(problems, f"invalid configuration in {source}")
    return params


def validate_stage(cfg: dict) -> dict:
    """Check one stage configuration (``config.stage_config`` / ``config.teacher_stage_config``;
    the dense kinds go to :func:`validate_dense_stage`): keys allowed for its ``kind``, types,
    ranges, the model name against the dataset's images, warm-up within the epochs. Returns
    ``cfg`` unchanged."""
    if isinstance(cfg, dict) and str(cfg.get("kind")) in DENSE_STAGES:
        return validate_dense_stage(cfg)
    where = cfg.get("out_dir", "?") if isinstance(cfg, dict) else "?"
    _raise(_stage(cfg)[0], f"invalid stage configuration ({where})")
    return cfg


def validate_dense_stage(cfg: dict) -> dict:
    """Check one dense stage configuration (``config.dense_stage_config``); returns ``cfg`` unchanged."""
    where = cfg.get("out_dir", "?") if isinstance(cfg, dict) else "?"
    _raise(_dense_stage(cfg), f"invalid dense stage configuration ({where})")
    return cfg


def check_target_block(target_block: int, decoder_depth: int, teacher: str = "the GD teacher") -> None:
    """At GD stage time: ``task.target_block`` must name a block of the loaded teacher's decoder
    (1-based, ``decoder_depth`` blocks); ``teacher`` names it (model or file) in the message."""
    _raise(_target_block(target_block, decoder_depth, teacher), "invalid stage configuration")


def check_num_classes(teacher_classes: int, student_classes: int, dataset: str,
                      teacher_file: str = "the teacher checkpoint") -> None:
    """At stage time, after loading a classifier teacher: its class count, the student's and the
    dataset's (fmnist 10, imagenet 1000) must agree; the message names both counts and the file."""
    if dataset not in NUM_CLASSES:
        problems = [Problem(("data", "dataset"), "not an allowed choice", " | ".join(NUM_CLASSES), dataset)]
    elif teacher_classes != NUM_CLASSES[dataset] or student_classes != NUM_CLASSES[dataset]:
        problems = [Problem((teacher_file,), "class counts differ",
                            f"{NUM_CLASSES[dataset]} classes for teacher and student (data.dataset {dataset!r})",
                            {"teacher": teacher_classes, "student": student_classes})]
    else:
        problems = []
    _raise(problems, "teacher and student do not fit the dataset")
