"""From a profile's sections to the stage configurations ``stages.run_stage`` takes.

A profile (``g2sd_lib/pipeline/profiles/<name>.yaml``) groups runs: ``pretrain`` (GD and the MAE-student baseline), ``students`` (the
G2SD student and the baselines) and ``dense`` (the dense teachers and students). Inside a group,
``common`` holds the shared settings and each run overrides them (deep merge). Run outputs live
under ``<root>/<group>/<run>[/seed<k>]`` (dense: group ``dense/<task>``), ``root`` being the
profile's run directory: ``runs/<profile>`` in the pipeline (:func:`g2sd_lib.pipeline.profiles.output_dirs`),
so that every profile's runs and reports live side by side.
"""

import copy
from pathlib import Path

import yaml

from ..errors import InputError

# The paper's comparison: every student and what initialises it.
PRETRAIN_RUNS = ("gd", "mae_student")
STUDENTS = ("g2sd", "gd_only", "sd_only", "mae", "scratch", "kd")
DENSE_TASKS = ("segmentation", "detection")
SPLITS = ("train", "val", "test")  # the dense canvases' splits


def canvas_paths(root="runs") -> dict[str, Path]:
    canvases = Path(root) / "dense" / "canvases"
    return {split: canvases / f"{split}.pt" for split in SPLITS}


def check_canvases(params: dict) -> None:
    """Refuse the profiles whose dense tasks do not run here (``external``), with where they run."""
    dataset = params["dense"]["dataset"]
    if dataset == "external":
        raise RuntimeError("this profile's dense tasks run outside the pipeline, in detectron2 (COCO) and "
                           "mmsegmentation (ADE20K): see g2sd_lib.dense.paper for the recipes and hook points")
    if dataset != "canvases":
        raise InputError(f"dense.dataset must be 'canvases' or 'external', got {dataset!r}")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges keys the mapping may override
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise InputError(f"{self.source}: the key {key!r} is given twice in one mapping, on line {seen[key]} "
                                 f"and line {line}; YAML would keep the second silently. Delete one of them")
            seen[key] = line
        return super().construct_mapping(node, deep)


# A configuration is untrusted input: anchors and aliases (`&a` / `*a`) may nest so that a few hundred bytes
# expand into billions of values once copied (a "billion laughs" file). No profile comes near this bound
# (each holds well under a thousand; a test checks it).
MAX_YAML_VALUES = 100_000


def _expanded_size(root) -> int:
    """Number of values ``root`` (a composed YAML node) holds once every alias is expanded, capped at
    ``MAX_YAML_VALUES + 1`` (also for a node that contains itself); linear in the distinct nodes (an alias is
    the node object it names, so each node's size is computed once)."""
    sizes, open_ = {}, set()
    stack = [root]
    while stack:
        node = stack[-1]
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        todo = [c for c in children if id(c) not in sizes]
        if any(id(c) in open_ for c in todo):
            return MAX_YAML_VALUES + 1  # a recursive alias: infinite once expanded
        if todo:
            open_.add(id(node))
            stack.extend(todo)
            continue
        stack.pop()
        open_.discard(id(node))
        sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_VALUES + 1)
    return sizes[id(root)]


def load_yaml(text: str, source) -> object:
    """Parse ``text`` (the contents of ``source``, named in errors) as YAML, refusing duplicate keys and
    aliases that expand beyond ``MAX_YAML_VALUES`` values: every configuration and profile file is read here."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise InputError(f"{source}: its anchors and aliases (&name / *name) expand to more than "
                             f"{MAX_YAML_VALUES:,} values (a profile holds under a thousand); write the values out "
                             f"or use fewer nested aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def deep_merge(base: dict, override: dict) -> dict:
    """Copy of ``base`` with ``override`` merged in, recursively for nested dicts."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def has_path(node, keys) -> bool:
    """Whether the nested mappings (or lists, by index) ``node`` hold the key path ``keys``."""
    for key in keys:
        if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) \
                and key < len(node):
            node = node[key]
        else:
            return False
    return True


def run_dir(root, group: str, run: str, seed: int | None = None) -> Path:
    path = Path(root) / group / run
    return path / f"seed{seed}" if seed is not None else path


