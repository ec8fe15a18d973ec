"""One run per output directory (g2sd_lib.runlock, held by engine.train), and a stopped run: two real
processes into one directory, a stale lock taken over, Ctrl-C / SIGTERM ending with one line, exit
130 / 143, no lock file left, and the rerun resuming."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a training run of a few seconds per epoch: each step sleeps, so that another process can meet it
SLOW_RUN = """
import os, sys, time
import torch, torch.nn as nn
import g2sd_lib.engine as engine
from g2sd_lib.train_config import TrainConfig
from g2sd_lib.errors import run_main

class Slow:
    teacher = None

    def __init__(self):
        self.model = nn.Linear(4, 1)

    def param_groups(self, wd):
        return [{"params": list(self.model.parameters()), "weight_decay": wd}]

    def loss(self, model, batch):
        saved = os.path.exists(os.path.join(sys.argv[1], "last.pt"))  # an epoch is done and saved
        time.sleep(float(sys.argv[4] if saved else sys.argv[3]))
        out = model(batch[0]).pow(2).mean()
        return out, {"mse": out.detach()}

engine.save_model = lambda *args, **kwargs: None  # a bare nn.Linear has no architecture to record

def main(argv):
    torch.manual_seed(0)
    loader = [(torch.randn(8, 4), torch.zeros(8)) for _ in range(int(argv[1]))]
    cfg = TrainConfig(epochs=2, batch_size=8, blr=1e-3, out_dir=argv[0], amp="none", progress=False)
    engine.train(Slow(), loader, cfg)

run_main(main)
"""


def _start(tmp_path, out_dir, steps=20, pause=0.25, pause_after_save=None):
    """A run of two epochs of ``steps`` steps into ``out_dir``; each step sleeps ``pause`` s, or
    ``pause_after_save`` s once the first epoch is saved (a long second epoch: a signal sent after the
    first save surely meets the run, however late a loaded machine lets the test send it)."""
    pause_after_save = pause if pause_after_save is None else pause_after_save
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("G2SD_DEBUG", None)
    # Ctrl-C reaches the run as in a terminal even when the tests themselves run in the background
    # (`make test &`, nohup), where the shell starts them, and so the run, with SIGINT ignored
    return subprocess.Popen([sys.executable, str(script), str(out_dir), str(steps), str(pause),
                             str(pause_after_save)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while not predicate() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]


def _holds_lock(run_dir):
    """A predicate: the run has taken ``run_dir``'s lock and written itself into it (the file exists a moment
    before its holder's JSON does)."""
    def holds():
        try:
            return "pid" in json.loads((run_dir / ".lock").read_text())
        except (OSError, ValueError):
            return False
    return holds


def test_a_second_run_into_a_busy_directory_stops_at_once_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    first = _start(tmp_path, run_dir, steps=40)
    _wait_for(_holds_lock(run_dir), first)
    second = _start(tmp_path, run_dir, steps=2, pause=0)
    out, _ = second.communicate(timeout=120)
    assert first.poll() is None, "the first run ended before the second met it"
    assert second.returncode == 2, out
    assert f"{run_dir} is in use: process {first.pid} (" in out and "give this run another out_dir" in out, out
    assert "Traceback" not in out
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 2  # the first run's two epochs, untouched by the second
    assert not (run_dir / ".lock").exists()  # a run directory (a DVC output) keeps only the run's files


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    first = _start(tmp_path, run_dir, steps=40)
    _wait_for(_holds_lock(run_dir), first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == first.pid  # left behind, its flock gone
    again = _start(tmp_path, run_dir, steps=2, pause=0)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert f"taking over the lock of process {first.pid}" in out
    assert not (run_dir / ".lock").exists()


def test_a_launcher_leaves_a_busy_directory_untouched(tmp_path):
    """launch_all's processes (and torchrun) get their config.json and log.txt in the run directory before
    the run takes the lock: the launcher checks the lock first, so the running run's files stay its own."""
    from g2sd_lib.pipeline import stages
    from g2sd_lib.runlock import RunDirectoryLocked, check_free

    run_dir = tmp_path / "run"
    first = _start(tmp_path, run_dir, steps=40)
    _wait_for(_holds_lock(run_dir), first)
    (run_dir / "config.json").write_text("the first run's")
    with pytest.raises(RunDirectoryLocked, match=f"{run_dir} is in use: process {first.pid} "):
        stages.start_run({"out_dir": str(run_dir)}, dict(os.environ))
    assert (run_dir / "config.json").read_text() == "the first run's" and not (run_dir / "log.txt").exists()
    first.send_signal(signal.SIGKILL)
    first.wait()
    check_free(run_dir)  # a dead holder's lock file blocks nothing
    check_free(tmp_path / "never-made")


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_stopped_run_says_what_was_saved_and_the_rerun_resumes(tmp_path, sig, code, name):
    run_dir = tmp_path / "run"
    proc = _start(tmp_path, run_dir, steps=12, pause_after_save=10)  # epoch 2 would take 2 min
    _wait_for((run_dir / "last.pt").exists, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert out.splitlines()[-1] == (f"stopped by {name}: the last save, {run_dir / 'last.pt'} (epoch 1/2), is kept; "
                                    "run the same command again to resume from there"), out
    assert "Traceback" not in out
    assert sorted(p.name for p in run_dir.iterdir()) == ["history.csv", "history.json", "last.pt"]  # no lock, no temp
    again = _start(tmp_path, run_dir, steps=12, pause=0)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "resuming from" in out and "epoch 2/2" in out, out
