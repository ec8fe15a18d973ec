"""Semantic segmentation: ViT + 4-level pyramid + UperNet head + FCN auxiliary head, and its G2SD stage.

The official ``G2SD_seg_dis`` (mmsegmentation 0.11, BEiT-style ``MAE`` backbone) in data-flow order:

1. ViT block outputs ``out_indices`` (3, 5, 7, 11 of 12) as maps (B, D, h, w), h = H / patch;
2. ``fpn1`` ConvT-BN-GELU-ConvT (x4), ``fpn2`` ConvT (x2), ``fpn3`` identity, ``fpn4`` max-pool (/2):
   strides patch/4, patch/2, patch, 2 patch (4 / 8 / 16 / 32 for patch 16);
3. ``UPerHead``: pooling pyramid (scales 1, 2, 3, 6) on the coarsest level, 1x1 laterals on the
   others, top-down sums, 3x3 fuse convs, all levels resized to the finest and concatenated,
   3x3 bottleneck, Dropout2d(0.1), ``conv_seg`` 1x1 -> logits (B, K, 4h, 4w);
4. ``FCNHead`` auxiliary on level 3 (stride patch): 3x3 conv, Dropout2d(0.1), ``conv_seg``;
5. loss = CE(logits resized to the label size) + 0.4 CE(aux resized); distillation adds
   channel-wise divergence on the two models' ``decode_head.conv_seg`` outputs (tau 1, weight 3).

BatchNorm stands for the official SyncBN (convert with ``nn.SyncBatchNorm.convert_sync_batchnorm``
under DDP). Convolutions of the heads have no bias before BN, as mmseg's ``ConvModule``. The ViT
is timm's: no per-block relative position bias (official: zero-initialised, so equal at the start)
and no layer scale (official: initialised to 1.0, the same function at the start).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import cwd_floor, cwd_loss
from ..models import register_builder
from ..tasks import TeacherForward, freeze
from .backbone import build_vit, check_scales, default_out_indices, dense_param_groups, rescale_layers, vit_feature_maps
from .metrics import confusion_matrix, iou_per_class


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """mmseg ``ConvModule`` with BN + ReLU: conv (no bias, 'same' padding) -> BN -> ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ViTPyramid(nn.Module):
    """Official ``fpn1..fpn4``: four maps (B, D, h, w) -> (B, D, s_i h, s_i w) for ``scales`` s_i.

    The official scales (4, 2, 1, 0.5) give ConvT-BN-GELU-ConvT, ConvT, identity, 2x2 max-pool
    (:func:`rescale_layers`); the width stays D at every level.
    """

    def __init__(self, dim: int, scales=(4, 2, 1, 0.5)):
        super().__init__()
        for i, scale in enumerate(scales, 1):
            setattr(self, f"fpn{i}", nn.Sequential(*rescale_layers(dim, scale, nn.BatchNorm2d, halve=False)[0]))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [op(m) for op, m in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps, strict=True)]


