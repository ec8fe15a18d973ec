"""Tests of g2sd_lib.checkpoints on tiny models written in every official key layout."""

import argparse
import ast
import errno
import fractions
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from g2sd_lib import checkpoints as ck
from g2sd_lib.checkpoints import files as ck_files
from g2sd_lib.errors import OutputError
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


def test_any_size_is_described_and_built(tmp_path):
    odd = _seeded(MaskedAutoencoderViT, img_size=28, patch_size=7, in_chans=1, embed_dim=40, depth=3, num_heads=1,
                  decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1)
    info = ck.describe(odd.state_dict(), source="odd.pth")
    assert info.arch == {"builder": "mae", "name": "mae_vit_w40d3h1_patch7_dec32d1b", "img_size": 28, "in_chans": 1}
    assert info.dims["num_heads"] == 1 and "assumed: one head" in info.dims["heads_from"]
    model, _ = ck.load_model(_write(tmp_path, "odd", odd.state_dict()), "gd-teacher")
    _assert_same_outputs(model, odd)
    wide = MaskedAutoencoderViT(img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=1, num_heads=2,
                                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1)
    info = ck.describe(wide.state_dict())
    assert info.arch["name"] == "mae_vit_w128d1h2_patch7_dec32d1b" and "head width 64" in info.dims["heads_from"]
    assert ck.describe(LAYOUTS["mae-full"][1]).dims["heads_from"] == "size smokebase"  # named sizes stay aliases


@pytest.mark.parametrize("role", ["gd-student", "sd-teacher"])
def test_any_size_student_and_classifier_fill_their_roles(tmp_path, role):
    size = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=40, depth=3, num_heads=1)
    if role == "gd-student":
        source = _seeded(G2SDStudent, teacher_decoder_dim=24, decoder_embed_dim=32, decoder_depth=1,
                         decoder_num_heads=1, **size)
        name = "mae_vit_w40d3h1_patch7_dec32d1b"
    else:
        source = _seeded(DistilledViT, num_classes=10, **size)
        name = "vit_w40d3h1_patch7"
    model, info = ck.load_model(_write(tmp_path, role, source.state_dict()), role)
    assert info.arch["name"] == name and type(model) is type(source)
    _assert_same_outputs(model, source)


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
                                    "safetensors-truncated", "random-pickle-bytes"])
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
    elif damage == "random-pickle-bytes":  # 0x80 is how a pickle starts, but nothing after it is one
        path.write_bytes(b"\x80" + np.random.default_rng(0).bytes(300))
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
    # only a real pickle with a disallowed class is refused as code; damaged bytes are called corrupt; no
    # message advises turning the safe loader off
    assert ("refused: it would run code (GLOBAL fractions.Fraction)" in str(err.value)) == (damage == "unsafe")
    assert "weights_only=False" not in str(err.value)
    if damage in ("truncated", "random-pickle-bytes"):
        assert "corrupt" in str(err.value)
    if damage != "missing":
        assert err.value.__cause__ is not None or damage in ("empty", "text", "truncated", "directory", "no-tensors")