def teacher_paths(root="runs") -> dict:
    """Where the teacher stage leaves the two teachers (our safetensors layout): ``gd`` the MAE with
    decoder, ``sd`` the fine-tuned classifier."""
    teacher = Path(root) / "teacher"
    return {"gd": teacher / "mae.safetensors", "sd": teacher / "classifier.safetensors"}


def stage_config(params: dict, group: str, run: str, root="runs", seed: int | None = None) -> dict:
    """The ``run_stage`` configuration of run ``run`` of ``group`` (``pretrain`` or ``students``).

    ``init`` names a pretrain run (``gd``, ``mae_student``) or is null; teachers come from the
    teacher stage. ``seed`` overrides ``train.seed`` and gives the run its own directory.
    """
    section = params[group]
    if run not in section or run == "common":
        known = [k for k in section if k != "common"]
        raise InputError(f"no run {run!r} in params section {group!r}; known: {', '.join(known)}")
    cfg = deep_merge(section.get("common", {}), section[run])
    cfg["data"] = deep_merge(params.get("data", {}), cfg.get("data", {}))
    cfg.setdefault("train", {})
    if seed is not None:
        cfg["train"]["seed"] = seed
    cfg["out_dir"] = str(run_dir(root, group, run, seed))
    teachers = teacher_paths(root)
    if cfg["kind"] == "gd":
        cfg["teacher"] = str(teachers["gd"])
    elif cfg["kind"] in ("sd", "kd"):
        cfg["teacher"] = str(teachers["sd"])
    init = cfg.pop("init", None)
    if init:
        cfg["init"] = str(run_dir(root, "pretrain", init) / "model.safetensors")
    return cfg


def teacher_stage_config(params: dict, step: str, root="runs") -> dict:
    """``run_stage`` configuration of the teacher recipe (``train`` mode): step ``pretrain`` (MAE)
    or ``finetune`` (classifier initialised from the pretrained encoder: in ``finetune`` mode the bundled
    MAE the teacher stage copied to ``<root>/teacher/mae.safetensors``)."""
    cfg = copy.deepcopy(params["teacher"][step])
    cfg["data"] = deep_merge(params.get("data", {}), cfg.get("data", {}))
    cfg["out_dir"] = str(run_dir(root, "teacher", step))
    if step == "finetune":
        cfg["init"] = str(teacher_paths(root)["gd"] if params["teacher"].get("mode") == "finetune"
                          else run_dir(root, "teacher", "pretrain") / "model.safetensors")
    return cfg


def dense_stage_config(params: dict, task: str, run: str, root="runs", seed: int | None = None) -> dict:
    """The ``run_stage`` configuration (kind ``segmentation`` / ``detection``) of ``run`` of ``task``:
    ``teacher`` or a ``dense.runs`` name.

    The teacher's ViT starts from the teacher stage's MAE encoder (as the official dense teachers
    start from MAE ViT-B); a student's from the pretrain run its ``init`` names, or at random.
    A distilled student learns from ``<root>/dense/<task>/teacher``.
    """
    if task not in DENSE_TASKS:
        raise InputError(f"unknown dense task {task!r}; choose one of {', '.join(DENSE_TASKS)}")
    check_canvases(params)
    dense = params["dense"]
    section, common = dense[task], dense.get("common", {})
    cfg = {"kind": task, "run": run, "head": dict(section.get("head") or {}), "task": dict(section.get("task") or {})}
    if "flip" in common:  # flip and eval_batch_size unset: the dense stage schema's defaults
        cfg["flip"] = common["flip"]
    cfg["data"] = {"canvases": str(canvas_paths(root)["train"].parent)}
    if "eval_batch_size" in dense["data"]:
        cfg["data"]["eval_batch_size"] = dense["data"]["eval_batch_size"]
    group = f"dense/{task}"
    if run == "teacher":
        cfg.update(model=section["teacher_model"], init=str(teacher_paths(root)["gd"]), distill=None,
                   train=deep_merge(common.get("train", {}), section.get("teacher_train", {})),
                   out_dir=str(run_dir(root, group, "teacher")))
        cfg["train"].setdefault("seed", dense["seeds"][0])
        return cfg
    runs = dense["runs"]
    if run not in runs:
        raise InputError(f"no dense run {run!r}; known: teacher, {', '.join(runs)}")
    spec = runs[run]
    cfg.update(model=section["student_model"],
               init=str(run_dir(root, "pretrain", spec["init"]) / "model.safetensors") if spec.get("init") else None,
               train=deep_merge(common.get("train", {}), section.get("student_train", {})),
               out_dir=str(run_dir(root, group, run, seed)))
    cfg["distill"] = dict(section.get("distill") or {}) if spec.get("distill") else None
    if spec.get("distill"):
        cfg["teacher"] = str(run_dir(root, group, "teacher") / "model.safetensors")
    if seed is not None:
        cfg["train"]["seed"] = seed
    return cfg