class UPerHead(nn.Module):
    """UperNet decode head (Xiao et al. 2018) as mmseg's ``UPerHead``, on 4 levels of width ``in_dim``.

    ``P4 = bottleneck([L4, up(pool_s(L4)) for s in pool_scales])`` (pooling pyramid module);
    ``P_i = lateral_i(L_i) + up(P_{i+1})`` top-down for i = 3, 2, 1; ``F_i = fpn_conv_i(P_i)`` (i < 4),
    ``F_4 = P4``; ``logits = conv_seg(dropout(fpn_bottleneck(concat_i up(F_i))))`` at level 1's size.
    """

    def __init__(self, in_dim: int, channels: int, num_classes: int, pool_scales=(1, 2, 3, 6),
                 dropout: float = 0.1):
        super().__init__()
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_dim, channels, 1))
                                         for s in pool_scales)
        self.bottleneck = conv_bn_relu(in_dim + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(conv_bn_relu(in_dim, channels, 1) for _ in range(3))
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fpn_bottleneck = conv_bn_relu(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg BaseDecodeHead.init_weights
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """4 maps (B, D, h_i, w_i), finest first -> logits (B, K, h_1, w_1)."""
        top = levels[3]
        pooled = [_resize(m(top), top.shape[-2:]) for m in self.psp_modules]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels[:3])]
        laterals.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:3])] + [laterals[3]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.conv_seg(self.dropout(fused))


class MLPHead(nn.Module):
    """A lighter multi-scale decode head (SegFormer's all-MLP decoder, Xie et al. 2021, without norm layers).

    Each level -> 1x1 conv to ``channels``, resized to level 1's size, concatenated; 1x1 fuse conv +
    GELU, Dropout2d, ``conv_seg`` 1x1 -> logits (B, K, h_1, w_1). Same inputs and output as
    :class:`UPerHead`, about a tenth of its cost.
    """

    def __init__(self, in_dim: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear = nn.ModuleList(nn.Conv2d(in_dim, channels, 1) for _ in range(4))
        self.fuse = nn.Sequential(nn.Conv2d(4 * channels, channels, 1), nn.GELU())
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        maps = [_resize(proj(x), size) if x.shape[-2:] != size else proj(x) for proj, x in zip(self.linear, levels)]
        return self.conv_seg(self.dropout(self.fuse(torch.cat(maps, dim=1))))


class FCNHead(nn.Module):
    """mmseg ``FCNHead`` (num_convs 1, no input concat): conv3x3-BN-ReLU, Dropout2d, ``conv_seg``."""

    def __init__(self, in_dim: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.convs = conv_bn_relu(in_dim, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class ViTSegmenter(nn.Module):
    """UperNet on a plain ViT (``name`` = ``vit_*`` / ``mae_vit_*`` encoder), K = ``num_classes``.

    ``channels``: UperNet width (default the ViT width: official 384 for ViT-S, 768 for ViT-B);
    ``aux_channels``: FCN width (default half of ``channels``; official 256); ``out_indices``: the 4
    blocks read (default :func:`default_out_indices`); ``scales``: pyramid sizes relative to the
    patch grid (official (4, 2, 1, 0.5): logits at stride patch / 4, 4 px for patch 16; a small patch
    on small images may prefer (2, 1, 0.5, 0.25)). Submodule names follow mmseg
    (``decode_head.conv_seg``, ``auxiliary_head``) so the distilled layer is named as officially.
    """

    def __init__(self, name: str, num_classes: int = 11, img_size: int = 64, out_indices=None,
                 channels: int | None = None, aux_channels: int | None = None, pool_scales=(1, 2, 3, 6),
                 dropout: float = 0.1, scales=(4, 2, 1, 0.5), decoder: str = "upernet", **overrides):
        super().__init__()
        self.vit = build_vit(name, img_size, **overrides)
        dim = self.vit.embed_dim
        scales = check_scales(scales, self.vit.patch_embed.grid_size[0])
        self.out_indices = tuple(out_indices or default_out_indices(len(self.vit.blocks)))
        if len(self.out_indices) != 4:
            raise ValueError(f"out_indices must name 4 blocks, got {self.out_indices}")
        channels = channels or dim
        aux_channels = aux_channels or max(channels // 2, 1)
        self.num_classes = num_classes
        self.pyramid = ViTPyramid(dim, scales)
        if decoder == "upernet":
            self.decode_head = UPerHead(dim, channels, num_classes, tuple(pool_scales), dropout)
        elif decoder == "mlp":
            self.decode_head = MLPHead(dim, channels, num_classes, dropout)
        else:
            raise ValueError(f"decoder must be 'upernet' or 'mlp', got {decoder!r}")
        self.auxiliary_head = FCNHead(dim, aux_channels, num_classes, dropout)
        self.arch = {"builder": "segmenter", "name": name, "num_classes": num_classes, "img_size": img_size,
                     "out_indices": list(self.out_indices), "channels": channels, "aux_channels": aux_channels,
                     "pool_scales": list(pool_scales), "dropout": dropout, "scales": list(scales), "decoder": decoder, **overrides}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> 4 maps (B, D, s_i h, s_i w), h = H / patch: (4h, 4w) .. (h/2, w/2) officially."""
        return self.pyramid(vit_feature_maps(self.vit, x, self.out_indices))

    def forward(self, x: torch.Tensor) -> dict:
        """``{"logits": (B, K, s h, s w)}``, ``s`` the finest pyramid scale (4 officially: 1/4 of the input for
        patch 16; 2 in the Fashion-MNIST profiles), before upsampling, plus in
        training mode ``"aux"`` (B, K, h, w); mmseg also runs the auxiliary head in training only."""
        levels = self.forward_features(x)
        out = {"logits": self.decode_head(levels)}
        if self.training:
            out["aux"] = self.auxiliary_head(levels[2])
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel classes (B, H, W): argmax of the logits resized to the input (mmseg ``whole`` mode)."""
        return _resize(self.forward(x)["logits"], x.shape[-2:]).argmax(1)


def seg_loss(out: dict, masks: torch.Tensor, aux_weight: float = 0.4, ignore_index: int = 255):
    """``L = CE(up(logits), y) + aux_weight * CE(up(aux), y)``, up = bilinear resize to y's (H, W).

    out: :meth:`ViTSegmenter.forward` (training mode); masks int64 (B, H, W). Pixels equal to
    ``ignore_index`` do not count. Returns (loss, {"seg": ..., "aux": ...}) (detached parts).
    """
    size = masks.shape[-2:]
    seg = F.cross_entropy(_resize(out["logits"].float(), size), masks, ignore_index=ignore_index)
    aux = F.cross_entropy(_resize(out["aux"].float(), size), masks, ignore_index=ignore_index)
    return seg + aux_weight * aux, {"seg": seg.detach(), "aux": aux.detach()}


@torch.no_grad()
def evaluate_segmentation(model: ViTSegmenter, loader, num_classes: int | None = None) -> dict:
    """``{"mIoU", "aAcc"}`` (fractions) of ``model.predict`` over a segmentation ``DenseLoader``."""
    model.eval()
    k = num_classes or model.num_classes
    device = next(model.parameters()).device
    cm = torch.zeros(k, k, dtype=torch.int64)
    for x, masks in loader:
        cm += confusion_matrix(model.predict(x.to(device)), masks.to(device), k)
    return {"mIoU": float(iou_per_class(cm).nanmean()), "aAcc": float(cm.diagonal().sum() / cm.sum())}


# ------------------------------------------------------------------------------------ tasks
class SegmentationTraining:
    """Supervised UperNet training (teacher, and the non-distilled baselines): ``seg_loss`` only.

    ``layer_decay`` 0.65 is the official ADE20K value (see :func:`dense_param_groups`).
    """

    def __init__(self, model: ViTSegmenter, aux_weight: float = 0.4, layer_decay: float | None = 0.65):
        self.model, self.aux_weight, self.layer_decay = model, aux_weight, layer_decay

    def param_groups(self, weight_decay):
        return dense_param_groups(self.model, weight_decay, self.layer_decay, "vit.")

    def loss(self, model, batch):
        x, masks = batch
        return seg_loss(model(x), masks, self.aux_weight)


class SegmentationDistillation(TeacherForward, SegmentationTraining):
    """G2SD specific distillation for segmentation (official ``distill_cwd.py`` run by ``run.sh``).

    ``L = CE + 0.4 CE_aux + CWD(z_S, z_T)``, z = ``decode_head.conv_seg`` outputs (B, K, 4h, 4w) of
    student (train mode, after its dropout) and teacher (frozen, eval, no_grad, every step as
    officially), ``CWD`` = :func:`g2sd_lib.losses.cwd_loss` with tau 1 and weight 3 (``run.sh``
    overrides the config's 10). The logits are read from the forward outputs, which are exactly
    what the official forward hooks on ``conv_seg`` capture.
    """

    def __init__(self, teacher: ViTSegmenter, student: ViTSegmenter, tau: float = 1.0, weight: float = 3.0,
                 aux_weight: float = 0.4, layer_decay: float | None = 0.65):
        t, s = teacher.arch, student.arch
        if (t["num_classes"], t["img_size"]) != (s["num_classes"], s["img_size"]) or \
                teacher.vit.patch_embed.patch_size != student.vit.patch_embed.patch_size:
            raise ValueError("teacher and student segmenters must share num_classes, img_size and patch size "
                             "(CWD compares their logits position by position)")
        super().__init__(student, aux_weight, layer_decay)
        self.teacher, self.tau, self.weight = freeze(teacher), tau, weight

    def loss(self, model, batch):
        x, masks = batch
        teacher_logits = self.teacher_forward(self.teacher, x)["logits"]
        out = model(x)
        loss, parts = seg_loss(out, masks, self.aux_weight)
        cwd = cwd_loss(out["logits"], teacher_logits, tau=self.tau, weight=self.weight)
        # cwd_floor: the teacher's entropy part of cwd, constant in the student; logged so that the
        # curves can show cwd above it, the part that moves (g2sd_lib.curves.plot_curves)
        floor = cwd_floor(teacher_logits, tau=self.tau, weight=self.weight)
        return loss + cwd, {**parts, "cwd": cwd.detach(), "cwd_floor": floor}


__all__ = ["FCNHead", "SegmentationDistillation", "SegmentationTraining", "UPerHead", "ViTPyramid", "ViTSegmenter",
           "evaluate_segmentation", "seg_loss"]


register_builder("segmenter", ViTSegmenter)
