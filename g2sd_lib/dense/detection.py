"""Object detection: a ViTDet-style detector in torchvision's Faster R-CNN, and its G2SD stage.

The official ``G2SD_det_dis`` is detectron2's ViTDet **Mask** R-CNN; here torchvision's
``FasterRCNN`` hosts the same backbone (the mask branch is not distilled officially, and the
canvases' boxes are what we evaluate). Data flow:

1. ViT last-block map (B, D, h, w), h = H / patch (no final norm, as ViTDet);
2. ``SimpleFeaturePyramid`` (Li et al. 2022): ``simfp_2`` ConvT-LN-GELU-ConvT (x4),
   ``simfp_3`` ConvT (x2), ``simfp_4`` identity, ``simfp_5`` max-pool (/2), each then 1x1 conv-LN +
   3x3 conv-LN to ``out_channels``; p6 = 1x1 max-pool stride 2 of p5 (``LastLevelMaxPool``):
   levels p2..p6 at strides patch/4 .. 4 patch (4 .. 64 for patch 16);
3. RPN (2 convs, 3 anchors per location: one size per level, ratios 0.5 / 1 / 2), RoIAlign 7x7 on
   p2..p5, box head 4 conv (LN) + 1 fc, as ViTDet's ``mask_rcnn_vitdet.py``.

Images are normalised by the data loader; the torchvision transform is told mean 0 / std 1 and a
fixed size equal to the ViT's ``img_size`` (no resizing of same-size inputs, no padding).

Deviations from ViTDet, all for the small canvases or from torchvision: Faster instead of Mask
R-CNN; global attention in every block (ViTDet: 14 x 14 windows + 4 global blocks with relative
positions, pointless on an 8 x 8 patch grid); anchors 4 x stride instead of 8 x; torchvision's
RoIAlign (``aligned=False``) instead of detectron2's ``ROIAlignV2``; teacher in eval + no_grad.
"""

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ..losses import distill_warmup, frs_losses
from ..models import register_builder
from ..tasks import TeacherForward, freeze
from .backbone import build_vit, check_scales, dense_param_groups, rescale_layers, vit_feature_maps
from .metrics import box_ap

LEVELS = ("p2", "p3", "p4", "p5", "p6")


class SimpleFeaturePyramid(nn.Module):
    """ViTDet backbone: x (B, C, H, W) -> OrderedDict p2..p6 of (B, out_channels, s h, s w).

    ``scales`` of p2..p5 relative to the patch grid h = H / patch; p6 is p5 subsampled by 2.
    ViTDet's (4, 2, 1, 0.5): ConvT-LN-GELU-ConvT halving the width twice, ConvT halving it,
    identity, 2x2 max-pool (:func:`rescale_layers`).
    """

    def __init__(self, vit: nn.Module, out_channels: int = 256, scales=(4, 2, 1, 0.5)):
        super().__init__()
        self.vit, self.out_channels = vit, out_channels
        scales = check_scales(scales, vit.patch_embed.grid_size[0])
        for stage, scale in zip((2, 3, 4, 5), scales):  # names as detectron2's, so the official keys read alike
            layers, width = rescale_layers(vit.embed_dim, scale, LayerNorm2d, halve=True)
            setattr(self, f"simfp_{stage}", nn.Sequential(
                *layers, nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)))

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        last = vit_feature_maps(self.vit, x, [len(self.vit.blocks) - 1])[0]
        out = OrderedDict((f"p{s}", getattr(self, f"simfp_{s}")(last)) for s in (2, 3, 4, 5))
        out["p6"] = F.max_pool2d(out["p5"], kernel_size=1, stride=2)
        return out


