"""Figures of the dense tasks: the canvases and teacher-vs-student predictions on the same images.

Class colours are fixed (background black, the 10 Fashion-MNIST classes from matplotlib's
``tab10``), so every figure reads with the same legend.
"""

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle

from ..data import FASHION_MNIST_CLASSES

CLASS_NAMES = ("background",) + FASHION_MNIST_CLASSES  # index = mask value / box label
PALETTE = ListedColormap([(0.0, 0.0, 0.0)] + [plt.get_cmap("tab10")(i)[:3] for i in range(10)])


def _axis(ax, title=None):
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _image(ax, image: torch.Tensor, title=None):
    """image: (1, H, W) uint8 or float."""
    ax.imshow(image[0].float(), cmap="gray")
    _axis(ax, title)


def _mask(ax, mask: torch.Tensor, title=None):
    ax.imshow(mask.numpy(), cmap=PALETTE, vmin=0, vmax=len(CLASS_NAMES) - 1, interpolation="nearest")
    _axis(ax, title)


def _label_place(box, size: tuple[float, float], taken: list, height: float, width: float) -> tuple[float, float]:
    """Top-left corner (x, y) of a label for ``box`` that overlaps no rectangle in ``taken``: above
    the box, inside its top edge, below it, then further down; clipped to the image (w, h)."""
    x0, y0, x1, y1 = box
    w, h = size
    x = min(max(x0 - 0.5, -0.5), w - 0.5 - width)
    candidates = [y0 - 0.5 - height, y0 - 0.5, y1 - 0.5] + [y1 - 0.5 + k * height for k in range(1, 8)]
    clipped = [min(max(y, -0.5), h - 0.5 - height) for y in candidates]
    for y in clipped:
        if not any(x < tx + tw and tx < x + width and y < ty + th and ty < y + height for tx, ty, tw, th in taken):
            return x, y
    return x, clipped[0]


def _boxes(ax, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None):
    """Draw xyxy pixel-edge boxes (imshow pixel centres sit on integers, edges on half-integers), each
    with its class (and score), labels placed so that they do not overlap each other."""
    w, h = ax.get_xlim()[1] + 0.5, ax.get_ylim()[0] + 0.5  # after imshow: (-0.5, W - 0.5), (H - 0.5, -0.5)
    height = h / 9  # a 5-point label in a ~1.9-inch panel
    taken = []
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        x0, y0, x1, y1 = box
        colour = PALETTE(int(label))
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2))
        text = CLASS_NAMES[int(label)] if scores is None else f"{CLASS_NAMES[int(label)]} {float(scores[i]):.2f}"
        width = min(len(text) * height * 0.33, w)
        x, y = _label_place(box, (w, h), taken, height, width)
        taken.append((x, y, width, height))
        ax.text(x, y, text, color=colour, fontsize=5, va="top", ha="left", clip_on=True,
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.3, "linewidth": 0})


def _legend(fig):
    handles = [Patch(color=PALETTE(i), label=name) for i, name in enumerate(CLASS_NAMES)]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)


def plot_canvases(data: dict, n: int = 6):
    """Columns: the first ``n`` canvases; rows: image, class mask, boxes with their labels."""
    n = min(n, len(data["images"]))
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    for j in range(n):
        _image(axes[0, j], data["images"][j], f"canvas {j}")
        _mask(axes[1, j], data["masks"][j], "class mask" if j == 0 else None)
        _image(axes[2, j], data["images"][j], "boxes" if j == 0 else None)
        _boxes(axes[2, j], data["boxes"][j], data["labels"][j])
    _legend(fig)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_segmentation_predictions(images: torch.Tensor, truth: torch.Tensor, predictions: dict[str, torch.Tensor]):
    """One row per image: the canvas, the true mask, then each model's predicted mask (B, H, W)."""
    cols = 2 + len(predictions)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.6 * cols, 1.7 * len(images) + 0.6), squeeze=False)
    for i in range(len(images)):
        _image(axes[i, 0], images[i], "canvas" if i == 0 else None)
        _mask(axes[i, 1], truth[i], "truth" if i == 0 else None)
        for j, (name, pred) in enumerate(predictions.items()):
            _mask(axes[i, 2 + j], pred[i], name if i == 0 else None)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
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
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.9 * len(images) + 0.6), squeeze=False)
    for i in range(len(images)):
        _image(axes[i, 0], images[i], "truth (k boxes)" if i == 0 and best is not None else ("truth" if i == 0 else None))
        _boxes(axes[i, 0], truths[i]["boxes"], truths[i]["labels"])
        for j, (name, preds) in enumerate(predictions.items()):
            p = preds[i]
            keep = slice(0, best[i]) if best is not None else p["scores"] >= score_threshold
            _image(axes[i, 1 + j], images[i], f"{name} ({rule})" if i == 0 else None)
            _boxes(axes[i, 1 + j], p["boxes"][keep], p["labels"][keep], p["scores"][keep])
    _legend(fig)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


__all__ = ["CLASS_NAMES", "PALETTE", "plot_canvases", "plot_detection_predictions", "plot_segmentation_predictions"]
