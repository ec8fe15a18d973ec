"""Checkpoint bytes: reading ``torch.save`` and safetensors files, writing them atomically, sidecars,
hashes and resumable training state. Every failure is one sentence that names the file.

Writes serialise in memory first and then put the bytes in a temporary file next to the target,
renamed into place only when every file of the save is complete: a full disk or a read-only
directory leaves no partial file, and the files get the usual permissions (``0666 & ~umask``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import re
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..errors import UserError, writing

# the safetensors header key under which save_model records the architecture, so the weights file
# itself says what the sidecar claims (num_heads, which no tensor shape shows), covered by its sha256
ARCH_HEADER = "g2sd_arch"


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be read or cannot fill a role; the message names the file, in plain words."""


# ------------------------------------------------------------------------------------ reading
_REDO = "fetch or save it again"


def check_file(path: Path, redo: str = _REDO) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file" if path.exists() else f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), as an interrupted download or save leaves files; {redo}")


def torch_load(path: Path, redo: str = _REDO):
    """``torch.load(weights_only=True)`` with every failure turned into one sentence about ``path``
    that ends, for a damaged file, with what to do (``redo``)."""
    check_file(path, redo)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupt: its zip archive has no central directory "
                              f"(was a download or save interrupted?); {redo}")
    if not head.startswith((b"PK", b"\x80")):  # zip (torch >= 1.6) or a legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {head!r}, neither a zip "
                              f"archive nor a pickle)")
    try:
        # official training checkpoints carry the argparse Namespace under 'args'; it holds only data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for damaged files
        # only a well-formed pickle naming a class outside the allow-list is "unsafe"; damaged bytes
        # fail in the same UnpicklingError with other words ("Unsupported operand", "invalid load key")
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and found:
            raise CheckpointError(f"{path} is refused by torch.load(weights_only=True): it references "
                                  f"{found[1]}, and unpickling it could run arbitrary code; if you trust its "
                                  f"source, load it once with weights_only=False and re-save only its state "
                                  f"dict") from err
        reason = _first_line(err)
        raise CheckpointError(f"{path} is corrupt or truncated: it could not be read as a PyTorch checkpoint "
                              f"({reason}); {redo}") from err


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's weights_only errors bury the cause after a paragraph of advice
    cause = next((line for line in lines if line.startswith(("Unsupported", "invalid load key"))), None)
    return cause or (lines[0] if lines else type(err).__name__)


def unwrap(obj, path: Path) -> dict:
    """The state dict inside ``{'model' | 'state_dict' | 'module': ...}``, without a ``module.`` prefix."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("model", "state_dict", "module") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict: expected parameter names mapped to tensors "
                              f"(possibly under 'model', 'state_dict' or 'module'), found {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def read_safetensors(path: Path) -> tuple[dict, dict | None]:
    """``(state_dict, arch recorded in the header or None)`` of a safetensors file, on CPU."""
    check_file(path)
    try:
        with safe_open(path, "pt") as f:
            header = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
        return state_dict, json.loads(header[ARCH_HEADER]) if ARCH_HEADER in header else None
    except (SafetensorError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be truncated") from err


def read_sidecar(path: Path) -> dict:
    """The ``.json`` sidecar of ``path``, or ``{}`` when it has none."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"the sidecar {sidecar} of {path} is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("arch", {}), dict):
        raise CheckpointError(f"the sidecar {sidecar} of {path} is not a JSON object with an 'arch' mapping; "
                              "save the model again with g2sd_lib.checkpoints.save_model")
    return meta


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(1 << 20), b""):
            digest.update(buf)
    return digest.hexdigest()


def verify_sha256(path: Path, wanted: dict) -> None:
    """Refuse ``path`` unless its bytes hash to every non-empty value of ``wanted`` (label -> hex)."""
    wanted = {label: want.lower() for label, want in wanted.items() if want}
    if not wanted:
        return
    actual = sha256_file(path)
    for label, want in wanted.items():
        if want != actual:
            raise CheckpointError(f"{path} has sha256 {actual}, but {label} says {want}: the file changed "
                                  f"after it was saved, or it is not the file meant")


# ------------------------------------------------------------------------------------ writing
def safetensors_bytes(state_dict: dict, arch: dict) -> bytes:
    return save(state_dict, metadata={"format": "pt", ARCH_HEADER: json.dumps(arch, sort_keys=True)})


def _write_file(path: Path, data: bytes) -> None:
    # mode "xb": a new file with the process's umask, never someone else's file
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(files: dict[Path, bytes]) -> None:
    """Write every ``path: bytes`` of one save, or none of them: temporary files next to the targets,
    renamed into place once all are complete. A full disk or an unwritable directory raises
    :class:`g2sd_lib.errors.OutputError` naming the path."""
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                temps[path] = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
                _write_file(temps[path], data)
        for path, tmp in temps.items():
            with writing(path):
                os.replace(tmp, path)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise


def to_official_layout(state_dict: Mapping) -> dict:
    """``{'model': state_dict}``: ``torch.save`` it and the official code's ``checkpoint['model']`` reads it."""
    return {"model": dict(state_dict)}


# ------------------------------------------------------------------------------------ resuming
_PLAIN = (str, int, float, bool, bytes, type(None))


def _check_plain(obj, where: str) -> None:
    if isinstance(obj, (torch.Tensor, torch.dtype, torch.device)) or type(obj) in _PLAIN:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, f"a key of {where}")
            _check_plain(v, f"{where}[{k!r}]")
    elif type(obj) in (list, tuple, torch.Size):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}, which "
                        f"torch.load(weights_only=True) cannot read back; store it as a tensor or plain "
                        f"Python (str, int, float, bool, None, list, dict)")


def save_training_state(path, **state) -> None:
    """``torch.save(state)`` atomically, e.g. ``model=..., optimizer=..., scaler=..., epoch=,
    history=..., config=...``; refuses values ``weights_only`` could not load."""
    _check_plain(state, "state")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic({Path(path): buffer.getvalue()})


def load_training_state(path) -> dict:
    """The dict :func:`save_training_state` wrote, read with ``weights_only=True``, on CPU. A damaged
    file is refused with advice to delete it: the run then restarts from its first epoch."""
    try:
        return torch_load(Path(path), redo="delete it to restart the run from its first epoch")
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume from the training state: {err}") from err