class _Bomb:
    """Unpickling it would create ``marker``: a checkpoint that runs code when loaded unsafely."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("layout", ["torch.save", "plain pickle"])
def test_a_pickle_bomb_is_refused_as_code_and_runs_nothing(tmp_path, layout, capsys):
    """Read as teacher, init or by `g2sd inspect-checkpoint`, a file whose unpickling would call a
    function is named as such (the function's GLOBAL), never with advice to turn the safe loader off."""
    import pickle

    from g2sd_lib.cli import main
    marker = tmp_path / "code-ran"
    path = tmp_path / "bomb.pth"
    if layout == "torch.save":
        torch.save({"model": LAYOUTS["mae-full"][1], "extra": _Bomb(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": _Bomb(marker)}, protocol=2))
    assert not marker.exists()
    with pytest.raises(ck.CheckpointError) as err:
        ck.read_state_dict(path)
    model = create_classifier("vit_smokesmall_patch7", "avg", 10)
    with pytest.raises(ck.CheckpointError, match="refused: it would run code"):
        ck.load_encoder(model, path)
    assert main(["inspect-checkpoint", str(path)]) == 2
    shown = capsys.readouterr().err
    for message in (str(err.value), shown):
        assert f"{path} refused: it would run code (GLOBAL {os.mkdir.__module__}.mkdir)" in message
        assert "weights_only" not in message and "corrupt" not in message
    assert not marker.exists()  # no code ran


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


def test_the_same_weights_save_to_the_same_bytes(tmp_path):
    """A pinned sha256 must survive saving the same weights again (rebundling a teacher): safetensors
    writes its header's keys in an order that varies between calls, which alone changed the digest."""
    source = LAYOUTS["gd-student"][0]
    digests = {ck.save_model(source, tmp_path / f"s{i}.safetensors")["sha256"] for i in range(20)}
    assert len(digests) == 1
    assert ck.load_saved_model(tmp_path / "s0.safetensors").arch == source.arch  # the rewritten header still reads


def test_sha256_mismatch_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    ck.save_model(LAYOUTS["mae-full"][0], path)
    with pytest.raises(ck.CheckpointError, match="sha256") as err:
        ck.load_saved_model(path, expected_sha256="0" * 64)
    assert f"`dvc checkout {path}` for a pipeline output, `git checkout -- {path}`" in str(err.value)  # restores it
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": "f" * 64}))
    with pytest.raises(ck.CheckpointError, match="sidecar"):
        ck.load_saved_model(path)
    sidecar.unlink()
    with pytest.raises(ck.CheckpointError, match="no sidecar"):
        ck.load_saved_model(path)


def test_a_missing_sidecar_is_a_warning_naming_what_is_skipped(tmp_path):
    path = tmp_path / "m.safetensors"
    ck.save_model(LAYOUTS["mae-full"][0], path)
    path.with_suffix(".json").unlink()
    with pytest.warns(UserWarning, match=rf"{path} has no sidecar m.json: its sha256 is not checked and its "
                      "architecture is from its header"):
        model, _ = ck.load_model(path, "gd-teacher")
    _assert_same_outputs(model, LAYOUTS["mae-full"][0])


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


# ------------------------------------------------------------------------------------ every classifier kind
def _nkd_student():
    """The SD student as specific distillation with NKD leaves it: predicting with the cls head alone."""
    from g2sd_lib.tasks import SpecificDistillation

    student = _seeded(create_classifier, "vit_smokesmall_patch7", kind="distilled", num_classes=10)
    SpecificDistillation(LAYOUTS["mae-finetuned"][0], student, loss_type="nkd")
    return student


CLASSIFIERS = {
    "avg (teacher)": lambda: LAYOUTS["mae-finetuned"][0],
    "distilled (g2sd)": lambda: LAYOUTS["sd-student"][0],
    "distilled (nkd)": _nkd_student,
    "token": lambda: _seeded(create_classifier, "vit_smokebase_patch7", kind="token", num_classes=10),
    "on an mae name": lambda: _seeded(create_classifier, TEACHER, kind="distilled", num_classes=10),
}


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_every_classifier_kind_saves_and_reloads_to_the_same_logits(tmp_path, kind):
    source = CLASSIFIERS[kind]()
    path = tmp_path / "model.safetensors"
    ck.save_model(source, path)
    _assert_same_outputs(ck.load_saved_model(path), source)
    teacher, _ = ck.load_model(path, "sd-teacher")  # the role loader rebuilds from the sidecar too
    _assert_same_outputs(teacher, source)


def test_nkd_student_predicts_with_its_cls_head_after_reloading(tmp_path):
    source = _nkd_student().eval()
    ck.save_model(source, tmp_path / "nkd.safetensors")
    loaded = ck.load_saved_model(tmp_path / "nkd.safetensors").eval()
    assert loaded.average_heads is False and loaded.arch["average_heads"] is False
    with torch.no_grad():
        cls, dist = loaded.forward_heads(loaded.forward_features(IMGS))
        assert not torch.allclose(cls, dist)
        torch.testing.assert_close(loaded(IMGS), cls, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ one registry, small modules
def test_load_saved_model_rebuilds_dense_models_through_the_one_registry(tmp_path):
    from g2sd_lib import dense
    from g2sd_lib.dense import ViTSegmenter

    seg = _seeded(ViTSegmenter, "vit_smokesmall_patch7", img_size=56).eval()
    ck.save_model(seg, tmp_path / "seg.safetensors")
    loaded = ck.load_saved_model(tmp_path / "seg.safetensors").eval()
    x = torch.randn(1, 1, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], seg(x)["logits"], rtol=0, atol=0)
    assert dense.load_dense_model is ck.load_saved_model
    dense_init = Path(dense.__file__).read_text()
    assert "build_dense_model" not in dense_init and "import _" not in dense_init and ", _" not in dense_init


def test_checkpoint_modules_are_small_and_split_by_job():
    package = Path(ck.__file__).parent
    modules = {p.stem: p.read_text() for p in package.glob("*.py")}
    assert {"files", "inspection", "roles", "loading"} <= set(modules)
    for name, text in modules.items():
        assert len(text.splitlines()) < 300, name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{name}.{node.name}"
    for public in ("load_model", "load_saved_model", "read_state_dict", "save_model", "save_training_state",
                   "load_training_state", "load_encoder", "describe", "check_role", "CheckpointError",
                   "CheckpointInfo", "load_strict"):
        assert hasattr(ck, public), public


# ------------------------------------------------------------------------------------ checked sidecars
def _saved(tmp_path, name="m", source=None):
    path = tmp_path / f"{name}.safetensors"
    ck.save_model(source or LAYOUTS["mae-full"][0], path)
    return path


def _edit_sidecar(path, **arch):
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "arch": {**meta["arch"], **arch}}))


LOADERS = {"load_model": lambda p: ck.load_model(p, "gd-teacher"), "load_saved_model": ck.load_saved_model,
           "read_state_dict": ck.read_state_dict, "load_encoder": lambda p: ck.load_encoder(
               create_classifier("vit_smokebase_patch7", kind="distilled", num_classes=10), p)}


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_verifies_the_sidecar_sha256(tmp_path, loader):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one weight changes; the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match=rf"{path.name} has sha256 .* but its sidecar says"):
        LOADERS[loader](path)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("edit, problem", [
    ({"name": "mae_vit_smokesmall_patch7_dec32d2b"}, "embed_dim: it says 16, the tensors say 32"),
    ({"name": "mae_vit_smokebase_patch7_dec32d2b", "depth": 5}, "depth: it says 5, the tensors say 2"),
    ({"name": "mae_vit_smokebase_patch7_dec32d1b"}, "decoder_depth: it says 1, the tensors say 2"),
    ({"img_size": 56}, "img_size: it says 56, the tensors say 28"),
    ({"num_heads": 3}, "sizes: its width 32 is not divisible by its 3 heads"),  # the models' own shape check
    ({"decoder_num_heads": 3}, "sizes: its decoder width 32 is not divisible by its 3 heads"),
    ({"num_heads": 8}, "num_heads: it says 8, the weights file's own header says 2"),  # divides 32: the header decides
])
def test_every_loader_refuses_a_sidecar_that_disagrees_with_the_tensors(tmp_path, loader, edit, problem):
    path = _saved(tmp_path)
    _edit_sidecar(path, **edit)
    with pytest.raises(ck.CheckpointError) as err:
        LOADERS[loader](path)
    msg = str(err.value)
    assert str(path) in msg and "sidecar" in msg and problem in msg