def train_images(params: dict, labelled: bool = False) -> int:
    """Training images per epoch of a Fashion-MNIST profile (60 000 minus validation, or the subset);
    ``labelled``: of a supervised run, which sees only the ``data.labels`` drawn images when that is set."""
    d = params["data"]
    if d.get("dataset", "fmnist") != "fmnist":
        return 1_281_167 if d.get("dataset") == "imagenet" else 0  # ImageNet-1k train
    n = d.get("train_subset") or 60_000 - d.get("val_size", 5000)
    return min(n, d["labels"]) if labelled and d.get("labels") else n


def budget(params: dict) -> dict:
    """What every run of a profile trains for: epochs and images seen, per run, and the seeds.

    Every claim in the reports names it (``summary.json`` ``budget``), so that a comparison made at
    2 epochs is never read as one made at convergence.
    """
    n = train_images(params)

    def runs(group):
        section = params[group]
        out = {}
        for run in section:
            if run != "common":
                cfg = deep_merge(section.get("common", {}), section[run])
                epochs = cfg.get("train", {}).get("epochs")
                # a run's own data section (e.g. students.common.data.train_subset) sets its images per epoch
                per_epoch = train_images({"data": deep_merge(params["data"], cfg.get("data", {}))},
                                         labelled=cfg.get("kind") in ("sd", "finetune", "kd"))
                out[run] = {"epochs": epochs, "images_seen": epochs * per_epoch}
        return out

    out = {"train_images_per_epoch": n, "labels": params["data"].get("labels"), "seeds": list(params["seeds"]), "teacher_mode": params["teacher"]["mode"],
           "pretrain": runs("pretrain"), "students": runs("students")}
    if params["teacher"]["mode"] == "train":
        out["teacher"] = {step: params["teacher"][step]["train"]["epochs"] for step in ("pretrain", "finetune")}
    dense = params.get("dense", {})
    if dense.get("dataset") == "canvases":
        common = dense["common"]["train"]
        out["dense"] = {task: {role: deep_merge(common, dense[task].get(f"{role}_train") or {})["epochs"]
                               for role in ("teacher", "student")} for task in DENSE_TASKS}
        out["dense"]["train_canvases"], out["dense"]["seeds"] = dense["data"]["train"], list(dense["seeds"])
    return out


def budget_text(b: dict) -> str:
    """One line: ``GD 4 epochs (220 000 images), SD / fine-tuning 2 epochs (110 000 images), 3 seeds``."""
    def fmt(run):
        return f"{run['epochs']} epochs ({run['images_seen']:,} images)".replace(",", " ")
    gd, student = b["pretrain"].get("gd"), b["students"].get("g2sd")
    parts = [f"GD {fmt(gd)}" if gd else None, f"SD / fine-tuning {fmt(student)}" if student else None,
             f"{len(b['seeds'])} seed(s)"]
    return ", ".join(p for p in parts if p)


def dense_budget_text(dense: dict | None) -> str:
    """``segmentation 5 / detection 4 epochs of 2 000 canvases, 1 seed(s)`` (students' epochs), or ``-``."""
    if not dense:
        return "-"
    epochs = " / ".join(f"{task} {dense[task]['student']}" for task in ("segmentation", "detection") if task in dense)
    canvases = f"{dense['train_canvases']:,}".replace(",", " ")
    return f"{epochs} epochs of {canvases} canvases, {len(dense['seeds'])} seed(s)"
