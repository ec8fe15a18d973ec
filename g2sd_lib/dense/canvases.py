"""A small deterministic dense dataset: Fashion-MNIST items pasted onto canvases.

COCO and ADE20K are far beyond a laptop; the dense stages of the ``smoke`` / ``fmnist`` profiles
train on canvases of ``size x size`` pixels holding 1-4 Fashion-MNIST items each. One generation
gives both tasks their labels:

* semantic masks (N, S, S) int64: 0 = background, ``c + 1`` where item class ``c`` is visible;
* instance boxes per canvas: ``(k, 4)`` float xyxy in pixel-edge coordinates (a box of the pixels
  ``x0..x1`` is ``[x0, x1 + 1)``) around each item's *visible* pixels, as COCO boxes follow the
  visible segment, with labels ``c + 1`` in 1..10 (0 is torchvision's background); items that later
  items hide completely get no box.

An item's silhouette is its pixels ``> threshold``; items are pasted in order, each overwriting
the canvas inside its silhouette only, so later items occlude earlier ones.
"""

import numpy as np
import torch

from ..data import FMNIST_MEAN, FMNIST_STD, Normalize, TensorLoader


def make_canvases(images: torch.Tensor, labels: torch.Tensor, n: int, size: int = 64, max_items: int = 4,
                  seed: int = 0, threshold: int = 25, grid: int = 1) -> dict:
    """Compose ``n`` canvases from items of ``images`` (uint8 (M, 1, h, w) or (M, h, w)), ``labels`` (M,).

    Per canvas: a count ``k ~ U{1..max_items}``, ``k`` items drawn uniformly with replacement
    (among items whose silhouette is not empty) and top-left corners ``~ U{0..size - h}`` (items never
    leave the canvas), multiples of ``grid`` pixels (``grid`` = the ViT's patch size puts every item on
    the patch grid, as the 28 x 28 images were during pretraining); everything from one
    ``torch.Generator(seed)``, so a seed gives the same bytes.

    Returns a dict of
        ``images`` uint8 (n, 1, size, size); ``masks`` int64 (n, size, size) in 0..10;
        ``instances`` uint8 (n, size, size): 0 = background, j = the j-th pasted item (1-based);
        ``boxes`` list of n float32 (k_i, 4) xyxy; ``labels`` list of n int64 (k_i,) in 1..10.
    """
    items = images.reshape(len(images), *images.shape[-2:])
    h, w = items.shape[-2:]
    if size < max(h, w):
        raise ValueError(f"canvas size {size} is smaller than an item ({h} x {w})")
    if not 1 <= max_items <= 255:
        raise ValueError(f"max_items must be in 1..255, got {max_items}")
    usable = ((items > threshold).flatten(1).any(1)).nonzero()[:, 0]
    if len(usable) == 0:
        raise ValueError(f"no item has a pixel above threshold {threshold}")
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_items + 1, (n,), generator=gen)
    picks = usable[torch.randint(len(usable), (n, max_items), generator=gen)]
    if grid < 1:
        raise ValueError(f"grid must be a positive number of pixels, got {grid}")
    tops = torch.randint((size - h) // grid + 1, (n, max_items), generator=gen) * grid
    lefts = torch.randint((size - w) // grid + 1, (n, max_items), generator=gen) * grid

    canvas = torch.zeros(n, size, size, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    instances = torch.zeros(n, size, size, dtype=torch.uint8)
    rows, cols = torch.arange(h), torch.arange(w)
    for j in range(max_items):  # one vectorised paste per item slot, over all canvases holding >= j + 1
        idx = (counts > j).nonzero()[:, 0]
        r = (tops[idx, j, None] + rows)[:, :, None]  # (m, h, 1) canvas rows of each pasted pixel
        c = (lefts[idx, j, None] + cols)[:, None, :]  # (m, 1, w)
        b = idx[:, None, None]
        item = items[picks[idx, j]]
        sil = item > threshold
        canvas[b, r, c] = torch.where(sil, item, canvas[b, r, c])
        masks[b, r, c] = torch.where(sil, labels[picks[idx, j]].long()[:, None, None] + 1, masks[b, r, c])
        instances[b, r, c] = torch.where(sil, torch.tensor(j + 1, dtype=torch.uint8), instances[b, r, c])

    boxes, box_labels = _visible_boxes(instances, masks, max_items)
    return {"images": canvas[:, None], "masks": masks, "instances": instances, "boxes": boxes, "labels": box_labels}


def _visible_boxes(instances: torch.Tensor, masks: torch.Tensor, max_items: int):
    """Per canvas the xyxy boxes (k, 4) and labels (k,) of the instances with a visible pixel."""
    n, size, _ = instances.shape
    ar = torch.arange(size)
    all_boxes = torch.zeros(n, max_items, 4)
    all_labels = torch.zeros(n, max_items, dtype=torch.int64)
    visible = torch.zeros(n, max_items, dtype=torch.bool)
    for j in range(max_items):
        m = instances == j + 1  # (n, S, S)
        ys, xs = m.any(2), m.any(1)  # (n, S) rows / columns holding the instance
        visible[:, j] = ys.any(1)
        big = size + 1
        all_boxes[:, j, 0] = torch.where(xs, ar, big).amin(1)
        all_boxes[:, j, 1] = torch.where(ys, ar, big).amin(1)
        all_boxes[:, j, 2] = torch.where(xs, ar, -1).amax(1) + 1
        all_boxes[:, j, 3] = torch.where(ys, ar, -1).amax(1) + 1
        all_labels[:, j] = torch.where(m, masks, 0).flatten(1).amax(1)  # an instance has one class
    boxes = [all_boxes[i][visible[i]] for i in range(n)]
    labels = [all_labels[i][visible[i]] for i in range(n)]
    return boxes, labels


def save_dense(path, data: dict) -> None:
    """``torch.save`` a :func:`make_canvases` dict (tensors and lists of tensors only)."""
    torch.save(data, path)


def load_dense(path) -> dict:
    """Inverse of :func:`save_dense`, with ``weights_only=True`` (no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def dense_subset(data: dict, indices) -> dict:
    """The canvases ``indices`` of a :func:`make_canvases` dict (e.g. to split train / val)."""
    indices = torch.as_tensor(indices)
    out = {k: data[k][indices] for k in ("images", "masks", "instances")}
    out.update({k: [data[k][i] for i in indices.tolist()] for k in ("boxes", "labels")})
    return out


class DenseLoader(TensorLoader):
    """Batches of a :func:`make_canvases` dict, ordered and sharded as :class:`g2sd_lib.data.TensorLoader`.

    ``task='segmentation'`` yields ``(x, masks)``: x float32 (B, 1, S, S) = (uint8 / 255 - mean) / std,
    masks int64 (B, S, S). ``task='detection'`` yields ``(x, targets)``: targets a list of B dicts
    ``{"boxes": (k, 4) float32 xyxy, "labels": (k,) int64}`` (torchvision's format; the training
    engine moves only tensors, so the detection task moves the targets itself).
    ``flip``: horizontal flip with probability 0.5 per canvas, drawn from the loader's
    (seed, epoch, rank) generator; boxes become ``[S - x1, y0, S - x0, y1]``.
    """

    def __init__(self, data: dict, task: str, batch_size: int, shuffle: bool, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, flip: bool = False,
                 mean=FMNIST_MEAN, std=FMNIST_STD):
        if task not in ("segmentation", "detection"):
            raise ValueError(f"task must be 'segmentation' or 'detection', got {task!r}")
        super().__init__(data["images"], data["masks"], batch_size, shuffle, drop_last, seed=seed, rank=rank,
                         world_size=world_size, transform=Normalize(mean, std))
        self.task, self.flip = task, flip
        self.boxes, self.box_labels = data["boxes"], data["labels"]

    def __iter__(self):
        for x, masks, idx, flip in self._batches():
            if self.task == "segmentation":
                yield x, masks
                continue
            size = x.shape[-1]
            targets = []
            for i, f in zip(idx.tolist(), flip.tolist()):
                boxes = self.boxes[i].clone()
                if f:
                    boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
                targets.append({"boxes": boxes, "labels": self.box_labels[i].clone()})
            yield x, targets

    def _batches(self):
        """(x normalised, masks, sample indices, flip flags) per batch, flips applied to x and masks."""
        idx = self.indices()
        seed = int(np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)  # as TensorLoader: ranks flip differently
        for b in range(len(self)):
            i = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.transform(self.images[i].float().div_(255))
            masks = self.labels[i]
            flip = (torch.rand(len(i), generator=gen) < 0.5) if self.flip else torch.zeros(len(i), dtype=torch.bool)
            if self.flip:
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
            yield x, masks, i, flip


__all__ = ["DenseLoader", "dense_subset", "load_dense", "make_canvases", "save_dense"]
