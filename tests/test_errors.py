"""User mistakes reach people as one paragraph: command lines exit 2 without a traceback (unless
--debug / G2SD_DEBUG=1), notebooks show the message alone and the cell still fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from g2sd_lib.errors import UserError, run_main

REPO = Path(__file__).resolve().parents[1]


def _fails(argv):
    raise UserError("the teacher file x.pt is missing; run the teacher stage first")


def test_run_main_prints_a_user_error_as_one_paragraph(capsys, monkeypatch):
    monkeypatch.delenv("G2SD_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        run_main(_fails, [])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: the teacher file x.pt is missing" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        run_main(_fails, ["--debug"])
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_still_shows_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_main(lambda argv: 1 / 0, [])


@pytest.mark.parametrize("debug", [False, True])
def test_the_stage_module_reports_a_missing_teacher_without_traceback(tmp_path, debug):
    cfg = {"kind": "gd", "model": "mae_vit_smokesmall_patch7_dec16d1b", "teacher": str(tmp_path / "missing.safetensors"),
           "out_dir": str(tmp_path / "run"), "data": {"dataset": "fmnist"},
           "task": {"mask_ratio": 0.75, "target_block": 1}, "train": {"epochs": 1, "batch_size": 8, "blr": 1e-3}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "G2SD_DEBUG"}
    cmd = [sys.executable, "-m", "g2sd_lib.pipeline.stages", str(path)] + (["--debug"] if debug else [])
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "missing.safetensors" in p.stderr
    assert ("Traceback" in p.stderr) == debug


def test_notebooks_show_the_message_alone_and_the_cell_fails(capsys):
    from IPython.testing.globalipapp import start_ipython

    from g2sd_lib.errors import install_notebook_handler

    shell = start_ipython()
    install_notebook_handler()
    result = shell.run_cell("from g2sd_lib.fmnist import load_fashion_mnist\nload_fashion_mnist('train', '/no/such/dir')")
    out = capsys.readouterr()
    assert not result.success
    text = out.out + out.err
    assert "DatasetNotFoundError: Fashion-MNIST not found" in text and "/no/such/dir" in text
    assert "Traceback" not in text and "----> " not in text
    result = shell.run_cell("1 / 0")  # not a user error: the usual traceback
    assert not result.success and "ZeroDivisionError" in capsys.readouterr().out
