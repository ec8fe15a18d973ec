"""Tests of g2sd_lib.checkpoints on tiny models written in every official key layout."""

import argparse
import fractions
import json

import numpy as np
import pytest
import torch

from g2sd_lib import checkpoints as ck
from g2sd_lib.models import DistilledViT, G2SDStudent, MaskedAutoencoderViT, create_classifier, create_mae, \
    create_student

TEACHER = "mae_vit_smokebase_patch7_dec32d2b"  # 32 wide, 2 blocks, 28 x 28 x 1 images, 4 x 4 patches
STUDENT = "mae_vit_smokesmall_patch7_dec16d2b"


def _seeded(factory, *args, **kwargs):
    torch.manual_seed(0)
    return factory(*args, **kwargs)


def _layouts():
    """name -> (source model, official state dict, expected kind, expected inferred arch)."""
    mae = _seeded(create_mae, TEACHER)
    student = _seeded(create_student, STUDENT, teacher_decoder_dim=32, teacher_embed_dim=32, encoder_branch=True)
    student_nb = _seeded(create_student, STUDENT, teacher_decoder_dim=32)
    finetuned = _seeded(create_classifier, TEACHER, kind="avg", num_classes=10)
    sd_student = _seeded(create_classifier, "vit_smokesmall_patch7", kind="distilled", num_classes=10)
    vit = "vit_smokebase_patch7"
    return {
        "mae-encoder": (mae, mae.encoder_state_dict(), "mae-encoder",
                        {"builder": "classifier", "name": vit, "kind": "token", "num_classes": 0}),
        "mae-full": (mae, mae.state_dict(), "mae-full", {"builder": "mae", "name": TEACHER}),
        "mae-finetuned": (finetuned, finetuned.state_dict(), "mae-finetuned",
                          {"builder": "classifier", "name": vit, "kind": "avg", "num_classes": 10}),
        "gd-student": (student, student.state_dict(), "gd-student",
                       {"builder": "student", "name": STUDENT, "teacher_decoder_dim": 32, "teacher_embed_dim": 32,
                        "encoder_branch": True}),
        "gd-student-no-encoder-branch": (student_nb, student_nb.state_dict(), "gd-student",
                                         {"builder": "student", "name": STUDENT, "teacher_decoder_dim": 32,
                                          "teacher_embed_dim": None, "encoder_branch": False}),
        "sd-student": (sd_student, sd_student.state_dict(), "sd-student",
                       {"builder": "classifier", "name": "vit_smokesmall_patch7", "kind": "distilled",
                        "num_classes": 10}),
    }


LAYOUTS = _layouts()
IMGS = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
NOISE = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))


def _write(tmp_path, name, state_dict, **extra):
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state_dict, **extra}, path)
    return path


def _outputs(model):
    """Deterministic outputs of any of our models on IMGS, for equality checks."""
    model.eval()
    with torch.no_grad():
        if isinstance(model, G2SDStudent):
            out = model.forward_features(IMGS, 0.75, NOISE)
            return [out["decoder"]] + ([out["encoder"]] if out["encoder"] is not None else [])
        if isinstance(model, MaskedAutoencoderViT):
            loss, pred, mask = model(IMGS, noise=NOISE)
            return [loss, pred, mask]
        return [model(IMGS)]


def _assert_same_outputs(a, b):
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_describe_official_layouts(tmp_path, layout):
    model, state_dict, kind, arch = LAYOUTS[layout]
    path = _write(tmp_path, layout, state_dict)
    loaded, meta = ck.read_state_dict(path)
    assert meta == {} and loaded.keys() == state_dict.keys()
    info = ck.describe(loaded)
    assert info.kind == kind
    assert info.arch == arch
    assert info.num_tensors == len(state_dict)
    assert info.num_params == sum(v.numel() for v in state_dict.values())
    assert info.missing_for["sd-init"] == []


@pytest.mark.parametrize("layout, role", [("mae-full", "gd-teacher"), ("mae-finetuned", "sd-teacher"),
                                          ("gd-student", "gd-student"), ("gd-student-no-encoder-branch", "gd-student"),
                                          ("sd-student", "sd-teacher")])
def test_load_model_strict_and_same_outputs(tmp_path, layout, role):
    source, state_dict, _, _ = LAYOUTS[layout]
    model, info = ck.load_model(_write(tmp_path, layout, state_dict), role)
    assert type(model) is type(source)
    assert model.arch == info.arch
    _assert_same_outputs(model, source)


def test_gd_student_encoder_branch_follows_keys(tmp_path):
    with_branch, _ = ck.load_model(_write(tmp_path, "a", LAYOUTS["gd-student"][1]), "gd-student")
    without, _ = ck.load_model(_write(tmp_path, "b", LAYOUTS["gd-student-no-encoder-branch"][1]), "gd-student")
    assert with_branch.encoderfeature_pred is not None and without.encoderfeature_pred is None


