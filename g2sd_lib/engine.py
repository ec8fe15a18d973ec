"""One training engine for every stage: MAE pretraining, GD, SD, fine-tuning and KD baselines.

AdamW on the task's parameter groups, lr = blr x effective batch / 256 with per-iteration warm-up
+ cosine, gradient accumulation, bf16 autocast where the hardware supports it (CPU included), DDP
through ``torchrun`` (gloo on CPU, nccl on GPU) with rank-0 I/O, resume from the last training
state (refused when the configuration changed), a progress bar on terminals and per-epoch lines
and metrics in ``history.json`` / ``history.csv``. On CUDA the optimiser is fused AdamW and the
losses are read back every 25 steps; ``compile`` runs the step through ``torch.compile``
(:mod:`g2sd_lib.device` holds these and their CPU fallbacks).

``train`` = the run directory's lock (:mod:`g2sd_lib.runlock`: one run per ``out_dir``) around
``_setup`` (device, optimiser, resume) + ``train_one_epoch`` per epoch
(MAE's shape) + ``_end_epoch`` (validation, history, ``last.pt``).

Randomness (masking noise, mixup, drop path, data order) is re-seeded at every epoch start from
(seed, epoch, rank), so a run resumed at an epoch boundary repeats an uninterrupted one exactly.
"""

import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoints import load_training_state, save_model, save_training_state
from .device import (all_reduce_mean, autocast_dtype, compiled_loss, host_sync_every, machine, read_back,
                     resolve_device, world_info)
from .errors import ResumeMismatchError, UserError, check_writable, note_saved
from .history import write_run_history
from .optim import lr_at, scaled_lr, set_lr
from .runlock import locked
from .train_config import TrainConfig, config_changes, plain


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, numpy (timm's Mixup draws from it) and random for one (epoch, rank)."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


# ------------------------------------------------------------------------------------ training
def _to(batch, device):
    return [b.to(device, non_blocking=True) if torch.is_tensor(b) else b for b in batch]


def _set_epoch(loader, epoch):
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def show_progress(setting) -> bool:
    """``progress: auto`` draws a per-iteration bar on a terminal only: in notebooks and logs the
    per-epoch lines are the record (a bar there leaves hundreds of partial lines)."""
    if setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


@dataclass
class _Run:
    """What one training run holds between epochs."""

    model: torch.nn.Module
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object
    device: torch.device
    amp_dtype: object
    lr: float
    rank: int
    world: int
    out_dir: Path
    loss_fn: object = None  # task.loss, compiled when cfg.compile asks for it
    sync_every: int = 1  # steps between host reads of the loss (1 on CPU, CUDA_SYNC_EVERY on CUDA)
    start_epoch: int = 0
    history: list = field(default_factory=list)
    machines: list = field(default_factory=list)  # [machine, first epoch, last epoch] per machine that trained it

    def record_machine(self, epoch: int) -> None:
        """Note that this machine (:func:`g2sd_lib.device.machine`) trained 1-based ``epoch``."""
        here = machine()
        if self.machines and self.machines[-1][0] == here:
            self.machines[-1][2] = epoch
        else:
            self.machines.append([here, epoch, epoch])

    @property
    def state_path(self) -> Path:
        return self.out_dir / "last.pt"


def _setup(task, loader, cfg: "TrainConfig") -> _Run:
    """Device, optimiser, scaler and DDP wrapper of a run; a ``last.pt`` in the output directory is
    resumed from."""
    rank, world = world_info()
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    amp_dtype = autocast_dtype(cfg.amp, device)
    out_dir = Path(cfg.out_dir)
    model = task.model.to(device)
    if getattr(task, "teacher", None) is not None:
        task.teacher.to(device)
        task.set_teacher_precision(cfg.teacher_amp, device)
    if len(loader) < cfg.accum_steps:
        raise UserError(f"{out_dir}: the training data gives {len(loader)} full batches per epoch at train.batch_size "
                        f"{cfg.batch_size} (an incomplete last batch is dropped), fewer than train.accum_steps "
                        f"{cfg.accum_steps}: lower the batch size (or the accumulation steps), or train on more data")
    lr = scaled_lr(cfg.blr, cfg.batch_size * cfg.accum_steps * world)
    # fused AdamW (one kernel per step for all parameters) on CUDA; the default (foreach) elsewhere
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(task.param_groups(cfg.weight_decay), lr=lr, betas=tuple(cfg.betas), **fused)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    run = _Run(model, model, optimizer, scaler, device, amp_dtype, lr, rank, world, out_dir,
               sync_every=host_sync_every(device))
    if run.state_path.exists():
        _resume(run, cfg)
    if world > 1:
        run.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run.loss_fn = compiled_loss(task.loss, cfg.compile, device)
    return run


def _resume(run: _Run, cfg: "TrainConfig") -> None:
    """Load ``last.pt`` into ``run``; refuse it when it was written under another configuration."""
    state = load_training_state(run.state_path)
    # a field added since the state was saved counts as its default (the value that run computed with)
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    saved = {"train": {**defaults, **state.get("config", {})}, "world_size": state.get("world_size", run.world),
             "stage": state.get("run_config", plain(cfg.run_config))}
    now = {"train": plain(asdict(cfg)), "world_size": run.world, "stage": plain(cfg.run_config)}
    changes = config_changes(saved, now)
    if changes:
        raise ResumeMismatchError(
            f"{run.state_path} was saved by a run with another configuration ({'; '.join(changes)}); resuming "
            f"would mix two runs. Delete {run.state_path} to start this configuration afresh, or restore the "
            "old values to continue the saved run.")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.history = state["epoch"], list(state["history"])
    # states saved before machines were recorded: their epochs' machine is unknown
    run.machines = state.get("machines") or ([["unknown", 1, run.start_epoch]] if run.start_epoch else [])
    if run.rank == 0:
        note_saved(f"{run.state_path} (epoch {run.start_epoch}/{cfg.epochs})")
        print(f"resuming from {run.state_path} at epoch {run.start_epoch}/{cfg.epochs}")


def train_one_epoch(task, run: _Run, loader, cfg: "TrainConfig", epoch: int) -> dict:
    """One pass over ``loader`` (MAE's ``train_one_epoch``): per-iteration lr, accumulation, autocast;
    returns the epoch's row of sample-weighted mean losses, lr, seconds and img/s."""
    steps, world = len(loader), run.world
    seed_epoch(cfg.seed, epoch, run.rank)
    _set_epoch(loader, epoch)
    run.model.train()
    sums, n_seen, t0 = {}, 0, time.perf_counter()
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not show_progress(cfg.progress) or run.rank != 0, mininterval=2.0)
    run.optimizer.zero_grad(set_to_none=True)
    pending = []  # (step, batch size, loss, parts) not yet read back by the host
    graphed = cfg.compile == "reduce-overhead" and run.device.type == "cuda"
    for it, batch in enumerate(bar):
        batch = _to(batch, run.device)
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be reused
        if it % cfg.accum_steps == 0:
            cur_lr = lr_at(epoch + it / steps, run.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
            set_lr(run.optimizer, cur_lr)
        sync = (it + 1) % cfg.accum_steps == 0 or it + 1 == steps
        with run.ddp.no_sync() if world > 1 and not sync else nullcontext():
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                loss, parts = run.loss_fn(run.ddp, batch)
            # kept past this step: copied when a later step may overwrite them (CUDA graph outputs)
            keep = (lambda t: t.detach().clone()) if run.sync_every > 1 else (lambda t: t.detach())
            pending.append((it, batch[0].shape[0], keep(loss), {k: keep(v) for k, v in parts.items()}))
            if len(pending) >= run.sync_every or it + 1 == steps:
                n_seen += read_back(pending, sums, task, epoch)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{cur_lr:.2e}", refresh=False)
            scaled = loss / cfg.accum_steps
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        if sync:
            if run.scaler is not None:
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    bar.close()
    elapsed = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "lr": cur_lr, "seconds": elapsed, **{f"train_{k}": v / n_seen for k, v in sums.items()},
           "img_per_s": n_seen * world / elapsed}
    if world > 1:
        row.update(all_reduce_mean({k: v for k, v in row.items() if k.startswith("train_")}, run.device))
    return row


