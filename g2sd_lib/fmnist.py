"""Fashion-MNIST acquisition and integrity: find, fetch, verify and read the four IDX files.

``make data`` (``python -m g2sd_lib.fmnist fetch``) materialises the decompressed official bytes in
``data/fashion-mnist`` from the Debian package ``dataset-fashion-mnist``, a user's directory or
torchvision's download; ``data.dvc`` pins those bytes. Every stage that reads the dataset checks
the bytes it reads against the official md5s (once per process and file, cached by size and
mtime), so a modified file stops the pipeline even when ``dvc repro`` has re-pinned ``data.dvc``.
"""
import argparse
import gzip
import hashlib
import logging
import json
import math
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, MissingInputError, UserError, run_main

log = logging.getLogger(__name__)

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# md5 of the official .gz files (torchvision's FashionMNIST.resources).
FASHION_MNIST_MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
# md5 of the decompressed IDX bytes (torchvision's FashionMNIST.raw_data). The Debian package
# re-gzipped the files (new gzip mtime), so its .gz bytes differ from the official ones while the
# content is identical; a .gz is accepted if either hash matches.
FASHION_MNIST_RAW_MD5 = {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_DEST = Path("data/fashion-mnist")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # package `dataset-fashion-mnist`

_IDX_MAGIC = {0x00000803: 3, 0x00000801: 1}  # uint8 images (N, rows, cols) / uint8 labels (N,)


class DatasetNotFoundError(MissingInputError):
    """A dataset is missing or laid out wrongly; the message says where we looked and the fix."""


class DataIntegrityError(UserError, ValueError):
    """Dataset bytes differ from the pinned ones; the message names the file and how to restore it."""


def read_idx(path) -> torch.Tensor:
    """Parse one IDX file, gzip-compressed or raw (told apart by the gzip magic bytes).

    Returns uint8 images (N, rows, cols) for magic 0x00000803, int64 labels (N,) for 0x00000801.
    Raises DataIntegrityError (a ValueError) naming the file when it is truncated, garbled or of
    another IDX type.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataIntegrityError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    elif path.suffix == ".gz":
        raise DataIntegrityError(f"{path}: has a .gz suffix but is not gzip data")
    magic = int.from_bytes(data[:4], "big")
    if len(data) >= 4 and magic not in _IDX_MAGIC:
        raise DataIntegrityError(f"{path}: bad IDX magic 0x{magic:08x}, expected 0x00000803 (images) "
                                 "or 0x00000801 (labels)")
    ndim = _IDX_MAGIC.get(magic, 1)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataIntegrityError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected, found = math.prod(shape), len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes"
        raise DataIntegrityError(f"{path}: {what}: header says shape {shape} = {expected} data bytes, "
                                 f"file has {found}")
    arr = torch.from_numpy(np.frombuffer(bytearray(data), np.uint8, offset=header).reshape(shape))
    return arr if ndim == 3 else arr.long()


def _idx_file(directory: Path, name: str) -> Path | None:
    # Raw before .gz: torchvision's raw/ folder holds both, and raw skips decompression.
    return next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)


def find_fashion_mnist(root=None) -> Path:
    """The directory holding all four IDX files (each raw or .gz).

    A given `root` is used or refused: `root` or `root/FashionMNIST/raw` (torchvision's layout),
    never another place. Without `root`: `./data/fashion-mnist`, then the Debian package dir.
    Raises DatasetNotFoundError listing every place looked otherwise.
    """
    if root is not None:
        candidates = [Path(root), Path(root) / "FashionMNIST" / "raw"]
    else:
        candidates = [Path.cwd() / DEFAULT_DEST, DEBIAN_DIR]
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    for d in candidates:
        if all(_idx_file(d, n) for n in names):
            return d
    looked = "".join(f"\n  {d}" for d in candidates)
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (need {', '.join(names)}, raw or .gz). Looked in:{looked}\n"
        "Fix: run `make data` (it runs `python -m g2sd_lib.fmnist fetch`, which copies the files "
        "from the package of `apt-get install dataset-fashion-mnist` or downloads them with "
        "torchvision), or set data.root to the directory holding the four files (null = the default places).")


def load_fashion_mnist(split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load split "train" (N = 60000) or "test" (N = 10000).

    Returns uint8 images (N, 1, 28, 28) and int64 labels (N,) in 0..9 (FASHION_MNIST_CLASSES).
    """
    if split not in FASHION_MNIST_FILES:
        raise InputError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    d = find_fashion_mnist(root)
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    paths = [_idx_file(d, img_name), _idx_file(d, lbl_name)]
    for path, name in zip(paths, (img_name, lbl_name)):
        verify_file(path, name)
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataIntegrityError(f"{d}: {split} images {tuple(images.shape)} do not match labels "
                                 f"{tuple(labels.shape)}")
    return images.unsqueeze(1), labels


def _raw_md5(path: Path) -> str:
    """md5 of the decompressed IDX bytes of `path` (raw, or gzip told apart by its magic bytes)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return "unreadable gzip"
    return hashlib.md5(data).hexdigest()


def _raw_md5_ok(path: Path, name: str) -> bool:
    """True if `path` holds the official decompressed IDX bytes of `name`."""
    return _raw_md5(path) == FASHION_MNIST_RAW_MD5[name]


_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime_ns) -> md5 found, for files read in this process


def verify_file(path, name: str) -> None:
    """Refuse `path` unless its IDX bytes are the official `name` (those data.dvc pins).

    Hashing the 55 MB costs ~0.2 s, so it is done once per process and file state: the cache key
    holds the size and modification time, and any rewrite of the file checks it again.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _raw_md5(path)
    if _VERIFIED[key] != FASHION_MNIST_RAW_MD5[name]:
        raise DataIntegrityError(
            f"{path} is not the official Fashion-MNIST {name} (md5 of its IDX bytes {_VERIFIED[key]}, pinned "
            f"{FASHION_MNIST_RAW_MD5[name]}): it was modified or corrupted, and training on it would give "
            f"results that look right and are not. Restore it: delete {path} and run `make data`; if "
            "`dvc repro` re-pinned data.dvc meanwhile, also run `git checkout data.dvc`.")


def dvc_dir_md5() -> str:
    """The hash ``data.dvc`` must hold for the four official files: DVC's ``.dir`` hash, the md5 of
    the sorted JSON listing of (md5, relpath) entries."""
    entries = sorted(({"md5": md5, "relpath": f"{DEFAULT_DEST.name}/{name}"}
                      for name, md5 in FASHION_MNIST_RAW_MD5.items()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def check_data_dvc(path="data.dvc") -> None:
    """Refuse a ``data.dvc`` that pins other bytes than the official files (e.g. after ``dvc repro``
    or ``dvc commit`` recorded a modified file)."""
    import yaml
    pinned = yaml.safe_load(Path(path).read_text())["outs"][0]["md5"]
    if pinned != dvc_dir_md5():
        raise DataIntegrityError(
            f"{path} pins {pinned}, not the official Fashion-MNIST files ({dvc_dir_md5()}): it was re-pinned to "
            "modified data (dvc repro / dvc commit record whatever data/ holds). Restore it with "
            "`git checkout data.dvc`, then delete data/fashion-mnist and run `make data`.")


def verify_fashion_mnist(directory=DEFAULT_DEST, dvc_file=None) -> Path:
    """Check the four files in `directory` and `dvc_file` (None: no pin checked); return `directory`."""
    directory = Path(directory)
    for name in FASHION_MNIST_RAW_MD5:
        path = _idx_file(directory, name)
        if path is None:
            raise DatasetNotFoundError(f"{directory / name} is missing; run `make data`")
        verify_file(path, name)
    if dvc_file is not None:
        if not Path(dvc_file).is_file():
            raise MissingInputError(f"{dvc_file} is missing, so the pin of the Fashion-MNIST files cannot be "
                                    "checked: give the path of the repository's data.dvc (`git checkout data.dvc` "
                                    "restores it), or leave out --dvc-file")
        check_data_dvc(dvc_file)
    return directory


def _gunzip_or_copy(src: Path, tmp: Path) -> None:
    """Copy `src` to `tmp`, decompressing it when it is gzip (detected by its magic bytes)."""
    with open(src, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with (gzip.open(src, "rb") if gz else open(src, "rb")) as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def _install(target: Path, put, origin: str) -> None:
    """Write `target` atomically: `put(tmp)` fills a temp file, verified, then os.replace'd."""
    tmp = target.with_name(f".{target.name}.part")
    try:
        put(tmp)
        if not _raw_md5_ok(tmp, target.name):
            raise DataIntegrityError(f"{origin}: content differs from the official {target.name} "
                                     f"(md5 of the IDX bytes should be {FASHION_MNIST_RAW_MD5[target.name]}); "
                                     "refusing to use it")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _download_torchvision(name: str, path: Path) -> None:
    """Download the official `name`.gz with torchvision's mirror list and md5 check, decompressed to `path`."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import download_url
    errors = []
    gz_name = f"{name}.gz"
    for mirror in FashionMNIST.mirrors:
        try:
            download_url(mirror + gz_name, path.parent, f"{path.name}.gz", FASHION_MNIST_MD5[gz_name])
            gz = path.parent / f"{path.name}.gz"
            _gunzip_or_copy(gz, path)
            gz.unlink()
            return
        except Exception as e:  # noqa: BLE001  (any failure, network or md5: try the next mirror)
            errors.append(f"{mirror}: {e}")
    raise OSError("; ".join(errors))


def fetch_fashion_mnist(dest=DEFAULT_DEST, source=None) -> Path:
    """Materialise the four decompressed IDX files in `dest`, idempotently, and return `dest`.

    The decompressed bytes are the same whatever the source (the Debian package re-gzipped the
    official files, so .gz bytes differ), which lets `data.dvc` pin them. Each file comes from the
    first of: `source` (a dir, or its FashionMNIST/raw; raw or .gz), the Debian dir, torchvision's
    download. A file already in `dest` with the official content is kept; one with other bytes
    stops with DataIntegrityError (never silently replaced: DVC would record the change); a file no source
    has raises DatasetNotFoundError listing what was tried.
    """
    dest = Path(dest)
    if source is not None and not Path(source).is_dir():
        raise DatasetNotFoundError(f"source {source} is not a directory")
    dirs = [Path(source), Path(source) / "FashionMNIST" / "raw"] if source is not None else []
    dirs.append(DEBIAN_DIR)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_RAW_MD5:
        target = dest / name
        if target.is_file():
            if not _raw_md5_ok(target, name):
                raise DataIntegrityError(f"{target} differs from the official Fashion-MNIST file (md5 should be "
                                         f"{FASHION_MNIST_RAW_MD5[name]}). Delete it and run `make data` again.")
            log.info("%s: already present with the official content", target)
            continue
        src = next((p for d in dirs for p in (d / name, d / f"{name}.gz") if p.is_file()), None)
        if src is not None:
            _install(target, lambda tmp: _gunzip_or_copy(src, tmp), str(src))
            log.info("%s: copied from %s", target, src)
            continue
        try:
            _install(target, lambda tmp: _download_torchvision(name, tmp), "torchvision download")
        except OSError as e:
            tried = "".join(f"\n  {d}" for d in dirs)
            raise DatasetNotFoundError(
                f"Could not obtain {name}. Tried:{tried}\n  torchvision download (failed: {e})\n"
                "Install it with `apt-get install dataset-fashion-mnist`, connect to the network, "
                "or pass --source <dir with the four files, raw or .gz>.") from None
        log.info("%s: downloaded by torchvision", target)
    return dest


def main(argv=None) -> None:
    """``fetch`` or ``verify``; a user error propagates (``run_main`` prints it and exits 2)."""
    parser = argparse.ArgumentParser(prog="python -m g2sd_lib.fmnist",
                                     description="Fashion-MNIST set-up for g2sd_lib.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="materialise the four Fashion-MNIST IDX files (decompressed)")
    fetch.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    fetch.add_argument("--source", type=Path, default=None, help="a dir holding the four files (raw or .gz)")
    verify = sub.add_parser("verify", help="check the four files and data.dvc against the official bytes")
    verify.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    verify.add_argument("--dvc-file", type=Path, help="the pin to check (default: data.dvc, if here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "fetch":
        print(f"Fashion-MNIST ready in {fetch_fashion_mnist(args.dest, args.source)}")
    else:
        dvc_file = args.dvc_file or (Path("data.dvc") if Path("data.dvc").is_file() else None)
        pin = f"{dvc_file} pins them" if dvc_file else "no data.dvc here, so no pin checked (--dvc-file PATH)"
        print(f"Fashion-MNIST in {verify_fashion_mnist(args.dest, dvc_file)}: official bytes, {pin}")


if __name__ == "__main__":
    run_main(main)
