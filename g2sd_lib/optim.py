"""Optimiser parameter groups and the learning-rate schedule of the official recipes.

* Weight decay: none for 1-D parameters (biases, norms), for ``*.bias`` and for the names the
  model lists in ``no_weight_decay()`` when ``skip_model_list`` is set (SD: pos_embed, cls_token,
  dist_token). GD (``timm add_weight_decay`` officially) decays cls/mask tokens; SD does not.
* Layer decay (SD, MAE's ``param_groups_lrd``): with ``n = depth + 1`` "layers",
  cls_token / pos_embed / patch_embed get layer 0, ``blocks.i`` layer ``i + 1`` and everything else
  (norm, fc_norm, head, head_dist, dist_token) layer ``n``; the lr scale is ``decay^(n - layer)``.
* Schedule: ``lr = base_lr * effective_batch / 256``; linear warm-up then half-cosine to
  ``min_lr``, evaluated per iteration at the fractional epoch, as MAE's ``adjust_learning_rate``.
"""

import math

import torch.nn as nn


def layer_id(name: str, num_layers: int) -> int:
    """Layer index of a parameter for layer decay (0 = embeddings, num_layers = heads / final norm)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 skip_model_list: bool = False) -> list[dict]:
    """AdamW parameter groups with ``weight_decay`` and ``lr_scale`` (1.0 without layer decay).

    Frozen parameters (``requires_grad=False``, e.g. the sin-cos position tables) are left out.
    """
    skip = set(model.no_weight_decay()) if skip_model_list and hasattr(model, "no_weight_decay") else set()
    num_layers = len(model.blocks) + 1 if layer_decay is not None else 0
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
        lid = layer_id(name, num_layers) if layer_decay is not None else 0
        scale = layer_decay ** (num_layers - lid) if layer_decay is not None else 1.0
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule of MAE / G2SD: ``lr = blr * batch / 256``."""
    return base_lr * effective_batch / 256


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at fractional ``epoch``: linear warm-up, then half-cosine decay to ``min_lr``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
