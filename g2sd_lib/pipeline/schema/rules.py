"""The cross-field rules pydantic cannot state: model names against the images they will see
(class counts aside, which :func:`g2sd_lib.pipeline.schema.check_num_classes` checks at stage time), decoder
depth and patch grid of a ``train`` teacher, warm-up within the epochs, teacher mode against the
dataset, encoders that the ``init`` runs hand over, dense canvases and pyramid scales.

Each rule returns :class:`.messages.Problem` lists; the profile-level rules check every run as the
stage configuration it becomes (common merged in, as :mod:`g2sd_lib.pipeline.config` does) and relocate its
problems to the key that wrote the value. The model library (torch, timm) is imported only where a
model name is parsed, so importing the schema stays cheap.
"""

from ..config import PRETRAIN_RUNS, STUDENTS, deep_merge
from ...checkpoints.official import OFFICIAL_CHECKPOINTS
from ...errors import close_match
from .messages import MISSING, Problem, check_value, relocate
from .stage_models import DENSE_STAGES, NUM_CLASSES, STAGES, DenseStage, DetHead, SegHead, Stage, Train


def _arch(name: str) -> dict | None:
    """Constructor arguments of a model name (``mae_vit_*`` or ``vit_*``), None if it is not one."""
    from ...models import mae_kwargs, vit_kwargs

    try:
        return mae_kwargs(name) if name.startswith("mae_") else vit_kwargs(name)
    except ValueError:
        return None


def _name_problems(name, loc, mae: bool = False) -> list[Problem]:
    from ...models import ENCODER_SIZES, close_model_name, shape_problem

    if (arch := _arch(name)) is not None and (name.startswith("mae_") or not mae):
        if problem := shape_problem(arch):
            return [Problem(loc, f"cannot be built: {problem}",
                            "sizes of at least 1 and widths their heads divide (an MAE's: multiples of 4)", name)]
        return []
    pattern = "mae_vit_<size>_patch<p>_dec<D>d<N>b" if mae else "vit_<size>_patch<p> (or an mae_vit_ name)"
    return [Problem(loc, "not a model name", f"{pattern}, size one of {', '.join(ENCODER_SIZES)}", name,
                    close_model_name(name))]


def _model_problems(name, loc, *, mae: bool, size: int, chans: int, exact: bool, multiple: int = 1,
                    overrides: dict | None = None):
    """The model name parses, fits images of ``size`` px x ``chans`` (after the ``model_kwargs``
    ``overrides`` of img_size / in_chans) and its patch divides ``size``."""
    from ...models import ENCODER_SIZES

    if problems := _name_problems(name, loc, mae):
        return problems
    arch = {**_arch(name), **{k: v for k, v in (overrides or {}).items() if v is not None}}
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
    return deep_merge(params["data"] if "data" in valid else {}, own) if isinstance(own, dict) else own


def _train_problems(train: Train, raw: dict, loc=("train",)):
    if train.warmup_epochs > train.epochs:
        return [Problem((*loc, "warmup_epochs"), "out of range", f"a number in [0, epochs = {train.epochs}]",
                        raw["warmup_epochs"])]
    return []


def _kind_problems(cfg, kinds: dict) -> list[Problem]:
    """``cfg`` is not a mapping, or its ``kind`` is missing or not a key of ``kinds``."""
    if not isinstance(cfg, dict):
        return [Problem((), "wrong type", "a mapping", cfg)]
    kind = cfg.get("kind", MISSING)
    if not isinstance(kind, str) or kind not in kinds:
        what = "required key missing" if kind is MISSING else "not an allowed choice"
        return [Problem(("kind",), what, "one of " + " | ".join(kinds), kind, close_match(kind, kinds))]
    return []


def stage_problems(cfg) -> tuple[list[Problem], Stage | None]:
    """Problems of one classification stage configuration and the validated stage."""
    if problems := _kind_problems(cfg, STAGES):
        return problems, None
    kind = cfg["kind"]
    problems, stage = check_value(STAGES[kind], cfg)
    if stage is None:
        return problems, None
    data = stage.data
    size, chans = (28, 1) if data.dataset == "fmnist" else (data.input_size, 3)
    overrides = stage.model_kwargs.model_dump(include={"img_size", "in_chans"})
    problems += _model_problems(stage.model, ("model",), mae=kind in ("mae", "gd"), size=size, chans=chans, exact=True,
                                overrides=overrides)
    problems += _train_problems(stage.train, cfg["train"])
    if data.dataset == "imagenet" and not data.root:
        problems.append(Problem(("data", "root"), "required for imagenet", "a directory with train/ and val/",
                                data.root))
    if stage.augment.crop_scale[0] > stage.augment.crop_scale[1]:
        problems.append(Problem(("augment", "crop_scale"), "lower bound above upper", "[lo, hi] with lo <= hi",
                                cfg["augment"]["crop_scale"]))
    return problems, stage


def _stage_of(cfg, kinds: tuple, problem: str) -> tuple[list[Problem], Stage | None]:
    """:func:`stage_problems` where only ``kinds`` belong (a teacher step, a run group); ``problem`` says why."""
    if str(cfg.get("kind")) in STAGES and cfg["kind"] not in kinds:
        return [Problem(("kind",), problem, " | ".join(kinds), cfg["kind"])], None
    return stage_problems(cfg)


def dense_stage_problems(cfg) -> tuple[list[Problem], DenseStage | None]:
    """Problems of one dense stage configuration and the validated stage."""
    if problems := _kind_problems(cfg, DENSE_STAGES):
        return problems, None
    problems, stage = check_value(DENSE_STAGES[cfg["kind"]], cfg)
    if stage is None:
        return problems, None
    problems += _name_problems(stage.model, ("model",))
    if stage.distill is not None and not stage.teacher:
        problems.append(Problem(("teacher",), "required key missing", "the dense teacher's checkpoint (distill is set)"))
    return problems + _train_problems(stage.train, cfg["train"]), stage


