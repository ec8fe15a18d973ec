"""The plain-ViT backbone shared by the dense heads, its initialisation and its optimiser groups.

Both official dense codebases put a *plain* ViT (no hierarchy) under a pyramid made of
deconvolutions / identity / max-pooling of its token maps:

* segmentation (BEiT-style mmseg ``MAE`` backbone): four block outputs (``out_indices`` 3, 5, 7, 11
  of 12) become strides 4 / 8 / 16 / 32 (``fpn1..fpn4``, in :mod:`.segmentation`);
* detection (ViTDet ``SimpleFeaturePyramid``): the last block output alone becomes p2..p6
  (in :mod:`.detection`).

Here the ViT is timm's (``create_classifier(name, 'avg', num_classes=0)``, pruned of its head,
``fc_norm`` and final norm: the dense heads read raw block outputs, as both official backbones do).
"""

import math

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from ..checkpoints import EncoderInit, load_encoder, read_state_dict
from ..models import create_classifier
from ..optim import layer_id


def default_out_indices(depth: int) -> tuple[int, ...]:
    """Blocks (0-based) feeding the 4 pyramid levels: ``round(depth * f) - 1`` for f = 1/3, 1/2, 2/3, 1.

    Depth 12 gives the official (3, 5, 7, 11); depth 6 gives (1, 2, 3, 5). Shallow ViTs repeat
    indices (depth 2: (0, 0, 0, 1)), which is allowed.
    """
    return tuple(max(0, round(depth * f) - 1) for f in (1 / 3, 1 / 2, 2 / 3, 1))


def build_vit(name: str, img_size: int, **overrides) -> nn.Module:
    """A timm ViT for dense features: ``vit_*`` / ``mae_vit_*`` encoder at ``img_size``, no head.

    ``img_size`` must be a multiple of the patch size times 2 (the 0.5x pyramid level max-pools the
    patch grid). The final norm / ``fc_norm`` / head are removed, so ``load_encoder`` copies exactly
    cls_token, pos_embed, patch_embed and blocks.
    """
    vit = create_classifier(name, "avg", num_classes=0, img_size=img_size, **overrides)
    patch = vit.patch_embed.patch_size[0]
    if img_size % (2 * patch):
        raise ValueError(f"img_size {img_size} must be a multiple of 2 x patch size ({2 * patch}) for the pyramid")
    vit.prune_intermediate_layers(len(vit.blocks), prune_norm=True, prune_head=True)
    return vit


def vit_feature_maps(vit: nn.Module, x: torch.Tensor, indices) -> list[torch.Tensor]:
    """Outputs of blocks ``indices`` (repeats allowed) as maps (B, D, H/p, W/p), cls token dropped.

    x: (B, C, H, W). Each map is the block output before any norm (official BEiT / ViTDet).
    """
    unique = sorted(set(indices))
    maps = vit.forward_intermediates(x, indices=unique, norm=False, stop_early=True, output_fmt="NCHW",
                                     intermediates_only=True)
    by_index = dict(zip(unique, maps))
    return [by_index[i] for i in indices]


def rescale_layers(dim: int, scale: float, norm_layer, halve: bool) -> tuple[list[nn.Module], int]:
    """Layers taking a map (B, dim, h, w) to ``scale`` times its side, and their output width.

    ``scale`` 2^k: k stride-2 transposed convolutions with norm + GELU between consecutive ones
    (official ``fpn1`` / ViTDet ``simfp_2`` for 4), halving the width at each one when ``halve``
    (ViTDet) or keeping it (BEiT segmentation); 1: no layer (identity); 2^-k: one 2^k x 2^k max-pool
    (official ``fpn4`` / ``simfp_5`` for 0.5).
    """
    k = round(math.log2(scale))
    if scale <= 0 or 2.0**k != scale:
        raise ValueError(f"pyramid scales must be powers of two, got {scale}")
    if k <= 0:
        return ([nn.MaxPool2d(2**-k, 2**-k)] if k else []), dim
    layers, width = [], dim
    for i in range(k):
        if i:
            layers += [norm_layer(width), nn.GELU()]
        out = width // 2 if halve else width
        layers.append(nn.ConvTranspose2d(width, out, 2, 2))
        width = out
    return layers, width


def check_scales(scales, grid: int) -> tuple[float, ...]:
    """Four pyramid scales, finest first, whose coarsest level still has whole cells on ``grid``."""
    scales = tuple(float(s) for s in scales)
    if len(scales) != 4 or list(scales) != sorted(scales, reverse=True):
        raise ValueError(f"scales must be 4 powers of two, finest first, got {scales}")
    if grid * min(scales) < 1 or (grid * min(scales)) % 1:
        raise ValueError(f"a {grid} x {grid} patch grid cannot be pooled to scale {min(scales)}")
    return scales


def load_backbone(vit: nn.Module, state_dict) -> EncoderInit:
    """Initialise ``vit`` from any checkpoint with a ViT encoder (a state dict or a path).

    ``pos_embed`` (1, 1 + L, D) is resampled bicubically to this ViT's patch grid first, as the
    official segmentation loader (``mmcv_custom.load_checkpoint``, 14 x 14 -> 32 x 32) and ViTDet do;
    then :func:`g2sd_lib.checkpoints.load_encoder` copies the encoder strictly. Returns the names it
    left at their initialisation.
    """
    if not isinstance(state_dict, dict):
        state_dict, _ = read_state_dict(state_dict)
    state_dict = dict(state_dict)
    grid = list(vit.patch_embed.grid_size)
    if "pos_embed" in state_dict and state_dict["pos_embed"].shape != vit.pos_embed.shape:
        old = state_dict["pos_embed"]
        side = math.isqrt(old.shape[1] - vit.num_prefix_tokens)
        state_dict["pos_embed"] = resample_abs_pos_embed(old.float(), grid, [side, side],
                                                         num_prefix_tokens=vit.num_prefix_tokens,
                                                         antialias=False).to(old.dtype)
    return load_encoder(vit, state_dict)


def dense_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None,
                       encoder_prefix: str) -> list[dict]:
    """AdamW groups of a dense model whose ViT lives under ``encoder_prefix`` (e.g. ``"vit."``).

    Layer decay as both official dense codebases (ViTDet ``get_vit_lr_decay_rate``, BEiT
    ``LayerDecayOptimizerConstructor``): with ``n = depth + 1``, embeddings get layer 0, block i layer
    i + 1 and everything else (pyramid, heads) layer n; ``lr_scale = decay^(n - layer)``. No weight
    decay on 1-D tensors, biases and the ViT's ``no_weight_decay()`` (pos_embed, cls_token); the
    official detection code decays biases and the segmentation code decays pos_embed / cls_token
    (prefixed names never match its exclusion list), both accidents not repeated here.
    """
    vit = model.get_submodule(encoder_prefix.rstrip("."))
    skip = {encoder_prefix + n for n in vit.no_weight_decay()}
    num_layers = len(vit.blocks) + 1
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
        lid = num_layers
        if layer_decay is not None and name.startswith(encoder_prefix):
            lid = layer_id(name[len(encoder_prefix):], num_layers)
        scale = 1.0 if layer_decay is None else layer_decay ** (num_layers - lid)
        group = groups.setdefault((lid, no_decay), {"params": [], "names": [], "lr_scale": scale,
                                                    "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


__all__ = ["build_vit", "check_scales", "default_out_indices", "dense_param_groups", "load_backbone", "rescale_layers",
           "vit_feature_maps"]
