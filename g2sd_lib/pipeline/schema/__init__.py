"""One validated configuration: every section of a profile and every stage configuration is
checked against this schema before any work starts.

Pydantic models (:mod:`.stage_models`, :mod:`.sections`) give keys, types and ranges; plain functions
(:mod:`.rules`) add the cross-field rules (class counts, decoder depth, patch sizes, warm-up within
the epochs, teacher mode). Every failure becomes one line ``path: problem (got value); allowed:
what`` (:mod:`.messages`, with a did-you-mean for unknown keys and choices), and all lines of a
configuration are raised together as one :class:`ConfigError`. Validation never fills defaults
into the configuration: the pipeline hashes params as written.
"""

from ...errors import close_match
from .messages import ConfigError, Problem, check_value, describe_type, raise_problems
from .rules import dense_problems, dense_stage_problems, run_problems, stage_problems, teacher_problems
from .sections import SECTIONS
from .stage_models import DENSE_STAGES, NUM_CLASSES, STAGES, Data, DenseStage, Stage, Train

__all__ = ["ConfigError", "validate_params", "validate_stage", "typed_stage", "check_num_classes", "NUM_CLASSES",
           "Train", "Data", "Stage", "DenseStage", "STAGES", "DENSE_STAGES"]


def validate_params(params: dict, source: str = "the profile", partial: bool = False) -> dict:
    """Check a whole params dict (any profile) against the schema; returns ``params`` unchanged.

    Every section is checked (keys, types, ranges), every run as the stage configuration it
    becomes, plus the cross-section rules (teacher mode and dataset, decoder depth of a ``train``
    teacher, encoders the ``init`` runs hand over, dense canvases). ``partial``: only the sections
    present are checked (the notebooks receive some sections only). Raises :class:`ConfigError`
    listing every problem, each at its key path in ``source``.
    """
    if not isinstance(params, dict):
        raise ConfigError(f"invalid configuration in {source}", [Problem((), "wrong type", "a mapping", params).line()])
    problems = [Problem((k,), "unknown key", ", ".join(SECTIONS), params[k], close_match(k, SECTIONS))
                for k in params if k not in SECTIONS]
    problems += [Problem((k,), "required key missing", describe_type(tp)) for k, tp in SECTIONS.items()
                 if k not in params and not partial]
    valid = {}
    for key, tp in SECTIONS.items():
        if key in params:
            found, value = check_value(tp, params[key])
            problems += [p._replace(loc=(key, *p.loc)) for p in found]
            if not found:
                valid[key] = value
    if "teacher" in valid:
        problems += teacher_problems(params, valid)
    found, encoders = run_problems(params, valid)
    problems += found
    if "dense" in valid:
        problems += dense_problems(params, valid, encoders)
    raise_problems(problems, f"invalid configuration in {source}")
    return params


def validate_stage(cfg: dict) -> dict:
    """Check one stage configuration (``config.stage_config`` / ``config.teacher_stage_config`` /
    ``config.dense_stage_config``): keys allowed for its ``kind``, types, ranges, the model name
    against the dataset's images, warm-up within the epochs. Returns ``cfg`` unchanged."""
    typed_stage(cfg)
    return cfg


def typed_stage(cfg: dict | Stage | DenseStage) -> Stage | DenseStage:
    """The typed configuration a stage is built from, every default filled in, after the checks of
    :func:`validate_stage`: a classification kind's :class:`.stage_models.Stage` subclass, or a dense
    kind's (``segmentation`` / ``detection``) :class:`.stage_models.DenseStage` subclass; a typed stage
    is returned as it is."""
    if isinstance(cfg, (Stage, DenseStage)):
        return cfg
    dense = isinstance(cfg, dict) and str(cfg.get("kind")) in DENSE_STAGES
    problems, stage = dense_stage_problems(cfg) if dense else stage_problems(cfg)
    where = cfg.get("out_dir", "?") if isinstance(cfg, dict) else "?"
    raise_problems(problems, f"invalid {'dense ' * dense}stage configuration ({where})")
    return stage


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
    raise_problems(problems, "teacher and student do not fit the dataset")