def test_sidecar_of_another_kind_and_files_without_a_header(tmp_path):
    path = _saved(tmp_path)
    _edit_sidecar(path, builder="classifier", name="vit_smokebase_patch7", kind="avg", num_classes=10)
    with pytest.raises(ck.CheckpointError, match="kind: it says mae-finetuned, the tensors are mae-full"):
        ck.read_state_dict(path)
    # files saved before the header recorded the architecture (the bundled teachers) still load
    for bundled in sorted(Path(__file__).parents[1].glob("teachers/*.safetensors")):
        assert ck.load_saved_model(bundled) is not None
    with pytest.raises(ck.CheckpointError, match="its width 32 is not divisible by its 3 heads"):
        ck.describe(LAYOUTS["mae-full"][1], {"arch": {"builder": "mae", "name": TEACHER, "num_heads": 3}})


def test_header_alone_rebuilds_a_file_without_its_sidecar(tmp_path):
    source = _seeded(create_mae, TEACHER, num_heads=4)  # not the size's 2 heads: only the header knows
    path = _saved(tmp_path, source=source)
    path.with_suffix(".json").unlink()
    model, info = ck.load_model(path, "gd-teacher")
    assert info.arch == source.arch and info.dims["heads_from"] == "recorded with the weights"
    _assert_same_outputs(model, source)


