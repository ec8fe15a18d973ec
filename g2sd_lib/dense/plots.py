"""Figures of the dense tasks: the canvases and teacher-vs-student predictions on the same images.

Class colours are fixed (background black, the 10 Fashion-MNIST classes from matplotlib's
``tab10``), so every figure reads with the same legend.
"""

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle
from matplotlib.transforms import Bbox

from ..curves import TEXT_PT
from ..fmnist import FASHION_MNIST_CLASSES

CLASS_NAMES = ("background",) + FASHION_MNIST_CLASSES  # index = mask value / box label
PALETTE = ListedColormap([(0.0, 0.0, 0.0)] + [plt.get_cmap("tab10")(i)[:3] for i in range(10)])
LABEL_PAD = 1.0  # points of dark background around a box's label


def _axis(ax, title=None):
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=TEXT_PT + 1)


def _image(ax, image: torch.Tensor, title=None):
    """image: (1, H, W) uint8 or float."""
    ax.imshow(image[0].float(), cmap="gray")
    _axis(ax, title)


def _mask(ax, mask: torch.Tensor, title=None):
    ax.imshow(mask.numpy(), cmap=PALETTE, vmin=0, vmax=len(CLASS_NAMES) - 1, interpolation="nearest")
    _axis(ax, title)


def _boxes(ax, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None) -> list:
    """Draw xyxy pixel-edge boxes (imshow pixel centres sit on integers, edges on half-integers), each
    with its class (and score); returns (box, label) pairs for :func:`_place_labels`, which moves the
    labels once the figure is laid out."""
    pending = []
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        x0, y0, x1, y1 = box
        colour = PALETTE(int(label))
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2))
        text = CLASS_NAMES[int(label)] if scores is None else f"{CLASS_NAMES[int(label)]} {float(scores[i]):.2f}"
        t = ax.text(x0 - 0.5, y0 - 0.5, text, color=colour, fontsize=TEXT_PT, va="bottom", ha="left", clip_on=True,
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": LABEL_PAD, "linewidth": 0})
        t.set_in_layout(False)
        pending.append((box, t))
    return pending


def _spots(box_px: Bbox, size: tuple[float, float], frame: Bbox) -> list[Bbox]:
    """Where a label of ``size`` (pixels) may go, best first: above the box, inside its top edge,
    below it, inside its bottom edge (left-aligned with the box, else right-aligned), then a grid of
    half-label steps over the panel, the nearest to the box's top-left corner first."""
    w, h = size
    lefts = [min(max(x, frame.x0), frame.x1 - w) for x in (box_px.x0, box_px.x1 - w)]
    near = [Bbox.from_bounds(x, y, w, h) for y in (box_px.y1, box_px.y1 - h, box_px.y0 - h, box_px.y0) for x in lefts]
    grid = [Bbox.from_bounds(frame.x0 + i * w / 2, frame.y0 + k * h / 2, w, h)
            for i in range(int(2 * (frame.width - w) / w) + 1) for k in range(int(2 * (frame.height - h) / h) + 1)]
    return near + sorted(grid, key=lambda g: (g.x0 - box_px.x0) ** 2 + (g.y1 - box_px.y1) ** 2)


def _place_labels(fig, pending: list) -> None:
    """Move each box label to its first spot (:func:`_spots`) inside its panel and off every label
    already placed there, measured on the laid-out figure."""
    renderer = fig.canvas.get_renderer()
    pad = LABEL_PAD * fig.dpi / 72  # the label's background reaches this far beyond its text
    taken = {}
    for box, t in pending:
        ax = t.axes
        frame = ax.get_window_extent(renderer).padded(-1)  # a pixel inside the panel's edge
        (x0, top), (x1, bottom) = ax.transData.transform([(box[0] - 0.5, box[1] - 0.5), (box[2] - 0.5, box[3] - 0.5)])
        text = t.get_window_extent(renderer)
        spots = _spots(Bbox.from_extents(x0, bottom, x1, top), (text.width + 2 * pad, text.height + 2 * pad), frame)
        free = [s for s in spots if frame.contains(s.x0, s.y0) and frame.contains(s.x1, s.y1)
                and not any(s.padded(pad).overlaps(o) for o in taken.get(ax, []))]  # a gap between labels
        spot = (free or spots)[0]
        t.set_position(ax.transData.inverted().transform((spot.x0 + pad, spot.y0 + pad)))
        taken.setdefault(ax, []).append(spot)


def _legend(fig) -> float:
    """The class colours, below the panels; returns the share of the figure's height it takes."""
    handles = [Patch(color=PALETTE(i), label=name) for i, name in enumerate(CLASS_NAMES)]
    legend = fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=TEXT_PT, frameon=False)
    return legend.get_window_extent(fig.canvas.get_renderer()).height / fig.bbox.height + 0.01


