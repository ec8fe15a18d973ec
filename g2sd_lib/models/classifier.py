"""Classifiers of specific distillation, on timm's ``VisionTransformer``.

* ``DistilledViT``: the G2SD student. A distillation token is appended at the END of the sequence
  after the position embedding is added (so it has none), as the official ``models_vit.py`` does
  (DeiT and timm's ``VisionTransformerDistilled`` put it at index 1 with a position embedding
  instead). ``head`` reads the cls token, ``head_dist`` the distillation token. In training mode
  ``forward`` returns both logits; in eval mode their average.
* ``teacher_classifier``: the fine-tuned MAE classifier, a plain timm ViT with global average
  pooling over the patch tokens (``fc_norm`` + ``head``, no final ``norm``).
"""

from functools import partial

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class DistilledViT(VisionTransformer):
    """ViT with a cls token (first) and a distillation token (last, no position embedding).

    ``average_heads=False`` makes eval mode return the cls head only (the official NKD setting).
    """

    def __init__(self, average_heads: bool = True, **kwargs):
        kwargs.setdefault("norm_layer", LayerNorm)
        super().__init__(global_pool="token", **kwargs)
        self.average_heads = average_heads
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.head_dist = nn.Linear(self.embed_dim, self.num_classes)
        trunc_normal_(self.dist_token, std=0.02)
        trunc_normal_(self.head_dist.weight, std=0.02)
        nn.init.zeros_(self.head_dist.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return super().no_weight_decay() | {"dist_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + L + 1, D): cls, patches, distillation token, after ``norm``."""
        x = self._pos_embed(self.patch_embed(x))
        x = torch.cat([x, self.dist_token.expand(x.shape[0], -1, -1)], dim=1)
        x = self.blocks(self.norm_pre(self.patch_drop(x)))
        return self.norm(x)

    def forward_heads(self, x: torch.Tensor):
        """Features (B, N, D) -> (cls logits, dist logits), each (B, num_classes)."""
        cls = self.head(self.head_drop(self.fc_norm(x[:, 0])))
        return cls, self.head_dist(x[:, -1])

    def forward(self, x: torch.Tensor):
        cls, dist = self.forward_heads(self.forward_features(x))
        if self.training:
            return cls, dist
        return (cls + dist) / 2 if self.average_heads else cls


def teacher_classifier(**kwargs) -> VisionTransformer:
    """Fine-tuned MAE classifier: timm ViT with global average pooling (``fc_norm``, ``head``);
    ``global_pool="token"`` gives timm's cls-token ViT (final ``norm``, ``head``) instead."""
    kwargs.setdefault("norm_layer", LayerNorm)
    kwargs.setdefault("global_pool", "avg")
    return VisionTransformer(**kwargs)

