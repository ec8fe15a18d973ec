"""Resumable, verified downloads of the official MAE checkpoints that G2SD distils from.

G2SD needs two teachers (toolchain reference, section 5):

* generic distillation (GD) reads the *full* pre-trained MAE, encoder plus decoder
  (``mae_pretrain_vit_base_full.pth``); the encoder-only release has no decoder to distil;
* specific distillation (SD) reads the fine-tuned classifier (``mae_finetuned_vit_base.pth``).

The official release publishes only 6-hex md5 prefixes, and none for the ``_full`` files, so
:func:`download` can also pin the full sha256 in a small JSON "hash record" the first time a file
is fetched and enforce it on every later fetch.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ..checkpoints.official import OFFICIAL_CHECKPOINTS
from ..errors import UserError


class ChecksumError(UserError, ValueError):
    """The fetched (or cached) bytes do not match the expected sha256 or md5 prefix."""


class DownloadError(UserError, RuntimeError):
    """The source could not be reached or the transfer broke off."""


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             md5_prefix: str | None = None, hash_record: str | os.PathLike | None = None,
             progress: bool = True, chunk_size: int = 1 << 20, timeout: float = 60) -> Path:
    """Fetch ``url`` (http(s)://, file:// or a local path) to ``dest`` and verify it.

    The bytes go to ``dest + '.part'``, which is moved onto ``dest`` only once verified, so an
    interrupted run never leaves a partial ``dest``; an http(s) rerun resumes the ``.part`` with a
    ``Range`` request. ``hash_record`` is a JSON file ``{file name: {sha256, md5, size, url}}``:
    an existing entry's sha256 is enforced, a missing one is written after the first fetch, or
    on the first use of a ``dest`` already in place (a copy saved by hand when offline).

    Raises:
        ChecksumError: the bytes do not match; the ``.part`` is deleted.
        DownloadError: network failure; the message says where to put a hand-downloaded copy.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    record = _load_record(hash_record) if hash_record is not None else {}
    entry = record.get(dest.name)
    expected = []  # (label, digest kind, expected hex, prefix-only)
    if sha256:
        expected.append(("sha256", "sha256", sha256.lower(), False))
    if entry is not None:
        expected.append((f"sha256 recorded in {hash_record}", "sha256", entry["sha256"], False))
    if md5_prefix:
        expected.append(("md5 prefix", "md5", md5_prefix.lower(), True))

    if dest.exists():
        digests = _digests(dest, chunk_size)
        if _first_mismatch(expected, digests) is None:
            if hash_record is not None and entry is None:
                # a copy placed by hand (the offline route) is pinned on first use, as a fetched one
                _record(hash_record, record, dest.name, digests, url)
            return dest
        warnings.warn(f"{dest} exists but fails verification; fetching it again from {url}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme in ("http", "https"):
        _fetch_http(url, part, dest, progress, chunk_size, timeout)
    elif scheme == "file" or len(scheme) <= 1:  # one letter: a Windows drive, not a scheme
        _copy_local(url, part, dest, progress, chunk_size)
    else:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url}")

    digests = _digests(part, chunk_size)
    bad = _first_mismatch(expected, digests)
    if bad is not None:
        # a corrupt .part must not be resumed: its good-looking prefix would poison the next try
        part.unlink()
        label, want, got = bad
        raise ChecksumError(f"checksum mismatch for {url}: expected {label} {want}, got {got}")
    os.replace(part, dest)
    if hash_record is not None and entry is None:
        _record(hash_record, record, dest.name, digests, url)
    return dest


def _record(hash_record, record: dict, name: str, digests: dict, url: str) -> None:
    record[name] = dict(sha256=digests["sha256"], md5=digests["md5"], size=digests["size"], url=url)
    _write_record(hash_record, record)


def fetch_official(name: str, dest_dir: str | os.PathLike, *, base_url: str | None = None,
                   hash_record: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download the official MAE checkpoint ``name`` to ``dest_dir/name``, enforcing its md5 prefix.

    ``base_url`` replaces the official directory (a mirror, or a file:// directory in tests); the
    file name stays the same.
    """
    if name not in OFFICIAL_CHECKPOINTS:
        raise KeyError(f"unknown checkpoint {name!r}; known: {', '.join(OFFICIAL_CHECKPOINTS)}")
    info = OFFICIAL_CHECKPOINTS[name]
    url = info["url"] if base_url is None else f"{base_url.rstrip('/')}/{name}"
    return download(url, Path(dest_dir) / name, md5_prefix=info["md5_prefix"],
                    hash_record=hash_record, progress=progress)


def _fetch_http(url, part, dest, progress, chunk_size, timeout):
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "g2sd_lib"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            if err.code != 416 or not offset:
                raise _offline_error(url, dest, err) from err
            # 416 means the .part reaches or passes the end; 'bytes */N' says which
            whole = err.headers.get("Content-Range", "").rpartition("/")[2]
        if whole == str(offset):
            return
        part.unlink()
        return _fetch_http(url, part, dest, progress, chunk_size, timeout)
    except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
        raise _offline_error(url, dest, err) from err

    with resp:
        resumed = (offset and resp.status == 206
                   and resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"))
        if not resumed:  # the server sent the whole file (e.g. it ignores Range): start over
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None

        def read():
            try:
                return resp.read(chunk_size)
            except (OSError, http.client.HTTPException) as err:
                raise _offline_error(url, dest, err) from err

        _pump(read, part, "ab" if resumed else "wb", offset, total, dest.name, progress)
    # http.client returns a short body silently when the peer closes early
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"transfer of {url} stopped at {part.stat().st_size} of {total} bytes; "
                            f"run again to resume from {part}")


def _copy_local(url, part, dest, progress, chunk_size):
    parsed = urllib.parse.urlparse(url)
    src = urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else url
    try:
        f = open(src, "rb")
    except OSError as err:
        raise DownloadError(f"cannot read {url} ({err}); copy the file by hand to {dest}") from err
    with f:
        # a local copy is cheap, so it always restarts rather than trusting a stale .part
        _pump(lambda: f.read(chunk_size), part, "wb", 0, os.fstat(f.fileno()).st_size, dest.name,
              progress)


def _pump(read, part, mode, initial, total, desc, progress):
    with open(part, mode) as out, tqdm(total=total, initial=initial, desc=desc, unit="B",
                                       unit_scale=True, unit_divisor=1024,
                                       disable=not progress) as bar:
        for buf in iter(read, b""):
            out.write(buf)
            bar.update(len(buf))


def _offline_error(url, dest, err):
    return DownloadError(f"could not download {url} ({err}); if this machine is offline, download "
                         f"it by hand and save it as {dest}")


def _digests(path, chunk_size=1 << 20) -> dict:
    """sha256, md5 and size of ``path`` in a single read: checkpoints are hundreds of MB."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(chunk_size), b""):
            sha.update(buf)
            md5.update(buf)
            size += len(buf)
    return dict(sha256=sha.hexdigest(), md5=md5.hexdigest(), size=size)


def _first_mismatch(expected, digests):
    for label, kind, want, prefix_only in expected:
        got = digests[kind][:len(want)] if prefix_only else digests[kind]
        if got != want:
            return label, want, got
    return None


def _load_record(path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def _write_record(path, record):
    # temp file in the same directory, then os.replace: a crash never leaves half a JSON file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