def teacher_problems(params: dict, valid: dict) -> list[Problem]:
    """Teacher mode and the sections it needs; the ``train`` recipe's two stage configurations."""
    teacher, problems = valid["teacher"], []
    needs = {"bundled": ("bundled",), "download": ("download",), "train": ("pretrain", "finetune"),
             "finetune": ("bundled", "finetune")}[teacher.mode]
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
                                        close_match(name, names)))
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
        found, stage = _stage_of(cfg, (kind,), f"not the kind of teacher.{step}")
        if stage is not None and step == "finetune" and isinstance(params["teacher"].get("pretrain"), dict):
            pretrained = str(params["teacher"]["pretrain"].get("model"))
            found += _same_encoder(stage.model, ("model",), pretrained, "teacher.pretrain")
        problems += relocate(found, [((), ("teacher", step), raw), (("data",), ("data",), params.get("data"))],
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


def target_block_problems(target_block, depth: int, teacher: str) -> list[Problem]:
    if 1 <= target_block <= depth:
        return []
    return [Problem(("task", "target_block"), "out of range",
                    f"an integer in 1..{depth} (the decoder blocks of the teacher {teacher})", target_block)]


def _teacher_mae(valid: dict) -> str | None:
    """``teacher.pretrain.model`` of a ``train`` teacher (what GD distils and students share), else None."""
    teacher = valid.get("teacher")
    return (teacher.pretrain or {}).get("model") if teacher and teacher.mode == "train" else None


def _not_a_pretrain_run(loc, init) -> Problem:
    return Problem(loc, "not a pretrain run", " | ".join(PRETRAIN_RUNS) + " or null", init,
                   close_match(init, PRETRAIN_RUNS))


def run_problems(params: dict, valid: dict) -> tuple[list[Problem], dict]:
    """Every run of ``pretrain`` and ``students``, checked as the stage configuration it becomes
    (common merged in, as ``config.stage_config`` does); returns the problems and the pretrain
    runs' model names (what the students' ``init`` loads)."""
    teacher_mae = _teacher_mae(valid)
    problems, encoders = [], {}
    for group, runs, kinds in (("pretrain", PRETRAIN_RUNS, ("mae", "gd")),
                               ("students", STUDENTS, ("sd", "finetune", "kd"))):
        if group not in valid:
            continue
        section, names = params[group], ("common", *runs)
        common = section.get("common", {})
        problems += [Problem((group, k), "unknown run", ", ".join(names), section[k], close_match(k, names))
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
                    found.append(_not_a_pretrain_run(("init",), init))
                cfg["init"] = f"runs/pretrain/{init}/model.safetensors"
            more, stage = _stage_of(cfg, kinds, f"not a {group} kind")
            found += more
            if stage is not None and stage.kind == "gd" and _arch(str(teacher_mae)):
                arch = _arch(teacher_mae)
                found += target_block_problems(stage.task.target_block, arch["decoder_depth"],
                                               teacher_mae)
                if (own := _arch(stage.model)) is not None and own["patch_size"] != arch["patch_size"]:
                    found.append(Problem(("model",), "its patch grid differs from the teacher's",
                                         f"patch {arch['patch_size']}, as teacher.pretrain.model", stage.model))
            if stage is not None and group == "pretrain":
                encoders[run] = stage.model
            elif stage is not None and str(init) in encoders and not more:
                found += _same_encoder(stage.model, ("model",), encoders[init], f"pretrain.{init}")
            problems += relocate(found, [((), (group, run), section[run]), ((), (group, "common"), common),
                                         (("data",), ("data",), params.get("data"))], (group, run))
    return problems, encoders


def _scale_problems(scales, grid: int, loc, given) -> list[Problem]:
    if scales != sorted(scales, reverse=True):
        return [Problem(loc, "not finest first", "4 decreasing scales, e.g. [4, 2, 1, 0.5]", given)]
    if grid * min(scales) < 1 or grid * min(scales) % 1:
        return [Problem(loc, f"the {grid} x {grid} patch grid cannot be pooled to {min(scales)}",
                        f"scales whose smallest times {grid} is a whole number >= 1", given)]
    return []


def dense_problems(params: dict, valid: dict, encoders: dict) -> list[Problem]:
    """Dataset, canvas counts, models against the canvas size, merged trains, run inits."""
    dense, raw, problems = valid["dense"], params["dense"], []
    canvases = dense.dataset == "canvases"
    dataset = valid["data"].dataset if "data" in valid else None
    if canvases and dataset not in (None, "fmnist"):
        problems.append(Problem(("dense", "dataset"), f"canvases are made of Fashion-MNIST items, data.dataset is "
                                f"{dataset!r}", "external", dense.dataset))
    if canvases:
        problems += [Problem(("dense", "data", k), "required for canvases", "an integer >= 1", None)
                     for k in ("max_items", "train", "val", "test") if getattr(dense.data, k) is None]
    teacher_mae = _teacher_mae(valid)
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
            more, train = check_value(Train, merged)
            more += _train_problems(train, merged, ()) if train else []
            problems += found + relocate(more, [((), ("dense", task, f"{role}_train"), override),
                                                ((), ("dense", "common", "train"), common_train)],
                                         ("dense", "common", "train"))
    problems += [_not_a_pretrain_run(("dense", "runs", name, "init"), run.init)
                 for name, run in dense.runs.items() if run.init is not None and run.init not in PRETRAIN_RUNS]
    return problems