def plot_canvases(data: dict, n: int = 6):
    """Columns: the first ``n`` canvases; rows: image, class mask, boxes with their labels."""
    n = min(n, len(data["images"]))
    fig, axes = plt.subplots(3, n, figsize=(2.1 * n, 6.8), squeeze=False)
    pending = []
    for j in range(n):
        _image(axes[0, j], data["images"][j], f"canvas {j}")
        _mask(axes[1, j], data["masks"][j], "class mask" if j == 0 else None)
        _image(axes[2, j], data["images"][j], "boxes" if j == 0 else None)
        pending += _boxes(axes[2, j], data["boxes"][j], data["labels"][j])
    fig.tight_layout(rect=(0, _legend(fig), 1, 1))
    _place_labels(fig, pending)
    return fig


def plot_segmentation_predictions(images: torch.Tensor, truth: torch.Tensor, predictions: dict[str, torch.Tensor]):
    """One row per image: the canvas, the true mask, then each model's predicted mask (B, H, W)."""
    cols = 2 + len(predictions)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.8 * cols, 1.8 * len(images) + 0.8), squeeze=False)
    for i in range(len(images)):
        _image(axes[i, 0], images[i], "canvas" if i == 0 else None)
        _mask(axes[i, 1], truth[i], "truth" if i == 0 else None)
        for j, (name, pred) in enumerate(predictions.items()):
            _mask(axes[i, 2 + j], pred[i], name if i == 0 else None)
    fig.tight_layout(rect=(0, _legend(fig), 1, 1))
    return fig


def plot_detection_predictions(images: torch.Tensor, truths: list[dict], predictions: dict[str, list[dict]],
                               score_threshold: float | None = 0.5, best: list[int] | None = None):
    """One row per image: true boxes, then each model's detections.

    Shown per model and image: those scoring at least ``score_threshold``, or, with ``best`` (one
    count per image), the ``best[i]`` highest-scored ones whatever their score (torchvision sorts
    its detections by score), which suits weak detectors whose scores stay low.
    """
    cols = 1 + len(predictions)
    rule = "best k" if best is not None else f"score >= {score_threshold}"
    fig, axes = plt.subplots(len(images), cols, figsize=(2.4 * cols, 2.4 * len(images) + 0.8), squeeze=False)
    pending = []
    for i in range(len(images)):
        _image(axes[i, 0], images[i], "truth (k boxes)" if i == 0 and best is not None else ("truth" if i == 0 else None))
        pending += _boxes(axes[i, 0], truths[i]["boxes"], truths[i]["labels"])
        for j, (name, preds) in enumerate(predictions.items()):
            p = preds[i]
            keep = slice(0, best[i]) if best is not None else p["scores"] >= score_threshold
            _image(axes[i, 1 + j], images[i], f"{name} ({rule})" if i == 0 else None)
            pending += _boxes(axes[i, 1 + j], p["boxes"][keep], p["labels"][keep], p["scores"][keep])
    fig.tight_layout(rect=(0, _legend(fig), 1, 1))
    _place_labels(fig, pending)
    return fig


__all__ = ["CLASS_NAMES", "PALETTE", "plot_canvases", "plot_detection_predictions", "plot_segmentation_predictions"]