def _end_epoch(run: _Run, row: dict, cfg: "TrainConfig", evaluate) -> None:
    """Validation (every ``eval_every`` epochs and the last), history, ``last.pt``, the epoch's line."""
    epoch, last = row["epoch"], row["epoch"] == cfg.epochs
    run.record_machine(epoch)
    if evaluate is not None and run.rank == 0 and (epoch % cfg.eval_every == 0 or last):
        run.model.eval()
        row.update(evaluate(run.model))
    run.history.append(row)
    if run.rank == 0:
        write_run_history(run.out_dir, run.history)
        if epoch % cfg.save_every == 0 or last:
            save_training_state(run.state_path, model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                                scaler=run.scaler.state_dict() if run.scaler is not None else {},
                                epoch=epoch, history=run.history, config=plain(asdict(cfg)),
                                run_config=plain(cfg.run_config), world_size=run.world, machines=run.machines)
            note_saved(f"{run.state_path} (epoch {epoch}/{cfg.epochs})")
        summary = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        print(f"epoch {epoch}/{cfg.epochs}: {summary}", flush=True)
    if run.world > 1:
        dist.barrier()


def train(task, loader, cfg: TrainConfig, evaluate=None) -> list[dict]:
    """Train ``task.model`` for ``cfg.epochs``; returns the per-epoch history.

    ``loader`` yields batches (tuples of tensors) and may have ``set_epoch``; ``evaluate(model)``
    returns a dict of metrics (rank 0). Writes to ``cfg.out_dir``: ``last.pt`` (training state,
    every ``save_every`` epochs; resumed from when present and made by the same configuration),
    ``history.{json,csv}`` and, at the end, ``model.safetensors`` + sidecar. The directory is checked
    writable and locked (rank 0) before anything else: a second run into it stops at once.
    """
    cfg.validate()
    with locked(check_writable(cfg.out_dir)) if world_info()[0] == 0 else nullcontext():
        run = _setup(task, loader, cfg)
        for epoch in range(run.start_epoch, cfg.epochs):
            _end_epoch(run, train_one_epoch(task, run, loader, cfg, epoch), cfg, evaluate)
        if run.rank == 0:
            save_model(run.model, run.out_dir / "model.safetensors",
                       extra={"history": run.history[-1] if run.history else {}, "train_config": plain(asdict(cfg)),
                              "machine": _machines_text(run.machines) or machine()})
        if run.world > 1:
            dist.barrier()
    return run.history


def _machines_text(machines: list) -> str | None:
    """The sidecar's ``machine``: the one machine that trained every epoch, or, for a run resumed
    elsewhere, each machine with its epochs (``A (epochs 1-2) + B (epoch 3)``); None before any epoch."""
    if len({m for m, _, _ in machines}) <= 1:
        return machines[0][0] if machines else None
    return " + ".join(f"{m} (epoch {a})" if a == b else f"{m} (epochs {a}-{b})" for m, a, b in machines)


__all__ = ["seed_epoch", "show_progress", "train", "train_one_epoch"]
