"""Dense-task metrics, self-written (no pycocotools / torchmetrics in the environment).

* segmentation: mmseg's mIoU, per-class IoU accumulated over all pixels of the set, then the mean
  over the classes that occur;
* detection: COCO box AP (``COCOeval`` with ``iouType='bbox'``, area range "all"): per class and
  IoU threshold 0.50:0.05:0.95, greedy matching of score-sorted detections, 101-point interpolated
  precision, mean over (threshold, class) pairs whose class has ground truth.
"""

import numpy as np
import torch
from torchvision.ops import box_iou

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """int64 (K, K), rows = true class, columns = predicted, over all pixels of (B, H, W) labels."""
    keep = target != ignore_index
    flat = target[keep] * num_classes + pred[keep]
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` float64 (K,), NaN for classes absent from both sides."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.nan)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """mmseg's mIoU: IoU per class accumulated over all pixels, mean over classes that occur (NaN-mean).

    Background (class 0) counts as a class here; ADE20K has none (``reduce_zero_label``).
    """
    return float(iou_per_class(confusion_matrix(pred, target, num_classes, ignore_index)).nanmean())




def _match(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """COCO greedy matching: detections (score order) x ground truths IoU (D, G) -> true positives (T, D).

    For each threshold t, detection d takes the unmatched ground truth of highest IoU if that IoU
    is >= t (``COCOeval.evaluateImg``); a matched ground truth is not matched again.
    """
    T, (D, G) = len(thresholds), ious.shape
    tp = np.zeros((T, D), dtype=bool)
    if G == 0:
        return tp
    used = np.zeros((T, G), dtype=bool)
    rows = np.arange(T)
    need = np.minimum(thresholds, 1 - 1e-10)
    for d in range(D):
        cand = np.where(used, -1.0, ious[d][None, :])
        best = cand.argmax(1)
        ok = cand[rows, best] >= need
        tp[ok, d] = True
        used[rows[ok], best[ok]] = True
    return tp


def _interpolated_ap(tp: np.ndarray, scores: np.ndarray, npos: int) -> np.ndarray:
    """AP per threshold (T,) from true-positive flags (T, D) of all detections of one class.

    Detections sorted by score (stable, as COCO's mergesort); ``recall = cumTP / npos``,
    ``precision = cumTP / (cumTP + cumFP)`` made non-increasing from the right; AP = mean over the
    101 recall points r of the precision at the first detection reaching recall >= r (0 if none).
    """
    T, D = tp.shape
    ap = np.zeros(T)
    if D == 0:
        return ap
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[:, order]
    ctp, cfp = np.cumsum(tp, 1), np.cumsum(~tp, 1)
    recall = ctp / npos
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    for t in range(T):
        idx = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        ap[t] = np.where(idx < D, precision[t][np.minimum(idx, D - 1)], 0.0).mean()
    return ap


def box_ap(predictions, targets, iou_thresholds=COCO_IOU_THRESHOLDS, max_dets: int = 100) -> dict:
    """COCO-style box AP over a set of images.

    predictions: per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,)}`` (torchvision's
    eval output); targets: per image ``{"boxes": (G, 4), "labels": (G,)}``. Per image and class the
    ``max_dets`` best-scored detections count. Returns ``{"AP", "AP50", "AP75"}`` as fractions
    (AP = mean over IoU 0.50:0.95 and the classes that have ground truth; NaN without any).
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    classes = sorted({int(c) for t in targets for c in t["labels"].tolist()})
    ap = np.full((len(thresholds), len(classes)), np.nan)
    for ci, c in enumerate(classes):
        flags, scores, npos = [], [], 0
        for pred, truth in zip(predictions, targets, strict=True):
            gt = truth["boxes"][truth["labels"] == c].float()
            keep = pred["labels"] == c
            s = pred["scores"][keep]
            order = torch.argsort(-s, stable=True)[:max_dets]
            dt = pred["boxes"][keep][order].float()
            npos += len(gt)
            flags.append(_match(box_iou(dt, gt).numpy(), thresholds))
            scores.append(s[order].numpy())
        ap[:, ci] = _interpolated_ap(np.concatenate(flags, 1), np.concatenate(scores), npos)

    def pick(t):
        return float(np.nanmean(ap[np.isclose(thresholds, t)])) if np.isclose(thresholds, t).any() else float("nan")

    mean = float(np.nanmean(ap)) if ap.size else float("nan")
    return {"AP": mean, "AP50": pick(0.5), "AP75": pick(0.75)}


__all__ = ["COCO_IOU_THRESHOLDS", "box_ap", "confusion_matrix", "iou_per_class", "mean_iou"]
