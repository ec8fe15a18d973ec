"""The one stage runner refuses bad configurations before any work: schema errors, a teacher whose
classes or decoder do not fit the stage."""

import pytest

from g2sd_lib.checkpoints import save_model
from g2sd_lib.errors import InputError
from g2sd_lib.models import create_classifier, create_mae
from g2sd_lib.pipeline.schema import ConfigError
from g2sd_lib.pipeline.stages import run_stage


def _cfg(tmp_path, kind, **extra):
    cfg = {"kind": kind, "model": "vit_smokesmall_patch7", "out_dir": str(tmp_path / "run"),
           "data": {"dataset": "fmnist", "val_size": 64, "train_subset": 64},
           "train": {"epochs": 1, "batch_size": 16, "blr": 1e-3, "progress": False}}
    return {**cfg, **extra}


def test_a_typo_stops_the_stage_before_any_work(tmp_path):
    cfg = _cfg(tmp_path, "finetune")
    cfg["train"]["epcohs"] = 3
    with pytest.raises(ConfigError, match=r"train\.epcohs.*did you mean 'epochs'"):
        run_stage(cfg)
    assert not (tmp_path / "run").exists()


def test_a_1000_class_teacher_for_a_10_class_student_is_refused_before_training(tmp_path):
    teacher = tmp_path / "imagenet_teacher.safetensors"
    save_model(create_classifier("vit_smokebase_patch7", "avg", 1000), teacher)
    cfg = _cfg(tmp_path, "sd", teacher=str(teacher), task={"loss_type": "g2sd"})
    with pytest.raises(ConfigError, match=r"imagenet_teacher\.safetensors: class counts differ.*1000.*10"):
        run_stage(cfg)
    assert not (tmp_path / "run" / "history.json").exists()


def test_a_target_block_beyond_the_teachers_decoder_is_refused(tmp_path):
    teacher = tmp_path / "mae.safetensors"
    save_model(create_mae("mae_vit_smokebase_patch7_dec16d1b"), teacher)
    cfg = _cfg(tmp_path, "gd", model="mae_vit_smokesmall_patch7_dec16d1b", teacher=str(teacher),
               task={"mask_ratio": 0.75, "target_block": 4})
    with pytest.raises(InputError, match=r"target_block 4 is not a block of the teacher's decoder: choose one of 1\.\.1"):
        run_stage(cfg)
