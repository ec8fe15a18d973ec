"""The training engine: validation, NaN stop, seeded repeatability, resume after a kill, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file

from g2sd_lib.engine import train
from g2sd_lib.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_config_rejects_bad_values_before_training():
    with pytest.raises(ValueError) as e:
        TrainConfig(epochs=0, batch_size=8, blr=-1, out_dir="x", amp="fp8", warmup_epochs=5).validate()
    msg = str(e.value)
    for word in ("epochs", "blr", "amp"):
        assert word in msg


class _ExplodingTask:
    """A linear model whose loss turns NaN at the third step."""

    def __init__(self):
        self.model, self.calls, self.teacher = nn.Linear(4, 1), 0, None

    def param_groups(self, wd):
        return [{"params": list(self.model.parameters()), "weight_decay": wd}]

    def loss(self, model, batch):
        self.calls += 1
        out = model(batch[0]).pow(2).mean()
        if self.calls == 3:
            out = out * float("nan")
        return out, {"mse": out.detach()}


def test_nan_loss_stops_with_step_and_parts(tmp_path):
    loader = [(torch.randn(8, 4), torch.zeros(8)) for _ in range(5)]
    cfg = TrainConfig(epochs=1, batch_size=8, blr=1e-3, out_dir=str(tmp_path), amp="none", progress=False)
    with pytest.raises(FloatingPointError, match=r"step 3 .*mse=nan"):
        train(_ExplodingTask(), loader, cfg)


def _stage_cfg(tmp, **train_overrides):
    train_cfg = dict(epochs=3, batch_size=64, blr=1e-3, warmup_epochs=1, amp="none", progress=False, seed=3)
    train_cfg.update(train_overrides)
    return {"kind": "finetune", "model": "vit_smokesmall_patch7", "out_dir": str(tmp),
            "data": {"dataset": "fmnist", "val_size": 256, "train_subset": 512, "eval_batch_size": 256},
            "augment": {"crop_scale": [0.5, 1.0], "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1},
            "model_kwargs": {"drop_path_rate": 0.1}, "train": train_cfg}


def _run(cfg_path, env_extra=None, cmd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = cmd or [sys.executable, "-m", "g2sd_lib.pipeline.stages", str(cfg_path)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _write(tmp_path, name, cfg):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_same_seed_same_metrics_and_kill_resume_gives_same_weights(tmp_path, fmnist_available):
    """Run A and B uninterrupted (same seed): identical metrics. Run C is killed after its first
    epoch checkpoint and rerun: it resumes and ends with weights identical to A's."""
    paths = {n: _write(tmp_path, n, _stage_cfg(tmp_path / n)) for n in "ABC"}
    for n in "AB":
        p = _run(paths[n])
        assert p.wait(timeout=300) == 0, p.stdout.read()
    hist = [json.loads((tmp_path / n / "history.json").read_text()) for n in "AB"]
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "img_per_s")} for r in h]  # noqa: E731
    assert strip(hist[0]) == strip(hist[1])

    p = _run(paths["C"])
    state = tmp_path / "C" / "last.pt"
    deadline = time.time() + 300
    while not state.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be interrupted"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "C" / "model.safetensors").exists()
    p = _run(paths["C"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "resuming from" in out
    a, c = load_file(tmp_path / "A" / "model.safetensors"), load_file(tmp_path / "C" / "model.safetensors")
    assert a.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], c[k]), k
    assert strip(json.loads((tmp_path / "C" / "history.json").read_text())) == strip(hist[0])


