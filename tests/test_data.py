"""Tests for g2sd_lib.data: splits, batched augmentation, loaders, ImageNet folders, mixup (no network)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from g2sd_lib import data as D
from g2sd_lib.fmnist import DatasetNotFoundError


# ---- TensorLoader --------------------------------------------------------------------------

def tiny_dataset(n=10):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return images, torch.arange(n)


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_deterministic_per_seed_and_epoch():
    images, labels = tiny_dataset(20)
    loader = D.TensorLoader(images, labels, 4, shuffle=True, drop_last=False, seed=3)
    a, b = epoch_batches(loader, 1), epoch_batches(loader, 1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    other = torch.cat([y for _, y in epoch_batches(loader, 2)])
    assert not torch.equal(torch.cat([y for _, y in a]), other)
    x, y = a[0]
    assert x.dtype == torch.float32 and x.shape == (4, 1, 4, 4) and y.dtype == torch.int64
    assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())  # images stay paired with labels


@pytest.mark.parametrize("n", [10, 11])
def test_loader_matches_distributed_sampler(n):
    images, labels = tiny_dataset(n)
    for rank in range(2):
        loader = D.TensorLoader(images, labels, 3, True, False, seed=5, rank=rank, world_size=2)
        sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader.set_epoch(4), sampler.set_epoch(4)
        assert loader.indices().tolist() == list(sampler)


def test_two_ranks_cover_dataset_without_overlap():
    images, labels = tiny_dataset(10)
    seen = [torch.cat([y for _, y in D.TensorLoader(images, labels, 2, True, False, rank=r,
                                                    world_size=2)]) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 5
    assert sorted(torch.cat(seen).tolist()) == list(range(10))


def test_loader_len_and_drop_last():
    images, labels = tiny_dataset(10)
    keep = D.TensorLoader(images, labels, 4, shuffle=False, drop_last=False)
    drop = D.TensorLoader(images, labels, 4, shuffle=False, drop_last=True)
    assert len(keep) == 3 and [len(y) for _, y in keep] == [4, 4, 2]
    assert len(drop) == 2 and [len(y) for _, y in drop] == [4, 4]
    assert torch.cat([y for _, y in keep]).tolist() == list(range(10))
    sharded = D.TensorLoader(images, labels, 2, False, True, rank=1, world_size=3)
    assert len(sharded) == 2 and len(list(sharded)) == 2  # 4 samples per rank after padding


def test_loader_applies_transform_with_generator():
    images, labels = tiny_dataset(8)
    seen = []

    def transform(x, gen):
        seen.append(gen)
        return x + 1
    x, _ = next(iter(D.TensorLoader(images, labels, 8, False, False, transform=transform)))
    assert isinstance(seen[0], torch.Generator) and x.min() >= 1


def test_train_val_split():
    train, val = D.train_val_split(100, 10, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert torch.equal(val, D.train_val_split(100, 10, seed=0)[1])
    assert not torch.equal(val, D.train_val_split(100, 10, seed=1)[1])
    with pytest.raises(ValueError):
        D.train_val_split(10, 10, seed=0)


# ---- batched augmentation ------------------------------------------------------------------

def test_random_resized_crop_flip_shape_and_identity():
    x = torch.rand(6, 2, 28, 28)
    gen = torch.Generator().manual_seed(0)
    out = D.RandomResizedCropFlip(16)(x, gen)
    assert out.shape == (6, 2, 16, 16) and out.min() >= 0 and out.max() <= 1
    same = D.RandomResizedCropFlip(28, scale=(1, 1), ratio=(1, 1), flip=False)(x, gen)
    assert torch.allclose(same, x, atol=1e-5)
    full = D.RandomResizedCropFlip(28, scale=(1, 1), ratio=(1, 1), flip=True)(x, gen)
    flipped = torch.isclose(full, x.flip(-1), atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(full, x, atol=1e-5).flatten(1).all(1)
    assert (flipped | kept).all() and flipped.any()


def test_random_resized_crop_resizes_like_bilinear_interpolate():
    x = torch.rand(3, 1, 28, 28)
    out = D.RandomResizedCropFlip(14, scale=(1, 1), ratio=(1, 1), flip=False)(x, torch.Generator())
    expected = torch.nn.functional.interpolate(x, size=14, mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected, atol=1e-5)


def test_random_resized_crop_is_a_crop():
    x = torch.arange(32.0).view(1, 1, 1, 32).expand(64, 1, 32, 32)  # value = column index
    out = D.RandomResizedCropFlip(8, scale=(0.2, 0.5), flip=False)(x, torch.Generator())
    first, last = out[:, 0, :, 0], out[:, 0, :, -1]
    assert (last > first).all()  # no flip: columns still increase
    assert (out[:, 0, 0] - out[:, 0, -1]).abs().max() < 1e-4  # rows all alike: no shear
    assert not torch.allclose(first, first[:1])  # boxes differ per sample


def test_random_erasing_and_normalize_compose():
    x = torch.zeros(16, 1, 28, 28)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(D.RandomErasing(prob=0.0)(x, gen), x)
    erased = D.RandomErasing(prob=1.0)(x, gen)
    changed = (erased != 0).flatten(1)
    assert changed.any(1).all()
    assert (changed.sum(1) <= 28 * 28 / 3 + 28).all()  # at most max-area boxes
    norm = D.Normalize(D.FMNIST_MEAN, D.FMNIST_STD)
    out = D.Compose([norm, D.RandomErasing(prob=0.0)])(torch.full((2, 1, 3, 3), 0.2860), gen)
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-6)


# ---- ImageNet as ImageFolder ---------------------------------------------------------------

@pytest.fixture
def tiny_imagenet(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / split / cls / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("recipe", ["gd", "sd", "eval"])
def test_build_imagenet_recipes(tiny_imagenet, recipe):
    ds = D.build_imagenet(tiny_imagenet, "train" if recipe != "eval" else "val", recipe, input_size=32)
    x, y = ds[3]
    assert len(ds) == 4 and ds.classes == ["n01", "n02"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1


def test_build_imagenet_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"does not exist.*root/\{train,val\}"):
        D.build_imagenet(tmp_path / "nope", "train", "eval")
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class subfolders"):
        D.build_imagenet(tmp_path, "val", "eval")
    (tmp_path / "val" / "n01").mkdir()
    with pytest.raises(DatasetNotFoundError, match="n01"):
        D.build_imagenet(tmp_path, "val", "eval")
    with pytest.raises(ValueError):
        D.imagenet_transform("finetune")


def test_build_mixup():
    assert D.build_mixup(10, mixup=0.0, cutmix=0.0) is None
    mix = D.build_mixup(10)
    x, y = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 3, 8, 8) and y.shape == (4, 10)
    assert torch.allclose(y.sum(1), torch.ones(4))