def test_token_classifier_as_sd_teacher(tmp_path):
    encoder = LAYOUTS["mae-encoder"][1]
    head = {"head.weight": torch.randn(10, 32), "head.bias": torch.zeros(10)}
    model, info = ck.load_model(_write(tmp_path, "vit", {**encoder, **head}), "sd-teacher")
    assert info.kind == "classifier" and info.arch["kind"] == "token" and model.num_classes == 10
    torch.testing.assert_close(model.state_dict()["blocks.1.mlp.fc2.weight"], encoder["blocks.1.mlp.fc2.weight"])


def test_encoder_only_refused_as_gd_teacher(tmp_path):
    path = _write(tmp_path, "mae_pretrain_vit_base", LAYOUTS["mae-encoder"][1])
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_model(path, "gd-teacher")
    msg = str(err.value)
    for needle in ("mask_token", "decoder_embed", "decoder_pos_embed", "decoder_blocks", "decoder_norm",
                   "decoder_pred", "strict=False", "mae_pretrain_vit_base_full.pth", str(path)):
        assert needle in msg
    assert "\n" not in msg


def test_pretrain_refused_as_sd_teacher():
    for layout in ("mae-encoder", "mae-full"):
        with pytest.raises(ck.CheckpointError, match="mae_finetuned_vit_base.pth"):
            ck.check_role(LAYOUTS[layout][1], "sd-teacher")


def test_gd_student_refused_as_gd_teacher():
    with pytest.raises(ck.CheckpointError, match=r"\(GD\) teacher.*student.*mae_pretrain_vit_base_full.pth"):
        ck.check_role(LAYOUTS["gd-student"][1], "gd-teacher")
    with pytest.raises(ck.CheckpointError, match="decoderfeature_pred"):
        ck.check_role(LAYOUTS["mae-full"][1], "gd-student")
    assert ck.check_role(LAYOUTS["sd-student"][1], "sd-init").kind == "sd-student"


def test_unknown_role_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown role"):
        ck.check_role(LAYOUTS["mae-full"][1], "teacher")


def test_unknown_architecture_names_what_was_inferred():
    odd = MaskedAutoencoderViT(img_size=28, patch_size=7, in_chans=1, embed_dim=40, depth=3, num_heads=2,
                               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1)
    with pytest.raises(ck.CheckpointError, match="unknown architecture.*embed_dim 40, depth 3"):
        ck.describe(odd.state_dict(), source="odd.pth")


def test_image_size_override_is_inferred(tmp_path):
    source = create_mae(TEACHER, img_size=56)
    model, info = ck.load_model(_write(tmp_path, "big", source.state_dict()), "gd-teacher")
    assert info.arch == {"builder": "mae", "name": TEACHER, "img_size": 56}
    assert model.num_patches == 64


def test_wrappers_and_ddp_prefix(tmp_path):
    sd = LAYOUTS["mae-full"][1]
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    assert ck.read_state_dict(path)[0].keys() == sd.keys()
    # official training checkpoints also hold epoch and the argparse Namespace
    path = _write(tmp_path, "official", sd, epoch=19, args=argparse.Namespace(model="mae", lr=1e-3))
    assert ck.read_state_dict(path)[0].keys() == sd.keys()


@pytest.mark.parametrize("damage", ["missing", "empty", "text", "truncated", "directory", "unsafe", "no-tensors",
                                    "safetensors-truncated"])
def test_unreadable_files(tmp_path, damage):
    good = _write(tmp_path, "good", LAYOUTS["mae-full"][1])
    path = tmp_path / "bad.pth"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("this is not a checkpoint\n")
    elif damage == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "directory":
        path.mkdir()
    elif damage == "unsafe":
        torch.save({"model": LAYOUTS["mae-full"][1], "x": fractions.Fraction(1, 3)}, path)
    elif damage == "no-tensors":
        torch.save({"model": {"epoch": 3}}, path)
    elif damage == "safetensors-truncated":
        ck.save_model(LAYOUTS["mae-full"][0], tmp_path / "m.safetensors")
        path = tmp_path / "bad.safetensors"
        data = (tmp_path / "m.safetensors").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="bad") as err:
        ck.read_state_dict(path)
    assert "\n" not in str(err.value)
    if damage != "missing":
        assert err.value.__cause__ is not None or damage in ("empty", "text", "truncated", "directory", "no-tensors")