def build_detector(name: str, num_classes: int = 11, img_size: int = 64, out_channels: int = 256,
                   scales=(4, 2, 1, 0.5), anchor_sizes=None, box_head_convs: int = 4, box_head_fc: int = 1024,
                   adapter_channels: int | None = None, detector_kwargs: dict | None = None, **overrides) -> FasterRCNN:
    """Faster R-CNN on a ViT ``name`` with a simple feature pyramid; ``num_classes`` includes background 0.

    ``scales``: the pyramid's p2..p5 sizes relative to the patch grid (see :class:`SimpleFeaturePyramid`).
    ``anchor_sizes``: one per level, default 4 x its stride (patch 8 at ViTDet's scales: 8 .. 128 px;
    ViTDet uses 8 x stride, 32 .. 512, for COCO's larger objects). RoIAlign level mapping keeps ViTDet's: a box of
    14 strides of p4 (224 px for patch 16) goes to p4. ``adapter_channels``: add the distillation
    adapters (``distill_adapter``, one 3x3 conv per level, ``out_channels -> adapter_channels``);
    :class:`DetectionDistillation` adds them when missing. ``detector_kwargs`` go to ``FasterRCNN``
    (e.g. ``box_detections_per_img``); ``overrides`` to the ViT (e.g. ``drop_path_rate``).
    """
    vit = build_vit(name, img_size, **overrides)
    patch = vit.patch_embed.patch_size[0]
    strides = [patch / s for s in scales] + [2 * patch / scales[-1]]
    sizes = tuple(anchor_sizes or (max(1, round(4 * s)) for s in strides))
    backbone = SimpleFeaturePyramid(vit, out_channels, scales)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * len(LEVELS))
    pooler = MultiScaleRoIAlign(list(LEVELS[:4]), output_size=7, sampling_ratio=0, canonical_scale=14 * patch,
                                canonical_level=round(math.log2(patch)))
    box_head = FastRCNNConvFCHead((out_channels, 7, 7), [out_channels] * box_head_convs, [box_head_fc],
                                  norm_layer=LayerNorm2d)
    chans = vit.patch_embed.proj.in_channels
    model = FasterRCNN(backbone, num_classes=None, min_size=img_size, max_size=img_size, image_mean=[0.0] * chans,
                       image_std=[1.0] * chans, fixed_size=(img_size, img_size), size_divisible=img_size,
                       rpn_anchor_generator=anchors, rpn_head=RPNHead(out_channels, 3, conv_depth=2),
                       box_roi_pool=pooler, box_head=box_head,
                       box_predictor=FastRCNNPredictor(box_head_fc, num_classes), **(detector_kwargs or {}))
    model.arch = {"builder": "detector", "name": name, "num_classes": num_classes, "img_size": img_size,
                  "out_channels": out_channels, "scales": [float(x) for x in scales], "anchor_sizes": list(sizes), "box_head_convs": box_head_convs,
                  "box_head_fc": box_head_fc, "adapter_channels": adapter_channels,
                  "detector_kwargs": dict(detector_kwargs or {}), **overrides}
    if adapter_channels:
        add_adapters(model, adapter_channels)
    return model


def add_adapters(model: FasterRCNN, channels: int) -> nn.ModuleList:
    """Official ``ADAP``: per level ``nn.Conv2d(C_s, channels, 3, padding=1)``, bias, no ReLU.

    Attached as ``model.distill_adapter`` (the official student holds ``stu_adapter`` too), so they
    are trained, synchronised by DDP and saved with the student; detection itself never uses them.
    """
    c = model.backbone.out_channels
    model.distill_adapter = nn.ModuleList(nn.Conv2d(c, channels, 3, padding=1) for _ in LEVELS)
    model.arch["adapter_channels"] = channels
    return model.distill_adapter


def _targets_to(targets, device):
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


class DetectionTraining:
    """Supervised detector training (teacher, baselines): the sum of torchvision's 4 R-CNN losses.

    Batches are ``(x (B, C, S, S), targets)`` from a detection ``DenseLoader``; the engine moves x,
    the task moves the target dicts. ``layer_decay`` 0.7 is the official COCO value.
    """

    def __init__(self, model: FasterRCNN, layer_decay: float | None = 0.7):
        self.model, self.layer_decay = model, layer_decay

    def param_groups(self, weight_decay):
        return dense_param_groups(self.model, weight_decay, self.layer_decay, "backbone.vit.")

    def loss(self, model, batch):
        x, targets = batch
        losses = model(list(x.unbind(0)), _targets_to(targets, x.device))
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}


