"""Where a run computes: device choice, bf16/fp16 autocast, the torchrun process group (DDP), and
what only pays on a GPU (``torch.compile`` of the step, fewer host synchronisations: the losses
are read back, and checked finite, every few steps by :func:`read_back`), with the fallbacks that
keep the same code running on a CPU.

Used by the engine and by the evaluation and benchmark code that must pick the same device and
precision as training.
"""

import os
import platform

import torch
import torch.distributed as dist

from .errors import InputError, NonFiniteLossError

AMP_MODES = ("auto", "bf16", "fp16", "none")
TEACHER_AMP_MODES = ("same", *AMP_MODES)  # train.teacher_amp: same = the run's own autocast
COMPILE_MODES = ("none", "default", "reduce-overhead")
# On CUDA the host reads the losses back (a synchronisation) every this many steps, not every step,
# so that the CPU queues the next steps while the GPU works; on CPU it reads them every step.
CUDA_SYNC_EVERY = 25


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


def cpu_threads(env, concurrent: int = 1, cores: int | None = None) -> int | None:
    """The CPU threads of a process that computes at the same time as others, or None to keep torch's
    default. Processes at once: ``concurrent`` (the runs of one stage started together) x the stages
    ``python -m g2sd_lib.pipeline.repro`` runs at once (``G2SD_CONCURRENT_STAGES`` in ``env``). Each gets the
    cores divided among them, as torchrun caps its workers, instead of every process spreading over
    every core (faster in all, as ``benchmarks/cpu_share.py`` and ``benchmarks/pipeline_time.py`` measure:
    benchmarks/README.md). Inside a stage's notebook
    (``G2SD_STAGE_THREADS``, set by :mod:`g2sd_lib.pipeline.notebook_runner`) its runs divide the stage's
    share. The user's ``OMP_NUM_THREADS`` wins."""
    if "G2SD_STAGE_THREADS" in env:
        share, sharing = int(env["G2SD_STAGE_THREADS"]), concurrent
    elif "OMP_NUM_THREADS" in env:
        return None
    else:
        share, sharing = cores or usable_cores(), concurrent * max(1, int(env.get("G2SD_CONCURRENT_STAGES", "1")))
    if sharing <= 1:
        return None
    return max(1, share // sharing)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local rank) when present, else CPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"train.device {device!r} is not a device: use auto (a GPU when there is one), cpu, "
                         "cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"train.device is {device!r} but no CUDA GPU is visible here: set train.device: auto "
                         "(a GPU when there is one, else the CPU) or cpu")
    return resolved


def autocast_dtype(amp: str, device: torch.device):
    """dtype for ``torch.autocast`` or None. ``auto`` = bf16 where the hardware has it (AVX512-BF16 /
    AMX on CPU, compute capability >= 8 on CUDA), else full precision."""
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise InputError("amp 'fp16' (train.amp or teacher_amp) needs a CUDA device: use 'bf16', 'auto' or "
                             "'none' on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    has_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if has_bf16 else None


def hardware() -> str:
    """The GPU's name, or the CPU's architecture with its vector unit and whether it has native bf16
    (``x86_64 (AVX2, no native bf16)``): with amp / teacher_amp ``auto`` they decide bf16 or fp32, and
    so the results' last digits."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    bf16 = "native bf16" if autocast_dtype("auto", torch.device("cpu")) else "no native bf16"
    return f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}, {bf16})"


def machine() -> str:
    """:func:`hardware` with the CPU count and torch version: what a run's sidecar records as
    ``machine`` (the engine) and a report's provenance names."""
    return f"{hardware()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def host_sync_every(device: torch.device) -> int:
    """Steps between host reads of the losses: every step on CPU, ``CUDA_SYNC_EVERY`` on CUDA."""
    return CUDA_SYNC_EVERY if device.type == "cuda" else 1


def compiled_loss(loss_fn, mode: str, device: torch.device):
    """``loss_fn`` as is (``none``) or through ``torch.compile`` (teacher and student forward, loss and,
    through AOTAutograd, their backward). ``reduce-overhead`` adds CUDA graphs, which exist on CUDA
    only: on another device it compiles with the ``default`` mode and says so. Code that dynamo
    cannot trace (timm's Mixup draws from numpy) runs eagerly between compiled graphs; a compiler
    failure falls back to eager execution with a warning (``suppress_errors``), never stops a run."""
    if mode == "none":
        return loss_fn
    if mode == "reduce-overhead" and device.type != "cuda":
        print(f"compile: reduce-overhead (CUDA graphs) needs a CUDA device; compiling with mode 'default' on "
              f"{device.type}", flush=True)
        mode = "default"
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True
    return torch.compile(loss_fn, mode=mode)


def _nonfinite_hint(task) -> str:
    ratio = getattr(task, "mask_ratio", None)
    if ratio is not None and not 0 < ratio < 1:
        left = "masked" if ratio <= 0 else "visible"
        return (f"mask_ratio {ratio} leaves no {left} patch, so the loss averages over nothing: use a ratio "
                "strictly between 0 and 1")
    return "lower the learning rate (blr), or set amp: none if it runs in fp16/bf16"


def read_back(pending: list, sums: dict, task, epoch: int) -> int:
    """Add the pending steps' sample-weighted losses to ``sums`` (host floats, in step order) after
    checking they are finite; returns the samples they cover and empties ``pending``."""
    n = 0
    for it, bs, loss, parts in pending:
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
            raise NonFiniteLossError(f"non-finite loss {float(loss)} at epoch {epoch + 1}, step {it + 1} "
                                     f"({detail}); likely cause: {_nonfinite_hint(task)}")
        for k, v in {"loss": loss, **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * bs
        n += bs
    pending.clear()
    return n


def all_reduce_mean(values: dict, device) -> dict:
    """The mean over the processes of a run (DDP) of each value of ``values``."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))