def test_save_and_load_saved_model(tmp_path):
    source = LAYOUTS["gd-student"][0]
    path = tmp_path / "out" / "student.safetensors"
    meta = ck.save_model(source, path, extra={"epoch": 3})
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == meta
    assert sidecar["arch"] == source.arch and sidecar["kind"] == "gd-student" and sidecar["epoch"] == 3
    assert sidecar["num_params"] == sum(p.numel() for p in source.parameters())
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.json", "student.safetensors"]  # no temp files
    loaded = ck.load_saved_model(path, expected_sha256=meta["sha256"])
    _assert_same_outputs(loaded, source)
    # describe() uses the sidecar's arch, and load_model accepts our own files too
    model, info = ck.load_model(path, "gd-student")
    assert info.arch == source.arch
    _assert_same_outputs(model, source)


def test_sha256_mismatch_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    ck.save_model(LAYOUTS["mae-full"][0], path)
    with pytest.raises(ck.CheckpointError, match="sha256"):
        ck.load_saved_model(path, expected_sha256="0" * 64)
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": "f" * 64}))
    with pytest.raises(ck.CheckpointError, match="sidecar"):
        ck.load_saved_model(path)
    sidecar.unlink()
    with pytest.raises(ck.CheckpointError, match="no sidecar"):
        ck.load_saved_model(path)


def test_save_model_argument_checks(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        ck.save_model(LAYOUTS["mae-full"][0], tmp_path / "m.pth")
    meta = ck.save_model(LAYOUTS["mae-full"][0], tmp_path / "m.safetensors", extra={"kind": "x", "sha256": "y"})
    assert meta["kind"] == "mae-full" and meta["sha256"] != "y"


def test_to_official_layout_round_trip(tmp_path):
    source = LAYOUTS["sd-student"][0]
    path = tmp_path / "official.pth"
    torch.save(ck.to_official_layout(source.state_dict()), path)
    assert torch.load(path, weights_only=True).keys() == {"model"}
    model, info = ck.load_model(path, "sd-teacher")
    assert isinstance(model, DistilledViT) and info.kind == "sd-student"
    _assert_same_outputs(model, source)


def test_training_state_round_trip(tmp_path):
    model = create_classifier("vit_smokesmall_patch7", kind="distilled", num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(IMGS)[0].sum().backward()
    opt.step()
    path = tmp_path / "state.pt"
    ck.save_training_state(path, model=model.state_dict(), optimizer=opt.state_dict(), epoch=4, step=40,
                           config={"lr": 1e-3, "name": "vit_smokesmall_patch7"})
    state = ck.load_training_state(path)
    assert state["epoch"] == 4 and state["config"]["name"] == "vit_smokesmall_patch7"
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    assert ck.read_state_dict(path)[0].keys() == model.state_dict().keys()  # 'model' is unwrapped

def test_training_state_refuses_what_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['config'\]\['lr'\].*numpy"):
        ck.save_training_state(tmp_path / "s.pt", config={"lr": np.float64(1e-3)})
    assert not list(tmp_path.iterdir())


def test_load_encoder_into_distilled_classifier():
    mae_sd = LAYOUTS["mae-full"][1]
    model = create_classifier("vit_smokebase_patch7", kind="distilled", num_classes=10)
    head_dist = model.head_dist.weight.detach().clone()
    left = ck.load_encoder(model, mae_sd)
    own = model.state_dict()
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "norm.weight"):
        torch.testing.assert_close(own[k], mae_sd[k], rtol=0, atol=0)
    assert {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias", "dist_token"} <= set(left)
    assert not any(k.startswith(("blocks.", "norm.")) for k in left)
    assert 0 < model.head.weight.std() < 1e-4  # trunc-normal std 2e-5, as the official init
    assert torch.equal(model.head_dist.weight, head_dist)
    assert {"mask_token", "decoder_embed.weight", "decoder_pred.bias"} <= set(left.ignored)


def test_load_encoder_from_path_into_avg_classifier_skips_norm(tmp_path):
    path = _write(tmp_path, "enc", LAYOUTS["mae-encoder"][1])
    model = create_classifier("vit_smokebase_patch7", kind="avg", num_classes=10)
    left = ck.load_encoder(model, path)
    assert {"fc_norm.weight", "head.weight"} <= set(left) and "norm.weight" in left.ignored


def test_load_encoder_shape_mismatch():
    model = create_classifier("vit_smokebase_patch7", kind="distilled", num_classes=10, img_size=56)
    with pytest.raises(ck.CheckpointError, match=r"pos_embed \(1, 17, 32\) vs \(1, 65, 32\)"):
        ck.load_encoder(model, LAYOUTS["mae-encoder"][1])
    small = create_classifier("vit_smokesmall_patch7", kind="distilled", num_classes=10)
    with pytest.raises(ck.CheckpointError, match="missing"):
        ck.load_encoder(small, {k: v for k, v in LAYOUTS["mae-encoder"][1].items() if k != "cls_token"})
