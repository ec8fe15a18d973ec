"""Dense tasks of G2SD's specific distillation: semantic segmentation and object detection.

On the ``smoke`` / ``fmnist`` profiles both run on canvases of Fashion-MNIST items
(:mod:`.data`) with timm ViTs: UperNet + FCN auxiliary head with channel-wise distillation of the
logits (:mod:`.segmentation`, official ``G2SD_seg_dis``), and a ViTDet-style Faster R-CNN with
FRS-style pyramid + objectness distillation (:mod:`.detection`, official ``G2SD_det_dis``). The
``paper`` profile runs in detectron2 / mmsegmentation; :mod:`.paper` records those recipes and
where our losses plug in.

Dense models record ``model.arch`` (``builder`` ``segmenter`` or ``detector``), so the training
engine's ``save_model`` writes them and :func:`load_dense_model` rebuilds them.
"""

from ..checkpoints import CheckpointError, _load_strict, read_state_dict
from .backbone import build_vit, default_out_indices, dense_param_groups, load_backbone, vit_feature_maps
from .data import DenseLoader, dense_subset, load_dense, make_canvases, save_dense
from .detection import (DetectionDistillation, DetectionTraining, SimpleFeaturePyramid, add_adapters, build_detector,
                        evaluate_detection)
from .metrics import box_ap, confusion_matrix, iou_per_class, mean_iou
from .segmentation import (SegmentationDistillation, SegmentationTraining, ViTSegmenter, evaluate_segmentation,
                           seg_loss)


def build_dense_model(arch: dict):
    """Inverse of a dense model's ``.arch``: an untrained ``ViTSegmenter`` or detector."""
    arch = dict(arch)
    builder = arch.pop("builder")
    if builder == "segmenter":
        return ViTSegmenter(**arch)
    if builder == "detector":
        return build_detector(**arch)
    raise ValueError(f"not a dense model builder: {builder!r} (expected 'segmenter' or 'detector')")


def load_dense_model(path):
    """Rebuild a dense model from a ``save_model`` file and its sidecar, and load it strictly."""
    state_dict, meta = read_state_dict(path)
    if "arch" not in meta:
        raise CheckpointError(f"{path} has no sidecar with an 'arch'; the dense model it holds is unknown")
    model = build_dense_model(meta["arch"])
    _load_strict(model, state_dict, path)
    return model


__all__ = ["DenseLoader", "DetectionDistillation", "DetectionTraining", "SegmentationDistillation",
           "SegmentationTraining", "SimpleFeaturePyramid", "ViTSegmenter", "add_adapters", "box_ap", "build_dense_model",
           "build_detector", "build_vit", "confusion_matrix", "default_out_indices", "dense_param_groups",
           "dense_subset", "evaluate_detection", "evaluate_segmentation", "iou_per_class", "load_backbone",
           "load_dense", "load_dense_model", "make_canvases", "mean_iou", "save_dense", "seg_loss",
           "vit_feature_maps"]
