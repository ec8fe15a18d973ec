"""Parameter groups and learning-rate schedule against the official recipes."""

import math

import pytest

from g2sd_lib.models import create_classifier, create_mae
from g2sd_lib.optim import layer_id, lr_at, param_groups, scaled_lr


def _group_of(groups, name):
    return next(g for g in groups if name in g["names"])


def test_sd_layer_decay_matches_official_param_groups_lrd():
    model = create_classifier("vit_smokesmall_patch7", "distilled", num_classes=10)  # depth 2
    groups = param_groups(model, 0.05, layer_decay=0.75, skip_model_list=True)
    n = 3  # depth + 1
    assert _group_of(groups, "cls_token")["lr_scale"] == pytest.approx(0.75**n)
    assert _group_of(groups, "patch_embed.proj.weight")["lr_scale"] == pytest.approx(0.75**n)
    assert _group_of(groups, "blocks.0.attn.qkv.weight")["lr_scale"] == pytest.approx(0.75 ** (n - 1))
    assert _group_of(groups, "blocks.1.mlp.fc1.weight")["lr_scale"] == pytest.approx(0.75 ** (n - 2))
    for top in ("dist_token", "head.weight", "head_dist.weight", "norm.weight"):
        assert _group_of(groups, top)["lr_scale"] == 1.0
    for no_wd in ("cls_token", "pos_embed", "dist_token", "blocks.0.norm1.weight", "head.bias"):
        assert _group_of(groups, no_wd)["weight_decay"] == 0.0
    assert _group_of(groups, "blocks.0.attn.qkv.weight")["weight_decay"] == 0.05
    assert layer_id("blocks.1.attn.qkv.weight", 3) == 2


def test_gd_groups_decay_tokens_but_not_biases_and_skip_frozen():
    model = create_mae("mae_vit_smokesmall_patch7_dec16d1b")
    groups = param_groups(model, 0.05)
    names = {n for g in groups for n in g["names"]}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names  # frozen sin-cos
    assert _group_of(groups, "cls_token")["weight_decay"] == 0.05  # timm add_weight_decay: 3-D, decayed
    assert _group_of(groups, "mask_token")["weight_decay"] == 0.05
    assert _group_of(groups, "decoder_embed.bias")["weight_decay"] == 0.0
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_schedule_warmup_cosine_and_scaling():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # official GD
    assert scaled_lr(1e-3, 1024) == pytest.approx(4e-3)  # official SD
    assert lr_at(0.0, 1.0, 0.0, 10, 100) == 0.0
    assert lr_at(5.0, 1.0, 0.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(10.0, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert lr_at(55.0, 1.0, 0.1, 10, 100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100.0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
