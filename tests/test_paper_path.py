"""The `paper` profile's code path, shrunk: a tiny ImageFolder and tiny checkpoints in the official
MAE layouts served from a file:// URL, through the same teacher-download, GD and SD code."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from g2sd_lib.pipeline import download
from g2sd_lib.checkpoints import CheckpointError
from g2sd_lib.pipeline.config import stage_config
from g2sd_lib.models import create_classifier, create_mae
from g2sd_lib.pipeline.profiles import load_profile
from g2sd_lib.pipeline.stages import launch
from g2sd_lib.pipeline.teacher import obtain_teacher

TINY = {"img_size": 32, "in_chans": 3}


@pytest.fixture
def imagenet(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for split, n in (("train", 8), ("val", 2)):
        for c in ("n01440764", "n01443537", "n01484850"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / split / c / f"{i}.JPEG")
    return root


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A directory laid out like dl.fbaipublicfiles.com/mae with tiny files in the official layouts."""
    srv = tmp_path / "mirror"
    srv.mkdir()
    torch.manual_seed(0)
    mae = create_mae("mae_vit_smokebase_patch8_dec32d2b", **TINY)
    torch.save({"model": mae.state_dict(), "epoch": 1599}, srv / "mae_pretrain_vit_base_full.pth")
    torch.save({"model": mae.encoder_state_dict()}, srv / "mae_pretrain_vit_base.pth")
    clf = create_classifier("vit_smokebase_patch8", "avg", num_classes=1000, **TINY)
    torch.save({"model": clf.state_dict()}, srv / "mae_finetuned_vit_base.pth")
    table = {k: dict(v) for k, v in download.OFFICIAL_CHECKPOINTS.items()}
    for name in ("mae_finetuned_vit_base.pth", "mae_pretrain_vit_base.pth"):  # the real files' md5s differ
        table[name]["md5_prefix"] = hashlib.md5((srv / name).read_bytes()).hexdigest()[:6]
    monkeypatch.setattr(download, "OFFICIAL_CHECKPOINTS", table)
    return srv


def _tiny_paper_params(imagenet, mirror, tmp_path):
    p = load_profile("paper")
    p["nproc"] = 1
    p["data"].update(root=str(imagenet), input_size=32, eval_batch_size=4, num_workers=0)
    p["teacher"]["download"].update(base_url=mirror.as_uri(), cache_dir=str(tmp_path / "checkpoints"))
    small = {"model_kwargs": dict(TINY), "train": {"epochs": 1, "batch_size": 4, "accum_steps": 1, "amp": "none",
                                                   "warmup_epochs": 0, "progress": False}}
    for group in ("pretrain", "students"):
        p[group]["common"] = {**p[group]["common"], "model_kwargs": dict(TINY),
                              "train": {**p[group]["common"]["train"], **small["train"]}}
    p["pretrain"]["gd"]["model"] = "mae_vit_smokesmall_patch8_dec16d1b"
    p["pretrain"]["gd"]["task"]["target_block"] = 1
    p["students"]["common"]["model"] = "vit_smokesmall_patch8"
    return p


@pytest.mark.slow
def test_download_teacher_then_gd_then_sd_on_imagenet_layout(imagenet, mirror, tmp_path):
    params = _tiny_paper_params(imagenet, mirror, tmp_path)
    work = tmp_path / "runs" / "paper"  # the profile's run directory
    summary = obtain_teacher(params, work)
    assert summary["gd"]["kind"] == "mae-full" and summary["sd"]["kind"] == "mae-finetuned"
    record = json.loads((tmp_path / "checkpoints" / "hashes.json").read_text())
    assert set(record) == {"mae_pretrain_vit_base_full.pth", "mae_finetuned_vit_base.pth"}  # sha256 recorded

    gd = launch(stage_config(params, "pretrain", "gd", work), 1)
    assert gd[-1]["train_loss"] > 0 and (work / "pretrain/gd/model.safetensors").exists()
    sd = launch(stage_config(params, "students", "g2sd", work, seed=0), 1)
    assert 0.0 <= sd[-1]["val_top1"] <= 1.0
    assert (work / "students/g2sd/seed0/model.safetensors").exists()


def test_download_mode_refuses_encoder_only_gd_teacher(imagenet, mirror, tmp_path):
    params = _tiny_paper_params(imagenet, mirror, tmp_path)
    params["teacher"]["download"]["gd"] = "mae_pretrain_vit_base.pth"  # the classic mistake (G2SD issue #7)
    with pytest.raises(CheckpointError, match="mae_pretrain_vit_base_full.pth"):
        obtain_teacher(params, tmp_path / "work")
