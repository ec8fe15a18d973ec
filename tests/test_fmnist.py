"""Tests for g2sd_lib.fmnist (finding, fetching, verifying, reading the IDX files) on tiny synthetic
files, no network."""
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from g2sd_lib import fmnist as D
from g2sd_lib.errors import InputError, run_main

REPO = Path(__file__).resolve().parents[1]


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


def declare_official(monkeypatch, directory: Path) -> None:
    """Make the synthetic files in `directory` the "official" ones the integrity check expects."""
    md5 = {n: D._raw_md5(D._idx_file(directory, n)) for n in D.FASHION_MNIST_RAW_MD5}
    monkeypatch.setattr(D, "FASHION_MNIST_RAW_MD5", md5)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No default location exists: cwd is empty and the Debian dir points nowhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(D, "_VERIFIED", {})
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

def test_load_from_user_root_gz(isolated, monkeypatch):
    arrays = make_fmnist(isolated / "fm")
    declare_official(monkeypatch, isolated / "fm")
    assert D.find_fashion_mnist(isolated / "fm") == isolated / "fm"
    x, y = D.load_fashion_mnist("train", isolated / "fm")
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert D.load_fashion_mnist("test", isolated / "fm")[0].shape == (6, 1, 28, 28)


def test_load_from_torchvision_layout_and_cwd_default(isolated, monkeypatch):
    make_fmnist(isolated / "tv" / "FashionMNIST" / "raw", gz=False)
    declare_official(monkeypatch, isolated / "tv" / "FashionMNIST" / "raw")
    assert D.find_fashion_mnist(isolated / "tv") == isolated / "tv" / "FashionMNIST" / "raw"
    assert D.load_fashion_mnist("test", isolated / "tv")[1].shape == (6,)
    make_fmnist(isolated / "data" / "fashion-mnist")
    assert D.find_fashion_mnist() == isolated / "data" / "fashion-mnist"


def test_load_rejects_bad_split_and_mismatched_files(isolated, monkeypatch):
    make_fmnist(isolated / "fm")
    with pytest.raises(InputError, match="split"):
        D.load_fashion_mnist("val", isolated / "fm")
    write_idx(isolated / "fm" / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    declare_official(monkeypatch, isolated / "fm")
    with pytest.raises(ValueError, match="do not match"):
        D.load_fashion_mnist("test", isolated / "fm")


def test_not_found_message_lists_places_and_fix(isolated):
    make_fmnist(isolated / "partial")
    (isolated / "partial" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load_fashion_mnist("train", isolated / "partial")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for place in (isolated / "partial", isolated / "partial" / "FashionMNIST" / "raw"):
        assert str(place) in msg
    assert "make data" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_a_given_root_is_used_or_refused_never_replaced(isolated, monkeypatch):
    make_fmnist(isolated / "data" / "fashion-mnist")  # the default place holds a dataset
    declare_official(monkeypatch, isolated / "data" / "fashion-mnist")
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load_fashion_mnist("train", isolated / "typo")
    assert str(isolated / "typo") in str(e.value) and str(isolated / "data" / "fashion-mnist") not in str(e.value)
    assert D.find_fashion_mnist() == isolated / "data" / "fashion-mnist"  # no root: the default places


# ---- integrity -----------------------------------------------------------------------------

def test_a_modified_file_is_refused_with_the_restore_command(isolated, monkeypatch):
    fm = isolated / "fm"
    make_fmnist(fm, gz=False)
    declare_official(monkeypatch, fm)
    D.load_fashion_mnist("train", fm)
    labels = fm / "train-labels-idx1-ubyte"
    data = labels.read_bytes()
    labels.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    with pytest.raises(D.DataIntegrityError) as e:
        D.load_fashion_mnist("train", fm)
    msg = str(e.value)
    assert str(labels) in msg and "make data" in msg and "git checkout data.dvc" in msg


def test_integrity_is_hashed_once_per_file_state(isolated, monkeypatch):
    fm = isolated / "fm"
    make_fmnist(fm)
    declare_official(monkeypatch, fm)
    calls = []
    real = D._raw_md5
    monkeypatch.setattr(D, "_raw_md5", lambda p: calls.append(p.name) or real(p))
    D.load_fashion_mnist("test", fm)
    D.load_fashion_mnist("test", fm)
    assert len(calls) == 2  # two files, hashed once
    path = fm / "t10k-labels-idx1-ubyte.gz"
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))  # touched: checked again
    D.load_fashion_mnist("test", fm)
    assert calls[2:] == ["t10k-labels-idx1-ubyte.gz"]


def test_data_dvc_pins_the_official_bytes_and_a_repin_is_refused(tmp_path):
    D.check_data_dvc(REPO / "data.dvc")  # the committed pin is the DVC hash of the official md5s
    repinned = tmp_path / "data.dvc"
    repinned.write_text((REPO / "data.dvc").read_text().replace(D.dvc_dir_md5()[:8], "00000000"))
    with pytest.raises(D.DataIntegrityError, match="re-pinned.*git checkout data.dvc"):
        D.check_data_dvc(repinned)


def test_verify_command(isolated, monkeypatch, capsys):
    fm = isolated / "fm"
    make_fmnist(fm, gz=False)
    declare_official(monkeypatch, fm)
    D.main(["verify", "--dest", str(fm)])  # no data.dvc here: the bytes checked, no pin claimed
    assert "official bytes, no data.dvc here, so no pin checked" in capsys.readouterr().out
    pin = isolated / "pin.dvc"
    pin.write_text(f"outs:\n- md5: {D.dvc_dir_md5()}\n  path: data\n")
    D.main(["verify", "--dest", str(fm), "--dvc-file", str(pin)])
    assert f"official bytes, {pin} pins them" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # a pin given and missing is refused, not skipped
        run_main(D.main, ["verify", "--dest", str(fm), "--dvc-file", str(isolated / "none.dvc")])
    assert e.value.code == 2 and "error: " in (err := capsys.readouterr().err) and "none.dvc is missing" in err
    (fm / "t10k-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as e:  # the command line's exit status and paragraph, as every other
        run_main(D.main, ["verify", "--dest", str(fm)])
    assert e.value.code == 2 and "t10k-images-idx3-ubyte" in (err := capsys.readouterr().err)
    assert "Traceback" not in err
    with pytest.raises(D.DataIntegrityError, match="t10k-images-idx3-ubyte"):  # main itself raises it
        D.main(["verify", "--dest", str(fm)])


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


# ---- the real dataset, where the Debian package is installed -------------------------------

@pytest.mark.skipif(not D.DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    x, y = D.load_fashion_mnist("test", D.DEBIAN_DIR)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.min() == 0 and y.max() == 9 and torch.bincount(y).tolist() == [1000] * 10
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((D.DEBIAN_DIR / f"{name}.gz").read_bytes())  # re-gzipped, official content
        assert hashlib.md5(raw).hexdigest() == D.FASHION_MNIST_RAW_MD5[name]
