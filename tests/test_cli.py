"""Tests of the ``g2sd`` command line (``inspect-checkpoint``)."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from g2sd_lib import checkpoints as ck
from g2sd_lib.cli import format_count, main
from g2sd_lib.models import MaskedAutoencoderViT, create_mae

TEACHER = "mae_vit_smokebase_patch7_dec32d2b"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An encoder-only and a full MAE checkpoint in the official layout, plus our own safetensors."""
    root = tmp_path_factory.mktemp("ckpt")
    mae = create_mae(TEACHER)
    torch.save({"model": mae.encoder_state_dict()}, root / "encoder.pth")
    torch.save({"model": mae.state_dict()}, root / "full.pth")
    ck.save_model(mae, root / "ours.safetensors")
    (root / "notes.txt").write_text("not a checkpoint\n")
    return root, sum(p.numel() for p in mae.parameters()), sum(v.numel() for v in mae.encoder_state_dict().values())


def test_format_count():
    assert format_count(85_798_656) == "85.8 M"
    assert format_count(27_648) == "27.6 k"
    assert format_count(512) == "512"


def test_inspect_full(files, capsys):
    root, n_full, _ = files
    assert main(["inspect-checkpoint", str(root / "full.pth")]) == 0
    out = capsys.readouterr().out
    assert "mae-full" in out and TEACHER in out and format_count(n_full) in out
    assert "gd-teacher ok" in out and "sd-teacher no (missing head.*)" in out


def test_inspect_role_ok(files, capsys):
    root, _, n_encoder = files
    assert main(["inspect-checkpoint", str(root / "encoder.pth"), "--role", "sd-init"]) == 0
    out = capsys.readouterr().out
    assert "mae-encoder" in out and format_count(n_encoder) in out and "role sd-init: ok" in out


def test_inspect_wrong_role(files, capsys):
    root, _, _ = files
    assert main(["inspect-checkpoint", str(root / "encoder.pth"), "--role", "gd-teacher"]) == 1
    captured = capsys.readouterr()
    assert "role gd-teacher: refused" in captured.out
    err = captured.err.strip()
    assert "\n" not in err  # one paragraph
    assert "decoder_embed" in err and "mae_pretrain_vit_base_full.pth" in err and "strict=False" in err


def test_inspect_our_safetensors(files, capsys):
    root, n_full, _ = files
    assert main(["inspect-checkpoint", str(root / "ours.safetensors"), "--role", "gd-teacher"]) == 0
    out = capsys.readouterr().out
    assert "mae-full" in out and format_count(n_full) in out


@pytest.mark.parametrize("name", ["notes.txt", "missing.pth"])
def test_inspect_unreadable(files, capsys, name):
    root, _, _ = files
    assert main(["inspect-checkpoint", str(root / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert name in captured.err and "Traceback" not in captured.err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_console_script(files):
    root, _, _ = files
    script = Path(sys.executable).parent / "g2sd"
    result = subprocess.run([str(script), "inspect-checkpoint", str(root / "encoder.pth"), "--role", "gd-teacher"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "mae-encoder" in result.stdout
    assert "mae_pretrain_vit_base_full.pth" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m(files, capsys, monkeypatch):
    """``python -m g2sd_lib.cli`` (run in-process: a second interpreter would re-import torch)."""
    root, n_full, _ = files
    monkeypatch.setattr(sys, "argv", ["g2sd", "inspect-checkpoint", str(root / "full.pth")])
    monkeypatch.delitem(sys.modules, "g2sd_lib.cli")  # runpy warns when re-running an imported module
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("g2sd_lib.cli", run_name="__main__")
    assert exc.value.code == 0
    assert format_count(n_full) in capsys.readouterr().out


def test_inspect_unknown_kind(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(4, 4)}}, path)
    assert main(["inspect-checkpoint", str(path)]) == 0
    assert "kind         unknown" in capsys.readouterr().out
    assert main(["inspect-checkpoint", str(path), "--role", "sd-init"]) == 1
    assert "cls_token" in capsys.readouterr().err



def test_inspect_any_size_official_mae(tmp_path, capsys):
    """An official-layout MAE of no named size (48 wide, 2 blocks, patch 8, 32 x 32 RGB) is described
    from its shapes, and serves as the GD teacher."""
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=1,
                               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1)
    path = tmp_path / "odd_mae.pth"
    torch.save({"model": mae.state_dict()}, path)
    assert main(["inspect-checkpoint", str(path), "--role", "gd-teacher"]) == 0
    out = capsys.readouterr().out
    assert "mae_vit_w48d2h1_patch8_dec32d1b (builder mae, img_size 32)" in out
    assert "width 48, depth 2, 1 head (assumed: one head" in out and "images 32x32x3" in out
    assert "decoder      width 32, depth 1, 1 head" in out and "role gd-teacher: ok" in out
    model, info = ck.load_model(path, "gd-teacher")
    assert info.kind == "mae-full" and model.blocks[0].attn.num_heads == 1
    noise = torch.rand(2, 16)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, noise=noise)[0], mae.eval()(x, noise=noise)[0], rtol=0, atol=0)


def test_inspect_names_sizes_as_aliases(files, capsys):
    root, _, _ = files
    assert main(["inspect-checkpoint", str(root / "full.pth")]) == 0
    assert "2 heads (size smokebase)" in capsys.readouterr().out


def test_inspect_refuses_a_lying_sidecar(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    ck.save_model(create_mae(TEACHER), path)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "arch": {**meta["arch"], "depth": 4}}))
    assert main(["inspect-checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "depth: it says 4, the tensors say 2" in err and "Traceback" not in err
