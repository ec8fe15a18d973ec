"""Data: splits, batched augmentation and loaders for Fashion-MNIST, ImageNet as an ImageFolder, mixup.

The `smoke` and `fmnist` profiles hold Fashion-MNIST (read and checked by :mod:`g2sd_lib.fmnist`)
as uint8 tensors and augment whole batches at once (`TensorLoader` + `RandomResizedCropFlip` ...),
because per-image PIL transforms dominate the step time of tiny ViTs on a CPU. The `paper`
profile uses `torchvision.datasets.ImageFolder` with the official MAE / G2SD transforms
(`imagenet_transform`).
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .fmnist import DatasetNotFoundError, load_fashion_mnist

FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)


def train_val_split(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n): sorted int64 train_idx (n - val_size,) and val_idx (val_size,)."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def labelled_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted int64 positions into ``labels`` (int64 (M,)) of a stratified, seeded draw of ``n`` images:
    ``n / k`` of each of the k classes present, each class's images permuted by one generator seeded
    ``seed`` (classes in increasing order). The label-scarce regime trains every supervised stage on
    these images only, while pretraining sees all M."""
    classes = labels.unique()
    k = len(classes)
    if n % k or not 0 < n <= len(labels):
        raise InputError(f"data.labels must be a multiple of the {k} classes between {k} and {len(labels)} "
                         f"(the training split), got {n}")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        if len(members) < n // k:
            raise InputError(f"data.labels {n} needs {n // k} images of class {c}, the training split has "
                             f"{len(members)}: choose a smaller data.labels")
        picked.append(members[torch.randperm(len(members), generator=gen)[: n // k]])
    return torch.cat(picked).sort().values


def label_draw_digest(indices: torch.Tensor) -> str:
    """sha256 of a label draw (int64 positions into the 60 000-image training file, little-endian
    bytes, sorted): names the draw in the teacher's card and every summary."""
    import hashlib
    return hashlib.sha256(indices.to(torch.int64).sort().values.numpy().astype("<i8").tobytes()).hexdigest()


def label_draw(d: dict) -> dict | None:
    """The label-scarce draw of a profile's ``data`` section: ``{"labels", "labels_seed", "per_class",
    "sha256"}`` (:func:`label_draw_digest` of the drawn positions in the training file), or
    None when every training image carries its label."""
    if not d.get("labels") or d.get("dataset", "fmnist") != "fmnist":
        return None
    images, labels = load_fashion_mnist("train", d.get("root"))
    tr_idx, _ = train_val_split(len(images), d.get("val_size", 5000), d.get("split_seed", 0))
    if d.get("train_subset"):
        tr_idx = tr_idx[: d["train_subset"]]
    drawn = tr_idx[labelled_subset(labels[tr_idx], d["labels"], d.get("labels_seed", 0))]
    return {"labels": d["labels"], "labels_seed": d.get("labels_seed", 0),
            "per_class": d["labels"] // len(labels.unique()), "sha256": label_draw_digest(drawn)}


class TensorLoader:
    """Batches of an in-memory uint8 dataset, sharded like `DistributedSampler`.

    images: uint8 (N, C, H, W); labels: int64 (N,). Each epoch permutes range(N) with a generator
    seeded `seed + epoch` (the same permutation on every rank, as DistributedSampler), pads it by
    wrapping to a multiple of world_size, and gives rank r the indices r, r + world_size, ....
    Yields (x float32 (B, C, H, W) = uint8 / 255 then `transform(x, generator)`, y int64 (B,)).
    The transform's generator is seeded from (seed, epoch, rank), so ranks augment differently.

    `device`: where the dataset lives and batches are built and augmented (GPU-side augmentation on
    CUDA: no per-step host-to-device copy of images). The random draws (order, boxes, flips) stay on
    the CPU generator, so a run augments the same images the same way on every device.
    """

    def __init__(self, images, labels, batch_size, shuffle, drop_last, seed=0, rank=0,
                 world_size=1, transform=None, device=None):
        if len(images) != len(labels) or not 0 <= rank < world_size:
            raise ValueError(f"need len(images) {len(images)} == len(labels) {len(labels)} and "
                             f"0 <= rank {rank} < world_size {world_size}")
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.transform = seed, rank, world_size, transform
        self.epoch = 0
        self.num_samples = math.ceil(len(images) / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, int64 (num_samples,)."""
        n = len(self.images)
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        total = self.num_samples * self.world_size
        order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        idx = self.indices()
        seed = int(np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        idx = idx.to(self.images.device)
        for b in range(len(self)):
            i = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[i].float().div_(255)
            yield (self.transform(x, gen) if self.transform else x), self.labels[i]


def _sample_boxes(b, h, w, scale, ratio, gen, max_h, max_w, tries=10):
    """Per-sample box sizes bh, bw int64 (B,): area scale*h*w, aspect bw/bh log-uniform in ratio.

    As torchvision/timm do per image, the first of `tries` draws with 0 < bh <= max_h and
    0 < bw <= max_w is kept; `ok` bool (B,) is False where no draw fitted.
    """
    area = h * w * torch.empty(b, tries).uniform_(scale[0], scale[1], generator=gen)
    logr = torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    bw = torch.sqrt(area * logr.exp()).round().long()
    bh = torch.sqrt(area / logr.exp()).round().long()
    fits = (bw > 0) & (bw <= max_w) & (bh > 0) & (bh <= max_h)
    first = fits.long().argmax(1, keepdim=True)  # argmax of bools = index of the first True
    return bh.gather(1, first)[:, 0], bw.gather(1, first)[:, 0], fits.any(1)


class RandomResizedCropFlip:
    """RandomResizedCrop + RandomHorizontalFlip for a float batch (B, C, H, W) -> (B, C, *size).

    Boxes follow torchvision's sampling (10 tries, then a centre crop clamped to `ratio`); all crops
    and flips are one `affine_grid` + bilinear `grid_sample` call (MAE's GD pretrain augmentation).
    Unlike PIL there is no antialiasing, which only matters when a crop is shrunk (size < box).
    """

    def __init__(self, size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip=True):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio, self.flip = scale, ratio, flip

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        bh, bw, ok = _sample_boxes(b, h, w, self.scale, self.ratio, gen, h, w)
        in_ratio = w / h  # fallback: the largest centre box with aspect clamped to `ratio`
        fw = w if in_ratio <= self.ratio[1] else round(h * self.ratio[1])
        fh = h if in_ratio >= self.ratio[0] else round(w / self.ratio[0])
        bh, bw = torch.where(ok, bh, fh), torch.where(ok, bw, fw)
        top = torch.where(ok, (torch.rand(b, generator=gen) * (h - bh + 1)).floor(), (h - bh) // 2)
        left = torch.where(ok, (torch.rand(b, generator=gen) * (w - bw + 1)).floor(), (w - bw) // 2)
        flip = self.flip & (torch.rand(b, generator=gen) < 0.5)
        # align_corners=False: normalised -1/+1 are the outer pixel edges, so box [left, left + bw)
        # has centre (2 * left + bw) / w - 1 and half-width bw / w; a negative x-scale mirrors it.
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -bw / w, bw / w)
        theta[:, 0, 2] = (2 * left + bw) / w - 1
        theta[:, 1, 1] = bh / h
        theta[:, 1, 2] = (2 * top + bh) / h - 1
        grid = F.affine_grid(theta.to(x), [b, c, *self.size], align_corners=False)
        # border padding: upsampled crops touching the image edge must not blend with zeros.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Normalize:
    """(x - mean) / std per channel on a float batch (B, C, H, W)."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)


class RandomErasing:
    """timm's RandomErasing(re_mode='pixel', re_count=1) for a normalised batch (B, C, H, W).

    With probability `prob` a sample gets one rectangle of area scale*H*W, aspect log-uniform in
    `ratio`, filled with per-pixel N(0, 1) noise; samples with no fitting box in 10 tries are kept.
    """

    def __init__(self, prob=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3)):
        self.prob, self.scale, self.ratio = prob, scale, ratio

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        # timm only erases boxes strictly smaller than the image.
        bh, bw, ok = _sample_boxes(b, h, w, self.scale, self.ratio, gen, h - 1, w - 1)
        ok &= torch.rand(b, generator=gen) < self.prob
        top = (torch.rand(b, generator=gen) * (h - bh + 1)).floor().long()
        left = (torch.rand(b, generator=gen) * (w - bw + 1)).floor().long()
        rows, cols = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
        top, left, bh, bw, ok = (t.view(-1, 1, 1, 1) for t in (top, left, bh, bw, ok))
        mask = ok & (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
        return torch.where(mask.to(x.device), torch.randn(x.shape, generator=gen).to(x), x)


class Compose:
    """Apply batched transforms in order, threading the same generator through them."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, gen)
        return x


def imagenet_transform(recipe: str, input_size: int = 224):
    """The official per-image PIL -> float (3, input_size, input_size) transforms.

    "gd": MAE pretrain / G2SD GD (RandomResizedCrop scale 0.2-1 bicubic + flip); "sd": MAE fine-tune
    / G2SD SD (timm RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 pixel); "eval": MAE's
    resize to input_size / crop_pct (crop_pct 0.875 up to 224, else 1) + centre crop.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN as MEAN, IMAGENET_DEFAULT_STD as STD
    from timm.data import create_transform
    from torchvision import transforms as T
    bicubic = T.InterpolationMode.BICUBIC
    if recipe == "gd":
        return T.Compose([T.RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=bicubic),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    if recipe == "sd":
        return create_transform(input_size, is_training=True, color_jitter=None,
                                auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                                re_prob=0.25, re_mode="pixel", re_count=1, mean=MEAN, std=STD)
    if recipe == "eval":
        crop_pct = 224 / 256 if input_size <= 224 else 1.0
        return T.Compose([T.Resize(int(input_size / crop_pct), interpolation=bicubic),
                          T.CenterCrop(input_size), T.ToTensor(), T.Normalize(MEAN, STD)])
    raise InputError(f"recipe must be 'gd', 'sd' or 'eval', got {recipe!r}")


def build_imagenet(root, split: str, recipe: str, input_size: int = 224):
    """ImageFolder over `root/{train,val}/<class>/<image>.JPEG` with `imagenet_transform(recipe)`."""
    from torchvision.datasets import ImageFolder
    if split not in ("train", "val"):
        raise InputError(f"split must be 'train' or 'val', got {split!r}")
    d = Path(root) / split
    layout = "expected layout: root/{train,val}/<class>/<image>.JPEG (the ImageNet-1k tree)"
    if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
        problem = "has no class subfolders" if d.is_dir() else "does not exist"
        raise DatasetNotFoundError(f"ImageNet {split} split not found: {d} {problem}; {layout}")
    try:
        return ImageFolder(str(d), transform=imagenet_transform(recipe, input_size))
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"ImageNet {split} split at {d}: {e}; {layout}") from None


def build_mixup(num_classes: int, mixup: float = 0.8, cutmix: float = 1.0, smoothing: float = 0.1):
    """timm Mixup/CutMix + label smoothing with MAE's fine-tune defaults (batch mode, switch 0.5).

    Maps (x (B, C, H, W), y int64 (B,)) -> (mixed x, soft targets (B, num_classes)); None when
    both alphas are 0 (then train with label-smoothed cross-entropy). B must be even.
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing,
                 num_classes=num_classes)


if __name__ == "__main__":  # `python -m g2sd_lib.data fetch` of older instructions
    from .errors import run_main
    from .fmnist import main
    run_main(main)