@pytest.mark.slow
def test_torchrun_two_process_ddp_matches_one_process(tmp_path, fmnist_available):
    """2 gloo processes x batch 32 = 1 process x batch 64: same samples per step, same lr, gradients
    averaged by DDP. Without random augmentation the weights must agree up to float summation order
    (tolerance 1e-5 absolute after 8 steps)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    base = _stage_cfg(tmp_path / "single", epochs=1, batch_size=64, warmup_epochs=0)
    base["augment"] = {"crop_scale": [1.0, 1.0], "flip": False}
    base["model_kwargs"] = {}
    single = _write(tmp_path, "single", base)
    ddp_cfg = json.loads(json.dumps(base))
    ddp_cfg["out_dir"], ddp_cfg["train"]["batch_size"] = str(tmp_path / "ddp"), 32
    ddp = _write(tmp_path, "ddp", ddp_cfg)
    p = _run(single)
    assert p.wait(timeout=300) == 0, p.stdout.read()
    p = _run(ddp, cmd=[torchrun, "--standalone", "--nproc-per-node=2", "-m", "g2sd_lib.pipeline.stages", str(ddp)])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    a, b = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    h1 = json.loads((tmp_path / "single" / "history.json").read_text())[-1]
    h2 = json.loads((tmp_path / "ddp" / "history.json").read_text())[-1]
    assert h1["train_loss"] == pytest.approx(h2["train_loss"], abs=1e-5)
    assert h1["val_top1"] == pytest.approx(h2["val_top1"], abs=1e-3)


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    """accum_steps=2 x batch 8 and 1 x batch 16 see the same samples per optimiser step with the
    same lr (lr scales with the effective batch): the weights agree up to float summation order."""
    from g2sd_lib.models import create_classifier
    from g2sd_lib.tasks import Finetuning

    torch.manual_seed(0)
    xs, ys = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    results = []
    for batch, accum in ((16, 1), (8, 2)):
        torch.manual_seed(1)
        model = create_classifier("vit_smokesmall_patch7", "avg", 10)
        loader = [(xs[i:i + batch], ys[i:i + batch]) for i in range(0, 32, batch)]
        cfg = TrainConfig(epochs=1, batch_size=batch, accum_steps=accum, blr=1e-2, out_dir=str(tmp_path / str(batch)),
                          amp="none", progress=False)
        train(Finetuning(model), loader, cfg)
        results.append(model.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[1][k], results[0][k], atol=1e-6, rtol=0, msg=k)
    # the sidecar names the machine that trained the run (the reports' provenance reads it)
    from g2sd_lib.device import machine
    from g2sd_lib.pipeline.results import trained_on
    assert trained_on(tmp_path / "8" / "model.safetensors") == machine() != "unknown"
    assert f"torch {torch.__version__}" in machine()


def test_a_run_resumed_on_another_machine_names_both_in_its_sidecar(tmp_path, monkeypatch):
    """The sidecar's ``machine`` names every machine that trained the run, with its epochs; a training
    state saved before the machines were recorded counts its epochs as trained on an unknown one."""
    from g2sd_lib import engine
    from g2sd_lib.models import create_classifier
    from g2sd_lib.pipeline.results import trained_on
    from g2sd_lib.tasks import Finetuning

    loader = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))]
    cfg = TrainConfig(epochs=3, batch_size=8, blr=1e-3, out_dir=str(tmp_path), amp="none", progress=False)
    model_file = tmp_path / "model.safetensors"

    def train_on(name, state_after_epoch_1=None):
        monkeypatch.setattr(engine, "machine", lambda: name)
        if state_after_epoch_1 is not None:
            torch.save(state_after_epoch_1, tmp_path / "last.pt")
        train(Finetuning(create_classifier("vit_smokesmall_patch7", "avg", 10)), loader, cfg)
        return trained_on(model_file)

    assert train_on("A") == "A"
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["machines"] == [["A", 1, 3]]
    state.update(epoch=1, history=state["history"][:1], machines=[["A", 1, 1]])
    assert train_on("B", state) == "A (epoch 1) + B (epochs 2-3)"
    del state["machines"]
    assert train_on("B", state) == "unknown (epoch 1) + B (epochs 2-3)"


def test_too_little_data_for_one_batch_is_a_user_error_that_names_the_fix(tmp_path):
    """A batch larger than the training set (a shrunk profile, a small subset) leaves no full batch:
    the run says so and what to change, instead of an internal ValueError."""
    from g2sd_lib.errors import UserError
    from g2sd_lib.models import create_classifier
    from g2sd_lib.tasks import Finetuning

    model = create_classifier("vit_smokesmall_patch7", "avg", 10)
    cfg = TrainConfig(epochs=1, batch_size=64, blr=1e-2, out_dir=str(tmp_path), amp="none", progress=False)
    with pytest.raises(UserError, match=r"0 full batches per epoch at train.batch_size 64.*lower the batch size"):
        train(Finetuning(model), [], cfg)


class _LinearTask:
    """A linear model on constant data; ``mask_ratio`` mimics the masked tasks for the NaN hint."""

    def __init__(self, nan=False, mask_ratio=None):
        self.model, self.teacher, self.calls, self.nan = nn.Linear(4, 1), None, 0, nan
        if mask_ratio is not None:
            self.mask_ratio = mask_ratio

    def param_groups(self, wd):
        return [{"params": list(self.model.parameters()), "weight_decay": wd}]

    def loss(self, model, batch):
        self.calls += 1
        out = model(batch[0]).pow(2).mean()
        return (out * float("nan") if self.nan else out), {"mse": out.detach()}


def _linear_loader():
    return [(torch.ones(8, 4), torch.zeros(8)) for _ in range(3)]


@pytest.fixture
def no_model_file(monkeypatch):
    """The linear model has no ``arch`` to record: the engine tests on it skip the final safetensors."""
    from g2sd_lib import engine
    monkeypatch.setattr(engine, "save_model", lambda *a, **k: None)


def test_resume_refuses_a_changed_configuration_naming_keys_and_last_pt(tmp_path, no_model_file):
    def cfg(**kw):
        base = dict(epochs=2, batch_size=8, blr=1e-3, out_dir=str(tmp_path), amp="none", progress=False,
                    run_config={"kind": "mae", "task": {"mask_ratio": 0.75}})
        return TrainConfig(**{**base, **kw})

    train(_LinearTask(), _linear_loader(), cfg())
    train(_LinearTask(), _linear_loader(), cfg(eval_every=2))  # watching differently is not a change
    with pytest.raises(ValueError) as e:
        train(_LinearTask(), _linear_loader(), cfg(epochs=1))
    msg = str(e.value)
    assert "train.epochs 2 -> 1" in msg and str(tmp_path / "last.pt") in msg and "Delete" in msg
    with pytest.raises(ValueError, match=r"stage\.task\.mask_ratio 0\.75 -> 0\.5"):
        train(_LinearTask(), _linear_loader(), cfg(run_config={"kind": "mae", "task": {"mask_ratio": 0.5}}))
    # a state saved before a TrainConfig field existed resumes as if it held the field's default
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    state["config"].pop("teacher_amp")
    state["epoch"] = 1
    torch.save(state, tmp_path / "last.pt")
    train(_LinearTask(), _linear_loader(), cfg())
    with pytest.raises(ValueError, match=r"train\.teacher_amp 'same' -> 'bf16'"):
        train(_LinearTask(), _linear_loader(), cfg(teacher_amp="bf16"))


def test_the_engine_sets_the_teachers_precision(tmp_path, no_model_file):
    task = _LinearTask()
    task.teacher = nn.Linear(4, 1)
    task.set_teacher_precision = lambda amp, device: setattr(task, "teacher_amp", (amp, device.type))
    train(task, _linear_loader(), TrainConfig(epochs=1, batch_size=8, blr=1e-3, out_dir=str(tmp_path), amp="none",
                                              teacher_amp="bf16", progress=False))
    assert task.teacher_amp == ("bf16", "cpu")
    with pytest.raises(ValueError, match="teacher_amp must be one of"):
        TrainConfig(epochs=1, batch_size=8, blr=1e-3, out_dir="x", teacher_amp="fp8").validate()


def test_an_unwritable_output_directory_fails_before_the_first_step(tmp_path, no_model_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    task = _LinearTask()
    with pytest.raises(OSError, match=f"cannot write into the output directory {blocker / 'run'}"):
        train(task, _linear_loader(), TrainConfig(epochs=1, batch_size=8, blr=1e-3, out_dir=str(blocker / "run"),
                                                  amp="none", progress=False))
    assert task.calls == 0


def test_disk_full_is_named_and_leaves_no_partial_history(tmp_path, monkeypatch, no_model_file):
    import errno

    from g2sd_lib import history  # the engine writes its history through this module

    dumps = history.json.dumps

    def full(obj, *args, **kwargs):
        if isinstance(obj, list):  # the history's rows (the run directory's lock is written before them)
            raise OSError(errno.ENOSPC, "No space left on device")
        return dumps(obj, *args, **kwargs)

    monkeypatch.setattr(history.json, "dumps", full)
    with pytest.raises(OSError, match="disk full.*history.json"):
        train(_LinearTask(), _linear_loader(), TrainConfig(epochs=1, batch_size=8, blr=1e-3, out_dir=str(tmp_path),
                                                           amp="none", progress=False))
    assert not (tmp_path / "history.json").exists()
    assert not (tmp_path / "history.json.tmp").exists()


@pytest.mark.parametrize("ratio, says", [(0.0, "no masked patch"), (1.0, "no visible patch"),
                                         (None, "lower the learning rate")])
def test_nan_message_names_the_cause_it_can_know(tmp_path, ratio, says, no_model_file):
    with pytest.raises(FloatingPointError, match=says):
        train(_LinearTask(nan=True, mask_ratio=ratio), _linear_loader(),
              TrainConfig(epochs=1, batch_size=8, blr=1e-3, out_dir=str(tmp_path), amp="none", progress=False))


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from g2sd_lib.engine import show_progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert show_progress("auto") is False and show_progress(True) is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert show_progress("auto") is True and show_progress(False) is False