class DetectionDistillation(TeacherForward, DetectionTraining):
    """G2SD specific distillation for detection (official ``plain_distill_net.py:do_train``).

    ``L = L_R-CNN + w(it) (feat_weight sum_l feat_l + obj_weight sum_l obj_l)``, the FRS terms of
    :func:`g2sd_lib.losses.frs_losses` between ``adapter_l(F_S,l)`` and the teacher's F_T,l (p2..p6,
    raw pyramid outputs) under the mask ``max_a sigmoid(T_obj,l)``; weights 0.001 / 0.1,
    ``w(it) = min(1, it / 500)`` (:func:`distill_warmup`). ``iteration`` counts the training calls
    of :meth:`loss` (one per optimiser step when ``accum_steps`` is 1); set it when resuming.

    The student runs once, the normal torchvision train-mode forward returning its losses; forward
    hooks on ``model.backbone`` (the p2..p6 dict) and ``model.rpn.head`` (whose output is
    ``(objectness list of (N, A, H_l, W_l), deltas list)``, officially ``return_logits=True``)
    keep the tensors that forward computes, with their graph. The teacher (frozen, eval, no_grad;
    officially in train mode with drop path, see the deviations) runs backbone + RPN head only,
    as the official ``forward_rpn``.
    """

    def __init__(self, teacher: FasterRCNN, student: FasterRCNN, feat_weight: float = 0.001,
                 obj_weight: float = 0.1, warmup_iters: int = 500, layer_decay: float | None = 0.7):
        if teacher.arch["img_size"] != student.arch["img_size"] or \
                teacher.backbone.vit.patch_embed.patch_size != student.backbone.vit.patch_embed.patch_size:
            raise ValueError("teacher and student detectors must share img_size and patch size "
                             "(the FRS losses compare their pyramids position by position)")
        if not hasattr(student, "distill_adapter"):
            add_adapters(student, teacher.backbone.out_channels)
        if student.distill_adapter[0].out_channels != teacher.backbone.out_channels:
            raise ValueError(f"the student's adapters map to {student.distill_adapter[0].out_channels} channels, "
                             f"the teacher's pyramid has {teacher.backbone.out_channels}")
        super().__init__(student, layer_decay)
        self.teacher = freeze(teacher)
        self.feat_weight, self.obj_weight, self.warmup_iters = feat_weight, obj_weight, warmup_iters
        self.iteration = 0
        self._captured = {}
        student.backbone.register_forward_hook(self._keep("features"))
        student.rpn.head.register_forward_hook(self._keep("rpn_head"))

    def _keep(self, key):
        def hook(module, inputs, output):
            if module.training:
                self._captured[key] = output
        return hook

    def teacher_rpn(self, images: list[torch.Tensor]):
        """Teacher pyramid p2..p6 (N, C, H_l, W_l) and RPN objectness logits (N, A, H_l, W_l), per level."""
        return self.teacher_forward(self._teacher_rpn, images)

    def _teacher_rpn(self, images: list[torch.Tensor]):
        image_list, _ = self.teacher.transform(images)
        features = list(self.teacher.backbone(image_list.tensors).values())
        objectness, _ = self.teacher.rpn.head(features)
        return features, objectness

    def loss(self, model, batch):
        x, targets = batch
        images = list(x.unbind(0))
        t_feats, t_obj = self.teacher_rpn(images)
        self._captured.clear()
        losses = model(images, _targets_to(targets, x.device))
        s_feats = [a(f) for a, f in zip(self.model.distill_adapter, self._captured["features"].values())]
        s_obj = self._captured.pop("rpn_head")[0]
        self._captured.clear()
        feat, obj = frs_losses(s_feats, t_feats, s_obj, t_obj)
        w = distill_warmup(self.iteration, self.warmup_iters)
        feat, obj = w * self.feat_weight * feat, w * self.obj_weight * obj
        if self.model.training:
            self.iteration += 1
        parts = {k: v.detach() for k, v in losses.items()}
        parts.update(distill_feat=feat.detach(), distill_obj=obj.detach())
        return sum(losses.values()) + feat + obj, parts


@torch.no_grad()
def evaluate_detection(model: FasterRCNN, loader, max_dets: int = 100) -> dict:
    """COCO box AP of ``model`` (eval mode) over a detection ``DenseLoader``: see :func:`box_ap`."""
    model.eval()
    device = next(model.parameters()).device
    predictions, truths = [], []
    for x, targets in loader:
        out = model(list(x.to(device).unbind(0)))
        predictions += [{k: v.cpu() for k, v in o.items()} for o in out]
        truths += targets
    return {f"box_{k}": v for k, v in box_ap(predictions, truths, max_dets=max_dets).items()}


__all__ = ["DetectionDistillation", "DetectionTraining", "LEVELS", "SimpleFeaturePyramid", "add_adapters",
           "build_detector", "evaluate_detection"]


register_builder("detector", build_detector)
