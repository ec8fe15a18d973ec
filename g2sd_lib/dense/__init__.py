"""Dense tasks of G2SD's specific distillation: semantic segmentation and object detection.

On the ``smoke`` / ``fmnist`` profiles both run on canvases of Fashion-MNIST items
(:mod:`.data`) with timm ViTs: UperNet + FCN auxiliary head with channel-wise distillation of the
logits (:mod:`.segmentation`, official ``G2SD_seg_dis``), and a ViTDet-style Faster R-CNN with
FRS-style pyramid + objectness distillation (:mod:`.detection`, official ``G2SD_det_dis``). The
``paper`` profile runs in detectron2 / mmsegmentation; :mod:`.paper` records those recipes and
where our losses plug in.

Dense models record ``model.arch`` (``builder`` ``segmenter`` or ``detector``), so the training
engine's ``save_model`` writes them and :func:`g2sd_lib.models.build_model`, the one registry of
every model, rebuilds them: ``load_dense_model`` is :func:`g2sd_lib.checkpoints.load_saved_model`
(sha256 and sidecar checked, strict load) under the name the dense notebooks use.
"""

from ..checkpoints import load_saved_model as load_dense_model
from .backbone import build_vit, default_out_indices, dense_param_groups, load_backbone, vit_feature_maps
from .canvases import DenseLoader, dense_subset, load_dense, make_canvases, save_dense
from .detection import (DetectionDistillation, DetectionTraining, SimpleFeaturePyramid, add_adapters, build_detector,
                        evaluate_detection)
from .metrics import box_ap, confusion_matrix, iou_per_class, mean_iou
from .segmentation import (SegmentationDistillation, SegmentationTraining, ViTSegmenter, evaluate_segmentation,
                           seg_loss)

__all__ = ["DenseLoader", "DetectionDistillation", "DetectionTraining", "SegmentationDistillation",
           "SegmentationTraining", "SimpleFeaturePyramid", "ViTSegmenter", "add_adapters", "box_ap",
           "build_detector", "build_vit", "confusion_matrix", "default_out_indices", "dense_param_groups",
           "dense_subset", "evaluate_detection", "evaluate_segmentation", "iou_per_class", "load_backbone",
           "load_dense", "load_dense_model", "make_canvases", "mean_iou", "save_dense", "seg_loss",
           "vit_feature_maps"]
