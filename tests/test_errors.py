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


def test_notebooks_show_the_message_alone_and_the_cell_fails(capsys, monkeypatch):
    """Importing the library installs nothing; the notebooks' entry point (profiles.complete) does, and
    G2SD_DEBUG=1, set at any time, brings the traceback back."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.set_custom_exc((), None)  # another test may have installed it in this process's one shell
    vars(shell).pop("_g2sd_handler", None)
    monkeypatch.delenv("G2SD_DEBUG", raising=False)
    shell.run_cell("import g2sd_lib, g2sd_lib.errors, g2sd_lib.pipeline.profiles")
    assert shell.custom_exceptions == ()
    assert shell.run_cell("from g2sd_lib.pipeline import profiles\n_ = profiles.complete('smoke', seeds=None)").success
    assert shell.custom_exceptions == (Exception,)
    result = shell.run_cell("from g2sd_lib.fmnist import load_fashion_mnist\nload_fashion_mnist('train', '/no/such/dir')")
    out = capsys.readouterr()
    assert not result.success
    text = out.out + out.err
    assert "DatasetNotFoundError: Fashion-MNIST not found" in text and "/no/such/dir" in text
    assert "Traceback" not in text and "----> " not in text
    result = shell.run_cell("1 / 0")  # not a user error: the usual traceback
    assert not result.success and "ZeroDivisionError" in capsys.readouterr().out
    monkeypatch.setenv("G2SD_DEBUG", "1")
    shell.run_cell("load_fashion_mnist('train', '/no/such/dir')")
    text = "".join(capsys.readouterr())
    assert "DatasetNotFoundError" in text and ("Traceback" in text or "----> " in text)


def test_ctrl_c_and_sigterm_end_the_children_with_one_line_and_the_shells_status(capsys):
    """Ctrl-C: exit 130, SIGTERM: 143 (as a shell reports them), one line saying that rerunning resumes,
    and no process the command started is left running."""
    import signal
    import time

    children = []

    def interrupted(argv):
        children.append(subprocess.Popen(["sleep", "60"]))
        raise KeyboardInterrupt

    def terminated(argv):
        children.append(subprocess.Popen(["sleep", "60"]))
        os.kill(os.getpid(), signal.SIGTERM)  # run_main's handler turns it into an exception here
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    for main, code, how in ((interrupted, 130, "Ctrl-C"), (terminated, 143, "SIGTERM")):
        with pytest.raises(SystemExit) as e:
            run_main(main, [])
        err = capsys.readouterr().err
        assert e.value.code == code and err.startswith(f"stopped by {how}: ") and err.count("\n") == 1, err
        assert "run the same command again to resume" in err and "Traceback" not in err
        assert children[-1].wait(timeout=15) is not None  # ended by run_main, not after its 60 s
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back


def test_a_stopped_notebook_run_ends_its_kernel_quietly(tmp_path):
    """`python -m g2sd_lib.pipeline.notebook_runner` (every stage's command) stopped mid-cell: one line and exit 130,
    no ZMQError of a kernel shut down while busy, the kernel ended, its connection file removed."""
    import signal
    import time

    import nbformat
    import psutil

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})
    nb.cells = [params, nbformat.v4.new_code_cell("import time\nprint('working', flush=True)\ntime.sleep(120)")]
    nbformat.write(nb, tmp_path / "slow.ipynb")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
    env.pop("G2SD_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "g2sd_lib.pipeline.notebook_runner", "none", "slow.ipynb", "out.ipynb"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:  # the cell is running once it prints
        lines.append(line)
        if "working" in line:
            break
    kernels = psutil.Process(proc.pid).children(recursive=True)
    assert kernels, "".join(lines)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert out.splitlines()[-1].startswith("stopped by Ctrl-C: ") and "Traceback" not in out and "ZMQError" not in out
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kernels)
    assert not list(tmp.glob("*.json"))  # the kernel's connection file
