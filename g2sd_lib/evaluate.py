"""Evaluation: top-k accuracy, agreement with the teacher, parameters, FLOPs and throughput."""

import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def predict(model: nn.Module, loader, device=None, amp_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) in float32 and labels (N,) of a model in eval mode over a whole loader.

    A distilled student in eval mode returns the average of its two heads (official behaviour).
    """
    device = device or next(model.parameters()).device
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x.to(device))
        logits.append(out.float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict:
    """Fractions in [0, 1]: ``{"top1": ..., "top5": ...}`` (k larger than the classes is skipped)."""
    out = {}
    for k in ks:
        if k > logits.shape[1]:
            continue
        top = logits.topk(k, dim=1).indices
        out[f"top{k}"] = (top == labels[:, None]).any(dim=1).float().mean().item()
    return out


def agreement(logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Share of samples on which student and teacher predict the same class."""
    return (logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of fused CPU attention, which FlopCounterMode has no formula for (it would count 0):
    ``Q K^T`` and ``softmax(.) V``, 2 FLOPs per multiply-add each."""
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


@torch.no_grad()
def flops_per_image(model: nn.Module, input_shape, forward=None) -> int:
    """Forward FLOPs for one image of shape (C, H, W), counted by PyTorch's FlopCounterMode
    (a multiply-add counts as 2 FLOPs). ``forward(model, x)`` overrides the call for models whose
    forward needs more arguments (e.g. MAE with its noise)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops})
    with counter:
        forward(model, x) if forward is not None else model(x)
    model.train(was_training)
    return counter.get_total_flops()


@torch.no_grad()
def throughput(model: nn.Module, input_shape, batch_size=256, steps=5, warmup=2, amp_dtype=None) -> float:
    """Inference images per second on random input (median over ``steps`` timed batches)."""
    device = next(model.parameters()).device
    model.eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch_size / sorted(times)[len(times) // 2]


def classification_report(model, loader, teacher_logits=None, device=None, amp_dtype=None) -> dict:
    """top-1 / top-5 and, given the teacher's logits on the same loader, agreement with the teacher."""
    logits, labels = predict(model, loader, device, amp_dtype)
    out = topk_accuracy(logits, labels)
    if teacher_logits is not None:
        out["agreement"] = agreement(logits, teacher_logits)
    return out