# ------------------------------------------------------------------------------------ writing
def _expected_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_files_get_normal_permissions(tmp_path):
    path = _saved(tmp_path)
    ck.save_training_state(tmp_path / "last.pt", epoch=1)
    for p in (path, path.with_suffix(".json"), tmp_path / "last.pt"):
        assert stat.S_IMODE(p.stat().st_mode) == _expected_mode(), p


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_training_state_says_delete_to_restart(tmp_path, damage):
    path = tmp_path / "last.pt"
    ck.save_training_state(path, epoch=1)
    data = {"truncated": path.read_bytes()[:100], "garbage": b"\x80" + bytes(range(256)), "empty": b""}[damage]
    path.write_bytes(data)
    with pytest.raises(ck.CheckpointError, match=rf"training state: {path} is .*; delete it to restart the run"):
        ck.load_training_state(path)


def _failing_writer(error):
    def write(path, data):
        path.write_bytes(data[: len(data) // 2])  # a partial file, as a full disk leaves it
        raise OSError(error, os.strerror(error), str(path))
    return write


@pytest.mark.parametrize("save", ["model", "training-state"])
def test_disk_full_names_the_path_and_leaves_no_partial_file(tmp_path, monkeypatch, save):
    previous = _saved(tmp_path, "model")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(ck_files, "_write_file", _failing_writer(errno.ENOSPC))
    target = previous if save == "model" else tmp_path / "last.pt"
    with pytest.raises(OSError, match="disk full") as err:
        if save == "model":
            ck.save_model(LAYOUTS["mae-full"][0], previous)
        else:
            ck.save_training_state(target, epoch=2)
    assert isinstance(err.value, OutputError) and "no space left on device" in str(err.value)
    assert str(target) in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files intact, no temp files


def test_read_only_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(ck_files, "_write_file", _failing_writer(errno.EACCES))
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'out'}.*Make {tmp_path / 'out'} writable"):
        ck.save_model(LAYOUTS["mae-full"][0], tmp_path / "out" / "m.safetensors")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_encoder_of_another_width_is_refused_in_a_few_lines():
    from g2sd_lib.checkpoints import CheckpointError, load_encoder
    from g2sd_lib.models import create_classifier, create_mae
    student = create_classifier("vit_smokesmall_patch7", "avg", 10)
    with pytest.raises(CheckpointError, match=r"cls_token \(1, 1, 32\) vs \(1, 1, 16\);.*\.\.\. \d+ more of \d+ encoder") as e:
        load_encoder(student, create_mae("mae_vit_smokebase_patch7_dec32d2b").state_dict())
    assert len(str(e.value)) < 400
