"""``g2sd.py``, the method in one file: it runs shrunk end to end, prints its numbers, and GD learns;
its written-out losses are the library's.

The script is run as a user does, ``python g2sd.py ...``, in a subprocess, except for the loss check.
"""

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"([-+0-9.eE]+|nan|inf)"


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(script), *args], cwd=script.parent, env=env, capture_output=True,
                          text=True, timeout=300)


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern.replace("{n}", NUMBER), text)
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return float(found.group(1))


def _one_file():
    spec = importlib.util.spec_from_file_location("g2sd_one_file", REPO / "g2sd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_shrunk_prints_its_numbers_and_gd_lowers_the_loss(fmnist_available):
    p = _run(REPO / "g2sd.py", "--gd-epochs", "1", "--sd-epochs", "1", "--subset", "1024", "--batch-size", "64",
             "--test-images", "500", "--threads", "1")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    gd_epoch = _number(r"GD loss per epoch: {n}", out)
    before = _number(r"GD loss on the probe batch: {n} before GD", out)
    after = _number(r"before GD, {n} after", out)
    top1 = {name: _number(rf"{name} top-1: {{n}}", out) for name in ("teacher", "G2SD", "scratch")}
    assert all(math.isfinite(v) and v > 0 for v in (gd_epoch, before, after)), out
    assert all(0 <= v <= 1 for v in top1.values()), out
    # an untrained student scores > 0.25 on the probe batch (notebook 00); 16 GD steps must lower it clearly:
    # this fails if the student learnt nothing (no optimiser step, a detached target, a wrong mask)
    assert before > 0.25 and after < 0.85 * before, out
    assert top1["teacher"] > 0.8, out  # the bundled teacher reaches 89 % (teachers/fmnist.md): it loaded


@pytest.mark.parametrize("missing", ["data", "teachers"])
def test_a_missing_input_stops_with_one_line_naming_the_fix(tmp_path, missing):
    # a copy of the script in an empty directory finds neither data/ nor teachers/ beside it
    shutil.copy(REPO / "g2sd.py", tmp_path / "g2sd.py")
    if missing == "teachers":
        (tmp_path / "data").symlink_to(REPO / "data", target_is_directory=True)
        if not (tmp_path / "data" / "fashion-mnist").is_dir():
            pytest.skip("Fashion-MNIST is not in data/fashion-mnist (`make data`)")
    p = _run(tmp_path / "g2sd.py")
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "make data" in lines[0] and missing in lines[0], p.stderr


def test_the_written_out_losses_are_the_library_s():
    from g2sd_lib import losses
    from g2sd_lib.models import create_classifier
    one_file, g = _one_file(), torch.Generator().manual_seed(0)
    y_hat, h_T = torch.randn(4, 17, 96, generator=g), 3 * torch.randn(4, 17, 96, generator=g) + 1
    assert torch.allclose(one_file.gd_loss(y_hat, h_T), losses.gd_loss(y_hat, h_T, beta=2.0), atol=1e-6)
    assert not torch.allclose(one_file.gd_loss(y_hat, h_T), losses.gd_loss(y_hat, h_T, beta=1.0))
    z_cls, z_dist, z_T = (4 * torch.randn(8, 10, generator=g) for _ in range(3))
    y_soft = torch.softmax(torch.randn(8, 10, generator=g), -1)  # mixed labels: rows sum to 1
    assert torch.allclose(one_file.sd_loss(z_cls, z_dist, y_soft, z_T),
                          losses.sd_classification_loss(z_cls, z_dist, y_soft, z_T)[0], atol=1e-6)
    torch.manual_seed(0)
    model = create_classifier(one_file.STUDENT_VIT, "distilled", num_classes=10).eval()
    x = torch.randn(2, 1, 28, 28, generator=g)
    with torch.no_grad():  # the written-out evaluation is the model's own eval forward
        assert torch.allclose(one_file.g2sd_logits(model, x), model(x), atol=1e-6)
