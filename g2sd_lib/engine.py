"""One training engine for every stage: MAE pretraining, GD, SD, fine-tuning and KD baselines.

AdamW on the task's parameter groups, lr = blr x effective batch / 256 with per-iteration warm-up
+ cosine, gradient accumulation, bf16 autocast where the hardware supports it (CPU included), DDP
through ``torchrun`` (gloo on CPU, nccl on GPU) with rank-0 I/O, resume from the last training
state, tqdm progress and per-epoch metrics in ``history.json`` / ``history.csv``.

Randomness (masking noise, mixup, drop path, data order) is re-seeded at every epoch start from
(seed, epoch, rank), so a run resumed at an epoch boundary repeats an uninterrupted one exactly.
"""

import csv
import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoints import load_training_state, save_model, save_training_state
from .optim import lr_at, scaled_lr, set_lr

AMP_MODES = ("auto", "bf16", "fp16", "none")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; ``validate`` rejects bad values before any work."""

    epochs: int
    batch_size: int  # per process, as the official ``--batch_size`` (per GPU)
    blr: float  # base lr; lr = blr * batch_size * accum_steps * world_size / 256
    out_dir: str
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    accum_steps: int = 1
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    save_every: int = 1
    eval_every: int = 1
    progress: bool = True
    extra: dict = field(default_factory=dict)  # recorded in the model sidecar (e.g. the stage name)

    def validate(self):
        errors = []
        for name in ("epochs", "batch_size", "accum_steps", "save_every", "eval_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                errors.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.blr > 0:
            errors.append(f"blr must be > 0, got {self.blr!r}")
        if not 0 <= self.min_lr:
            errors.append(f"min_lr must be >= 0, got {self.min_lr!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            errors.append(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        if self.weight_decay < 0:
            errors.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            errors.append(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.amp not in AMP_MODES:
            errors.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if errors:
            raise ValueError("invalid training configuration: " + "; ".join(errors))
        return self


# ------------------------------------------------------------------------------ device / DDP
def init_distributed():
    """Join the process group torchrun describes in the environment; returns (rank, world, local_rank)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return rank, world, local


def world_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local rank) when present, else CPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def autocast_dtype(amp: str, device: torch.device):
    """dtype for ``torch.autocast`` or None. ``auto`` = bf16 where the hardware has it (AVX512-BF16 /
    AMX on CPU, compute capability >= 8 on CUDA), else full precision."""
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' or 'none' on CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    has_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if has_bf16 else None


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


def _write_history(out_dir: Path, history: list[dict]):
    tmp = out_dir / "history.json.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, out_dir / "history.json")
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with open(out_dir / "history.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(out_dir / "history.csv.tmp", out_dir / "history.csv")


def train(task, loader, cfg: TrainConfig, evaluate=None) -> list[dict]:
    """Train ``task.model`` for ``cfg.epochs``; returns the per-epoch history.

    ``loader`` yields batches (tuples of tensors) and may have ``set_epoch``; ``evaluate(model)``
    returns a dict of metrics (rank 0). Writes to ``cfg.out_dir``: ``last.pt`` (training state,
    every ``save_every`` epochs; resumed from when present), ``history.{json,csv}`` and, at the end,
    ``model.safetensors`` + sidecar.
    """
    cfg.validate()
    rank, world = world_info()
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    amp_dtype = autocast_dtype(cfg.amp, device)
    out_dir = Path(cfg.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    model = task.model.to(device)
    if getattr(task, "teacher", None) is not None:
        task.teacher.to(device)
    steps = len(loader)
    if steps < cfg.accum_steps:
        raise ValueError(f"the loader gives {steps} batches per epoch, fewer than accum_steps={cfg.accum_steps}")
    eff_batch = cfg.batch_size * cfg.accum_steps * world
    lr = scaled_lr(cfg.blr, eff_batch)
    optimizer = torch.optim.AdamW(task.param_groups(cfg.weight_decay), lr=lr, betas=tuple(cfg.betas))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    start_epoch, history = 0, []
    state_path = out_dir / "last.pt"
    if state_path.exists():
        state = load_training_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], list(state["history"])
        if rank == 0:
            print(f"resuming from {state_path} at epoch {start_epoch}/{cfg.epochs}")

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model

    for epoch in range(start_epoch, cfg.epochs):
        seed_epoch(cfg.seed, epoch, rank)
        _set_epoch(loader, epoch)
        model.train()
        sums, n_seen, t0 = {}, 0, time.perf_counter()
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress or rank != 0, mininterval=2.0)
        optimizer.zero_grad(set_to_none=True)
        for it, batch in enumerate(bar):
            batch = _to(batch, device)
            if it % cfg.accum_steps == 0:
                cur_lr = lr_at(epoch + it / steps, lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
                set_lr(optimizer, cur_lr)
            sync = (it + 1) % cfg.accum_steps == 0 or it + 1 == steps
            ctx = ddp.no_sync() if world > 1 and not sync else nullcontext()
            with ctx:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, parts = task.loss(ddp, batch)
                if not torch.isfinite(loss):
                    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                    raise FloatingPointError(f"non-finite loss {float(loss.detach())} at epoch {epoch + 1}, step {it + 1} "
                                             f"({detail}); lower the learning rate or disable amp")
                scaled = loss / cfg.accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if sync:
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            bs = batch[0].shape[0]
            n_seen += bs
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * bs
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{cur_lr:.2e}", refresh=False)
        bar.close()
        elapsed = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "lr": cur_lr, "seconds": elapsed,
               **{f"train_{k}": v / n_seen for k, v in sums.items()}}
        row["img_per_s"] = n_seen * world / elapsed
        if world > 1:
            row.update(_all_reduce_mean({k: v for k, v in row.items() if k.startswith("train_")}, device))
        last = epoch + 1 == cfg.epochs
        if evaluate is not None and rank == 0 and ((epoch + 1) % cfg.eval_every == 0 or last):
            model.eval()
            row.update(evaluate(model))
        history.append(row)
        if rank == 0:
            _write_history(out_dir, history)
            if (epoch + 1) % cfg.save_every == 0 or last:
                save_training_state(state_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                    scaler=scaler.state_dict() if scaler is not None else {},
                                    epoch=epoch + 1, history=history, config=_plain(asdict(cfg)))
            summary = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
            print(f"epoch {epoch + 1}/{cfg.epochs}: {summary}", flush=True)
        if world > 1:
            dist.barrier()

    if rank == 0:
        save_model(model, out_dir / "model.safetensors",
                   extra={"history": history[-1] if history else {}, "train_config": _plain(asdict(cfg))})
    if world > 1:
        dist.barrier()
    return history


def _all_reduce_mean(values: dict, device) -> dict:
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _plain(obj):
    """JSON-able copy of a config (tuples -> lists) for sidecars and training states."""
    return json.loads(json.dumps(obj, default=str))


__all__ = ["TrainConfig", "autocast_dtype", "init_distributed", "resolve_device", "seed_epoch", "train",
           "world_info"]
