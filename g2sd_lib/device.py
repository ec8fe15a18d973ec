"""Where a run computes: device choice, bf16/fp16 autocast, and the torchrun process group (DDP).

Used by the engine and by the evaluation and benchmark code that must pick the same device and
precision as training.
"""

import os

import torch
import torch.distributed as dist

AMP_MODES = ("auto", "bf16", "fp16", "none")


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
