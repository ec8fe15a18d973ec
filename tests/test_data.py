"""Tests for g2sd_lib.data on tiny synthetic IDX files and a tiny ImageFolder (no network)."""
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from g2sd_lib import data as D


def write_idx(path: Path, arr: np.ndarray, compress: bool | None = None) -> Path:
    """Write uint8 `arr` (N,) or (N, rows, cols) as IDX, gzipped when the name ends in .gz."""
    header = (0x00000800 + arr.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def make_fmnist(directory: Path, gz: bool = True, n_train: int = 12, n_test: int = 6) -> dict:
    """The four files with tiny synthetic content; returns {filename: uint8 array}."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img_name, lbl_name = D.FASHION_MNIST_FILES[split]
        arrays[img_name] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[lbl_name] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, arr in arrays.items():
        write_idx(directory / (name + ".gz" if gz else name), arr)
    return arrays


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No default location exists: cwd is empty and the Debian dir points nowhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "DEBIAN_DIR", tmp_path / "no-debian")
    return tmp_path


@pytest.fixture
def synthetic_source(isolated, monkeypatch):
    """A source dir of synthetic .gz files whose md5s are declared official; downloads forbidden."""
    src = isolated / "src"
    arrays = make_fmnist(src)
    gz_md5 = {n: hashlib.md5((src / n).read_bytes()).hexdigest() for n in D.FASHION_MNIST_MD5}
    raw_md5 = {n: hashlib.md5(gzip.decompress((src / f"{n}.gz").read_bytes())).hexdigest()
               for n in D.FASHION_MNIST_RAW_MD5}
    monkeypatch.setattr(D, "FASHION_MNIST_MD5", gz_md5)
    monkeypatch.setattr(D, "FASHION_MNIST_RAW_MD5", raw_md5)

    def no_network(name, tmpdir):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(D, "_download_torchvision", no_network)
    return src, arrays


# ---- IDX parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_images_and_labels(tmp_path, suffix):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([0, 9, 3], dtype=np.uint8)
    x = D.read_idx(write_idx(tmp_path / f"img{suffix}", imgs))
    y = D.read_idx(write_idx(tmp_path / f"lbl{suffix}", labels))
    assert x.dtype == torch.uint8 and x.shape == (3, 4, 5) and np.array_equal(x.numpy(), imgs)
    assert y.dtype == torch.int64 and y.tolist() == [0, 9, 3]


def test_read_idx_detects_gzip_by_magic_bytes(tmp_path):
    path = write_idx(tmp_path / "labels-no-suffix", np.array([1, 2], np.uint8), compress=True)
    assert D.read_idx(path).tolist() == [1, 2]


@pytest.mark.parametrize("garble, match", [
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"xx", "trailing"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad IDX magic"),
])
def test_read_idx_rejects_malformed_raw(tmp_path, garble, match):
    good = write_idx(tmp_path / "good", np.zeros((2, 3, 3), np.uint8)).read_bytes()
    bad = tmp_path / "bad-file-idx3-ubyte"
    bad.write_bytes(garble(good))
    with pytest.raises(ValueError, match=match) as e:
        D.read_idx(bad)
    assert "bad-file-idx3-ubyte" in str(e.value)


def test_read_idx_rejects_broken_gzip(tmp_path):
    gz = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(200, dtype=np.uint8))
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*gzip"):
        D.read_idx(gz)
    not_gz = tmp_path / "fake.gz"
    not_gz.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="fake.gz.*not gzip"):
        D.read_idx(not_gz)


# ---- finding and loading -------------------------------------------------------------------

def test_load_from_user_root_gz(isolated):
    arrays = make_fmnist(isolated / "fm")
    assert D.find_fashion_mnist(isolated / "fm") == isolated / "fm"
    x, y = D.load_fashion_mnist("train", isolated / "fm")
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert D.load_fashion_mnist("test", isolated / "fm")[0].shape == (6, 1, 28, 28)


def test_load_from_torchvision_layout_and_cwd_default(isolated):
    make_fmnist(isolated / "tv" / "FashionMNIST" / "raw", gz=False)
    assert D.find_fashion_mnist(isolated / "tv") == isolated / "tv" / "FashionMNIST" / "raw"
    assert D.load_fashion_mnist("test", isolated / "tv")[1].shape == (6,)
    make_fmnist(isolated / "data" / "fashion-mnist")
    assert D.find_fashion_mnist() == isolated / "data" / "fashion-mnist"


def test_load_rejects_bad_split_and_mismatched_files(isolated):
    make_fmnist(isolated / "fm")
    with pytest.raises(ValueError, match="split"):
        D.load_fashion_mnist("val", isolated / "fm")
    write_idx(isolated / "fm" / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        D.load_fashion_mnist("test", isolated / "fm")


def test_not_found_message_lists_places_and_fix(isolated):
    make_fmnist(isolated / "partial")
    (isolated / "partial" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load_fashion_mnist("train", isolated / "partial")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for place in (isolated / "partial", isolated / "partial" / "FashionMNIST" / "raw",
                  isolated / "data" / "fashion-mnist", D.DEBIAN_DIR):
        assert str(place) in msg
    assert "make data" in msg and "apt-get install dataset-fashion-mnist" in msg


# ---- fetch ---------------------------------------------------------------------------------

def test_fetch_decompresses_atomically_and_is_idempotent(synthetic_source, monkeypatch, capsys):
    src, arrays = synthetic_source
    dest = src.parent / "data" / "fashion-mnist"
    assert D.fetch_fashion_mnist(dest, source=src) == dest
    assert sorted(os.listdir(dest)) == sorted(D.FASHION_MNIST_RAW_MD5)  # no temp files left behind
    for name in D.FASHION_MNIST_RAW_MD5:
        assert (dest / name).read_bytes() == gzip.decompress((src / f"{name}.gz").read_bytes())
    assert D.load_fashion_mnist("test")[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()

    def must_not_copy(*args):
        raise AssertionError("verified files must be skipped")
    monkeypatch.setattr(D, "_install", must_not_copy)
    D.main(["fetch", "--dest", str(dest), "--source", str(src)])
    assert f"ready in {dest}" in capsys.readouterr().out


def test_fetch_gives_the_same_bytes_from_recompressed_and_raw_sources(synthetic_source):
    src, _ = synthetic_source
    name = "train-labels-idx1-ubyte"
    raw = gzip.decompress((src / f"{name}.gz").read_bytes())
    (src / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=1))  # as the Debian package did
    D.fetch_fashion_mnist(src.parent / "a", source=src)
    (src / f"{name}.gz").unlink()
    (src / name).write_bytes(raw)
    D.fetch_fashion_mnist(src.parent / "b", source=src)
    assert (src.parent / "a" / name).read_bytes() == (src.parent / "b" / name).read_bytes() == raw


def test_fetch_rejects_wrong_bytes_and_leaves_no_partial_file(synthetic_source):
    src, _ = synthetic_source
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.full(6, 3, np.uint8))
    dest = src.parent / "dest"
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*differs"):
        D.fetch_fashion_mnist(dest, source=src)
    assert not (dest / "t10k-labels-idx1-ubyte").exists()
    assert not [p for p in os.listdir(dest) if p.startswith(".")]


def test_fetch_stops_on_modified_file_in_dest(synthetic_source):
    src, _ = synthetic_source
    dest = src.parent / "dest"
    D.fetch_fashion_mnist(dest, source=src)
    target = dest / "t10k-labels-idx1-ubyte"
    data = target.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(ValueError, match="differs from the official.*make data"):
        D.fetch_fashion_mnist(dest, source=src)


def test_fetch_reports_what_it_tried(synthetic_source):
    src, _ = synthetic_source
    (src / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.fetch_fashion_mnist(src.parent / "dest", source=src)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(src) in msg and str(D.DEBIAN_DIR) in msg
    assert "torchvision download (failed: network disabled" in msg
    with pytest.raises(D.DatasetNotFoundError, match="not a directory"):
        D.fetch_fashion_mnist(src.parent / "dest", source=src / "missing")


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


@pytest.mark.parametrize("kind", ["gd", "sd", "eval"])
def test_build_imagenet_kinds(tiny_imagenet, kind):
    ds = D.build_imagenet(tiny_imagenet, "train" if kind != "eval" else "val", kind, input_size=32)
    x, y = ds[3]
    assert len(ds) == 4 and ds.classes == ["n01", "n02"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1


def test_build_imagenet_errors(tmp_path):
    with pytest.raises(D.DatasetNotFoundError, match=r"does not exist.*root/\{train,val\}"):
        D.build_imagenet(tmp_path / "nope", "train", "eval")
    (tmp_path / "val").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match="no class subfolders"):
        D.build_imagenet(tmp_path, "val", "eval")
    (tmp_path / "val" / "n01").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match="n01"):
        D.build_imagenet(tmp_path, "val", "eval")
    with pytest.raises(ValueError):
        D.imagenet_transform("finetune")


def test_build_mixup():
    assert D.build_mixup(10, mixup=0.0, cutmix=0.0) is None
    mix = D.build_mixup(10)
    x, y = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 3, 8, 8) and y.shape == (4, 10)
    assert torch.allclose(y.sum(1), torch.ones(4))


# ---- the real dataset, where the Debian package is installed -------------------------------

@pytest.mark.skipif(not D.DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    x, y = D.load_fashion_mnist("test", D.DEBIAN_DIR)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.min() == 0 and y.max() == 9 and torch.bincount(y).tolist() == [1000] * 10
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((D.DEBIAN_DIR / f"{name}.gz").read_bytes())  # re-gzipped, official content
        assert hashlib.md5(raw).hexdigest() == D.FASHION_MNIST_RAW_MD5[name]
