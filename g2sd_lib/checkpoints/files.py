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
import pickletools
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
        # the safe loader's refusal is told from damage by the file's own opcodes, not by torch's wording
        code = _code_globals(path) if isinstance(err, pickle.UnpicklingError) else []
        if code:
            raise CheckpointError(f"{path} refused: it would run code (GLOBAL {code[0]}) when unpickled, which a "
                                  "checkpoint of weights never needs, so nothing of it was loaded. Use a safetensors "
                                  "file or a plain state dict from a source you trust") from err
        reason = _first_line(err)
        raise CheckpointError(f"{path} is corrupt or truncated: it could not be read as a PyTorch checkpoint "
                              f"({reason}); {redo}") from err


# what torch.save writes for tensors, state dicts and training states, beside torch.* itself
_DATA_GLOBALS = {"collections.OrderedDict", "argparse.Namespace", "_codecs.encode", "builtins.set",
                 "builtins.frozenset", "builtins.bytearray", "builtins.slice", "builtins.complex"}


def _code_globals(path: Path) -> list[str]:
    """The names the pickles of ``path`` import (GLOBAL / STACK_GLOBAL) that are no tensor or plain
    data, in order: callables unpickling would run. Read with :mod:`pickletools`, which runs nothing."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            streams = [archive.read(name) for name in archive.namelist() if name.endswith(".pkl")]
    else:
        streams = [path.read_bytes()]  # a legacy file: several pickles one after the other, then storages
    allowed = _DATA_GLOBALS | {f"{g.__module__}.{g.__qualname__}" for g in torch.serialization.get_safe_globals()
                               if hasattr(g, "__qualname__")}
    names = []
    for data in streams:
        stream = io.BytesIO(data)
        while stream.tell() < len(data):
            try:
                names += _globals(stream)
            except Exception:  # the storages after a legacy file's pickles, or damaged bytes: scanned enough
                break
    return [n for n in names if not n.startswith("torch.") and n not in allowed]


def _globals(stream) -> list[str]:
    """The ``module.name`` of every GLOBAL / STACK_GLOBAL of the next pickle in ``stream``."""
    names, pushed, memo = [], [], {}  # pushed: the string each opcode pushed (None: something else)
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            names.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.append(".".join(str(s) for s in pushed[-2:]))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if arg is None else arg] = pushed[-1] if pushed else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        else:
            pushed.append(None)
    return names


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
                                  f"after it was saved, or it is not the file meant. Restore the saved bytes: "
                                  f"`dvc checkout {path}` for a pipeline output, `git checkout -- {path}` for a "
                                  "committed file; or save it again")


# ------------------------------------------------------------------------------------ writing
def safetensors_bytes(state_dict: dict, arch: dict) -> bytes:
    """The safetensors file of ``state_dict`` with ``arch`` in its header, the same bytes for the same weights:
    safetensors writes its header's keys in an order that varies from call to call, so the header is rewritten
    with sorted keys (the tensors' offsets count from the end of the header, so they stay valid)."""
    raw = save(state_dict, metadata={"format": "pt", ARCH_HEADER: json.dumps(arch, sort_keys=True)})
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format's alignment of the data, as safetensors pads it
    return len(header).to_bytes(8, "little") + header + raw[8 + size:]


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
