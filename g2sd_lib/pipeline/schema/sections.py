"""The sections of a profile (``g2sd_lib/pipeline/profiles/<name>.yaml``) around the stage configurations: ``dense``, ``teacher``,
``evaluate``, and :data:`SECTIONS`, the type of every top-level key. Run groups (``pretrain``,
``students``) and train overrides stay plain mappings here: they are checked after merging, as the
stage configuration they become (:mod:`.rules`)."""

from typing import Annotated, Any, Literal

from annotated_types import Len
from pydantic import Strict, StringConstraints

from .stage_models import (EVAL_BATCH_SIZE, Bool, Count, Data, DetDistill, DetHead, DetOptions, Int, Section, SegDistill, SegHead, SegOptions, Str)

Seeds = Annotated[list[Int], Len(1)]
Sha256 = Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9a-f]{64}$")]


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
    eval_batch_size: Count = EVAL_BATCH_SIZE


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
    mode: Literal["bundled", "finetune", "train", "download"]
    bundled: Bundled | None = None  # required by modes bundled and finetune (its mae)
    download: Download | None = None  # required by mode download
    reconstruction_images: Count = 8
    pretrain: dict[str, Any] | None = None  # mode train: stage configurations, checked as such
    finetune: dict[str, Any] | None = None  # modes train and finetune


class Evaluate(Section):
    attention_images: Count = 6
    throughput_batch: Count = 256


Group = dict[str, dict[str, Any]]  # common + runs, checked run by run after merging
SECTIONS = {"profile": Str, "nproc": Count, "concurrent_runs": Count, "concurrent_stages": Count, "seeds": Seeds, "data": Data, "teacher": Teacher,
            "pretrain": Group, "students": Group, "evaluate": Evaluate, "dense": Dense}
