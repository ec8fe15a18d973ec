"""The configuration schema: every profile and every stage configuration it produces passes; each
bad value fails with its key path, the value given and what is allowed, all in one ConfigError."""

import copy

import pytest
import yaml

from g2sd_lib.pipeline.config import (DENSE_TASKS, PRETRAIN_RUNS, STUDENTS, dense_stage_config, stage_config, teacher_stage_config)
from g2sd_lib.pipeline.profiles import PROFILES, load_profile
from g2sd_lib.pipeline.schema import ConfigError, check_num_classes, typed_stage, validate_params, validate_stage


def _failure(params, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        validate_params(params, **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_pass_unchanged(name):
    params = load_profile(name)
    before = copy.deepcopy(params)
    assert validate_params(params) is params
    assert params == before  # no defaults filled in: the pipeline hashes params as written


@pytest.mark.parametrize("name", PROFILES)
def test_every_stage_config_of_every_profile_passes(name):
    params = load_profile(name)
    configs = [stage_config(params, "pretrain", r) for r in PRETRAIN_RUNS]
    configs += [stage_config(params, "students", r, seed=s) for r in STUDENTS for s in params["seeds"]]
    configs += [teacher_stage_config(params, step) for step in ("pretrain", "finetune")]
    for cfg in configs:
        before = copy.deepcopy(cfg)
        assert validate_stage(cfg) is cfg and cfg == before
    if params["dense"]["dataset"] == "external":
        return  # dense_stage_config refuses external profiles: their dense runs happen elsewhere
    for task in DENSE_TASKS:
        runs = ["teacher", *params["dense"]["runs"]]
        for run in runs:
            cfg = dense_stage_config(params, task, run, seed=None if run == "teacher" else 0)
            assert validate_stage(cfg) is cfg and typed_stage(cfg).kind == task


_DROP = object()


def _set(path: str, value=_DROP):
    """A mutation of a params dict: set (or, without ``value``, delete) the dotted ``path``."""
    def mutate(params):
        *parents, last = path.split(".")
        for key in parents:
            params = params[key]
        if value is _DROP:
            del params[last]
        else:
            params[last] = value
    return mutate


# (profile, mutation, substrings the message must hold: key path, value, allowed / did-you-mean)
PROBES = {
    "top-level typo": ("fmnist", _set("epcohs", 3), ["epcohs: unknown key (got 3)", "allowed: profile, nproc, concurrent_runs, concurrent_stages, seeds"]),
    "augment typo": ("fmnist", _set("students.common.augment.mixpu", 0.2),
                     ["students.common.augment.mixpu: unknown key (got 0.2)", "did you mean 'mixup'?"]),
    "data typo": ("fmnist", _set("data.train_subest", 5),
                  ["data.train_subest: unknown key (got 5)", "did you mean 'train_subset'?"]),
    "train typo": ("fmnist", _set("students.common.train.epcohs", 2),
                   ["students.common.train.epcohs: unknown key (got 2)", "did you mean 'epochs'?"]),
    "task typo": ("fmnist", _set("pretrain.gd.task.mask_ratoi", 0.7),
                  ["pretrain.gd.task.mask_ratoi: unknown key (got 0.7)", "did you mean 'mask_ratio'?"]),
    "teacher recipe typo": ("smoke", _set("teacher.pretrain.train.epcohs", 2),
                            ["teacher.pretrain.train.epcohs: unknown key (got 2)", "did you mean 'epochs'?"]),
    "dense override typo": ("fmnist", _set("dense.detection.teacher_train.epcohs", 3),
                            ["dense.detection.teacher_train.epcohs: unknown key (got 3)", "did you mean 'epochs'?"]),
    "string epochs": ("fmnist", _set("pretrain.common.train.epochs", "1"),
                      ["pretrain.common.train.epochs: wrong type (got '1')", "allowed: an integer >= 1"]),
    "float epochs": ("fmnist", _set("students.common.train.epochs", 2.0),
                     ["students.common.train.epochs: wrong type (got 2.0)", "an integer >= 1"]),
    "string blr": ("fmnist", _set("students.common.train.blr", "1e-3"),
                   ["students.common.train.blr: wrong type (got '1e-3')", "allowed: a number > 0"]),
    "mask ratio 1": ("fmnist", _set("pretrain.gd.task.mask_ratio", 1.0),
                     ["pretrain.gd.task.mask_ratio: out of range (got 1.0)", "a number > 0 and < 1"]),
    "mask ratio 0": ("fmnist", _set("pretrain.mae_student.task.mask_ratio", 0),
                     ["pretrain.mae_student.task.mask_ratio: out of range (got 0)", "a number > 0 and < 1"]),
    "subset 0": ("smoke", _set("data.val_subset", 0), ["data.val_subset: out of range (got 0)", "an integer >= 1 or null"]),
    "target block": ("smoke", _set("pretrain.gd.task.target_block", 3),
                     ["pretrain.gd.task.target_block: out of range (got 3)",
                      "an integer in 1..2 (the decoder blocks of the teacher mae_vit_smokebase_patch7_dec32d2b)"]),
    "patch": ("fmnist", _set("students.common.model", "vit_fmsmall_patch5"),
              ["students.common.model: its patch does not divide the image size 28 (got 'vit_fmsmall_patch5')",
               "allowed: a model whose patch divides 28"]),
    "model for other images": ("fmnist", _set("students.common.model", "vit_small_patch16"),
                               ["students.common.model: built for 224 px x 3 channel images (got 'vit_small_patch16')",
                                "a model for 28 px x 1 channel images"]),
    "epochs 0": ("fmnist", _set("teacher.finetune.train.epochs", 0),
                 ["teacher.finetune.train.epochs: out of range (got 0)", "an integer >= 1"]),
    "batch 0": ("fmnist", _set("pretrain.common.train.batch_size", 0),
                ["pretrain.common.train.batch_size: out of range (got 0)", "an integer >= 1"]),
    "blr 0": ("fmnist", _set("pretrain.common.train.blr", 0), ["pretrain.common.train.blr: out of range (got 0)", "> 0"]),
    "warm-up": ("fmnist", _set("students.common.train.warmup_epochs", 3),
                ["students.common.train.warmup_epochs: out of range (got 3)", "a number in [0, epochs = 2]"]),
    "betas": ("fmnist", _set("pretrain.common.train.betas", [0.9, 1.0]),
              ["pretrain.common.train.betas[1]: out of range (got 1.0)", "a number >= 0 and < 1"]),
    "amp": ("fmnist", _set("pretrain.common.train.amp", "bf61"),
            ["pretrain.common.train.amp: not an allowed choice (got 'bf61')", "did you mean 'bf16'?",
             "one of auto | bf16 | fp16 | none"]),
    "loss type": ("fmnist", _set("students.g2sd.task.loss_type", "kld"),
                  ["students.g2sd.task.loss_type: not an allowed choice (got 'kld')", "one of g2sd | nkd"]),
    "stage kind": ("fmnist", _set("students.g2sd.kind", "sdd"),
                   ["students.g2sd.kind: not an allowed choice (got 'sdd')", "did you mean 'sd'?",
                    "one of mae | gd | sd | finetune | kd"]),
    "kind of group": ("fmnist", _set("pretrain.gd.kind", "sd"),
                      ["pretrain.gd.kind: not a pretrain kind (got 'sd')", "allowed: mae | gd"]),
    "dataset": ("fmnist", _set("data.dataset", "cifar"),
                ["data.dataset: not an allowed choice (got 'cifar')", "one of fmnist | imagenet"]),
    "teacher mode": ("fmnist", _set("teacher.mode", "bundle"),
                     ["teacher.mode: not an allowed choice (got 'bundle')", "did you mean 'bundled'?"]),
    "empty seeds": ("fmnist", _set("seeds", []), ["seeds: wrong length (got [])", "a non-empty list, each an integer"]),
    "string seed": ("fmnist", _set("seeds", [0, "1"]), ["seeds[1]: wrong type (got '1')", "allowed: an integer"]),
    "nproc": ("fmnist", _set("nproc", 0), ["nproc: out of range (got 0)", "an integer >= 1"]),
    "dense dataset": ("fmnist", _set("dense.dataset", "canvas"),
                      ["dense.dataset: not an allowed choice (got 'canvas')", "did you mean 'canvases'?"]),
    "dense distill weight": ("fmnist", _set("dense.segmentation.distill.weight", -1),
                             ["dense.segmentation.distill.weight: out of range (got -1)", "a number >= 0"]),
    "dense canvas size": ("fmnist", _set("dense.data.size", 50),
                          ["dense.segmentation.teacher_model: its patch x 2 does not divide the image size 50 "
                           "(got 'vit_fmbase_patch7')", "a model whose patch x 2 divides 50"]),
    "dense scales": ("fmnist", _set("dense.data.size", 42),
                     ["dense.segmentation.head.scales: the 6 x 6 patch grid cannot be pooled to 0.25 "
                      "(got [2, 1, 0.5, 0.25])", "scales whose smallest times 6 is a whole number >= 1"]),
    "dense canvases need counts": ("fmnist", _set("dense.data.train", None),
                                   ["dense.data.train: required for canvases (got None)", "an integer >= 1"]),
    "dense init": ("fmnist", _set("dense.runs.g2sd.init", "gdd"),
                   ["dense.runs.g2sd.init: not a pretrain run (got 'gdd')", "did you mean 'gd'?"]),
    "student init": ("fmnist", _set("students.g2sd.init", "gdd"),
                     ["students.g2sd.init: not a pretrain run (got 'gdd')", "allowed: gd | mae_student or null"]),
    "student encoder": ("fmnist", _set("students.common.model", "vit_fmbase_patch7"),
                        ["students.common.model: its encoder differs from that of pretrain.gd"]),
    "download on fmnist": ("paper", _set("data.dataset", "fmnist"),
                           ["teacher.mode: the official teachers have 1000 classes, data.dataset 'fmnist' has 10 "
                            "(got 'download')"]),
    "download file": ("paper", _set("teacher.download.gd", "mae_pretrain_vit_base.pth"),
                      ["teacher.download.gd: not a pretrained MAE with decoder (got 'mae_pretrain_vit_base.pth')",
                       "did you mean 'mae_pretrain_vit_base_full.pth'?"]),
    "sha256": ("fmnist", _set("teacher.bundled.mae_sha256", "abc"),
               ["teacher.bundled.mae_sha256: ", "(got 'abc')", "matching ^[0-9a-f]{64}$"]),
    "missing model": ("fmnist", _set("students.common.model"),
                      ["students.g2sd.model: required key missing; allowed: a string"]),
    "missing section": ("fmnist", _set("evaluate"), ["evaluate: required key missing"]),
    "missing teacher recipe": ("smoke", _set("teacher.finetune"),
                               ["teacher.finetune: required key missing; allowed: a mapping (teacher.mode is 'train')"]),
    "pipeline key": ("fmnist", _set("students.g2sd.teacher", "x.safetensors"),
                     ["students.g2sd.teacher: set by the pipeline (got 'x.safetensors')"]),
}


@pytest.mark.parametrize("probe", PROBES)
def test_probe_fails_with_path_value_and_allowed(probe):
    profile, mutate, expected = PROBES[probe]
    params = load_profile(profile)
    mutate(params)
    message = _failure(params, source=f"{profile}.yaml")
    assert message.startswith(f"invalid configuration in {profile}.yaml (")
    for text in expected:
        assert text in message, message
    assert "pydantic" not in message and "errors.pydantic.dev" not in message


def test_all_problems_in_one_error():
    params = load_profile("fmnist")
    params["epcohs"] = 1
    params["data"]["train_subest"] = 1
    params["students"]["common"]["train"]["epcohs"] = 1  # shared by 6 runs: reported once
    message = _failure(params)
    assert "(3 problems)" in message and message.count("students.common.train.epcohs") == 1


def test_yaml_numbers_pass_as_written():
    params = load_profile("smoke")
    params["students"]["common"]["train"].update(yaml.safe_load("{blr: 1.0e-3, min_lr: 0, warmup_epochs: 1, betas: [0, 0.5]}"))
    validate_params(params)


def test_partial_params_check_present_sections_only():
    params = load_profile("smoke")
    part = {"data": params["data"], "students": params["students"], "seeds": params["seeds"]}
    assert validate_params(part, partial=True) is part
    assert "teacher: required key missing" in _failure(part)
    part["data"] = dict(part["data"], val_subset="all")
    assert "data.val_subset: wrong type (got 'all')" in _failure(part, partial=True)


def test_stage_configs_need_their_kind_keys():
    params = load_profile("smoke")
    gd = stage_config(params, "pretrain", "gd")
    del gd["teacher"]
    with pytest.raises(ConfigError, match=r"teacher: required key missing; allowed: a string"):
        validate_stage(gd)
    ft = stage_config(params, "students", "gd_only", seed=0)
    ft["task"] = {"loss_type": "g2sd"}  # an sd option on a finetune stage
    with pytest.raises(ConfigError, match=r"task\.loss_type: unknown key \(got 'g2sd'\); allowed: layer_decay"):
        validate_stage(ft)
    del ft["model"]
    with pytest.raises(ConfigError, match=r"model: required key missing"):
        validate_stage(ft)
    with pytest.raises(ConfigError, match=r"kind: required key missing; allowed: one of mae \| gd"):
        validate_stage({"model": "vit_smokesmall_patch7"})


def test_dense_stage_configs_checked():
    params = load_profile("smoke")
    cfg = dense_stage_config(params, "segmentation", "g2sd", seed=0)
    bad = copy.deepcopy(cfg)
    bad["head"]["chanels"] = 8
    bad["task"]["tau"] = 1.0  # a distill option in the task options
    with pytest.raises(ConfigError) as info:
        validate_stage(bad)
    assert "head.chanels: unknown key (got 8); did you mean 'channels'?" in str(info.value)
    assert "task.tau: unknown key (got 1.0); allowed: aux_weight, layer_decay" in str(info.value)
    del cfg["teacher"]
    with pytest.raises(ConfigError, match=r"invalid dense stage configuration .*\n.*teacher: required key missing; "
                                          r"allowed: the dense teacher's checkpoint"):
        validate_stage(cfg)


def test_stage_time_checks():
    check_num_classes(10, 10, "fmnist")
    with pytest.raises(ConfigError) as info:
        check_num_classes(1000, 10, "fmnist", "runs/teacher/classifier.safetensors")
    message = str(info.value)
    assert "runs/teacher/classifier.safetensors: class counts differ" in message
    assert "{'teacher': 1000, 'student': 10}" in message and "10 classes for teacher and student" in message
