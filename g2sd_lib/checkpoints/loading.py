"""Models in and out of checkpoint files: the checked reader every loader goes through, strict
loading into a model rebuilt by :func:`g2sd_lib.models.build_model`, encoder initialisation, and
:func:`save_model` (safetensors + JSON sidecar).

Every read of a ``.safetensors`` file with a sidecar verifies the sidecar's sha256 against the
file's bytes and the sidecar's architecture against the tensors and the file's own header
(:func:`.inspection.check_arch`), so no loader builds a model from a sidecar that lies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..models import build_model
from .files import (CheckpointError, check_file, read_safetensors, read_sidecar, safetensors_bytes, torch_load, unwrap,
                    verify_sha256, write_atomic)
from .inspection import CheckpointInfo, check_arch, describe
from .roles import check_role


def _read(path: Path, expected_sha256: str | None = None) -> tuple[dict, dict, dict | None]:
    """``(state_dict, sidecar, header arch)``, hashes and architecture verified."""
    if path.suffix != ".safetensors":
        return unwrap(torch_load(path), path), {}, None
    check_file(path)
    sidecar = read_sidecar(path)
    verify_sha256(path, {"its sidecar": sidecar.get("sha256"), "the expected hash": expected_sha256})
    state_dict, recorded = read_safetensors(path)
    if not path.with_suffix(".json").exists():
        arch = "from its header" if recorded is not None else "guessed from its tensors' shapes"
        warnings.warn(f"{path} has no sidecar {path.with_suffix('.json').name}: its sha256 is not checked and its "
                      f"architecture is {arch}; save it with g2sd_lib.checkpoints.save_model (or restore the "
                      "sidecar) to have both", stacklevel=3)
    if "arch" in sidecar:
        check_arch(sidecar["arch"], state_dict, path, recorded, label=f"its sidecar {path.with_suffix('.json').name}")
    elif recorded is not None:
        check_arch(recorded, state_dict, path, label="its header")
    return state_dict, sidecar, recorded


def read_state_dict(path) -> tuple[dict, dict]:
    """``(state_dict, meta)`` on CPU of a ``torch.save`` file (meta ``{}``) or of a ``.safetensors``
    file (meta = its ``.json`` sidecar, ``{}`` without one; ``meta['arch']`` falls back to the
    architecture recorded in the file's header). Verifies the sidecar's sha256 and architecture;
    raises :class:`CheckpointError`."""
    path = Path(path)
    state_dict, sidecar, recorded = _read(path)
    if "arch" not in sidecar and recorded is not None:
        return state_dict, {**sidecar, "arch": recorded}
    return state_dict, sidecar


def _patterns(keys, limit: int = 8) -> str:
    """Key list for a message, block indices folded: 'blocks.*.attn.qkv.weight'."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", k) for k in keys))
    more = f" and {len(folded) - limit} more" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


def load_strict(model: nn.Module, state_dict: Mapping, source) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, refused first with one sentence naming
    ``source`` and the missing, unexpected and wrongly shaped keys."""
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state_dict.keys()), sorted(state_dict.keys() - own.keys())
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {text}" for label, text in (("missing", _patterns(missing)),
                 ("unexpected", _patterns(unexpected)), ("shape (file vs model)", "; ".join(shapes))) if text]
        raise CheckpointError(f"{source} does not fit the {getattr(model, 'arch', {}).get('name', 'model')} "
                              f"built for it ({'; '.join(parts)})")
    model.load_state_dict(state_dict, strict=True)


def load_model(path, role: str) -> tuple[nn.Module, CheckpointInfo]:
    """Build our model for the checkpoint at ``path`` and load it strictly, after :func:`check_role`.

    gd-teacher -> ``MaskedAutoencoderViT``; sd-teacher -> a classifier; gd-student ->
    ``G2SDStudent`` (with ``encoderfeature_pred`` iff the file has it). Any width and depth is
    built (see :mod:`.inspection` for the heads). The model is returned in train mode, as built;
    ``sd-init`` initialises a model you build: use :func:`load_encoder`.
    """
    if role == "sd-init":
        raise ValueError("role sd-init initialises a model you build: use load_encoder(model, path)")
    state_dict, meta = read_state_dict(path)
    info = check_role(describe(state_dict, meta, source=path), role)
    model = build_model(info.arch)
    load_strict(model, state_dict, path)
    return model, info


def load_saved_model(path, expected_sha256: str | None = None) -> nn.Module:
    """Rebuild and strictly load any model written by :func:`save_model` (classifier, MAE, student,
    segmenter, detector), after checking its sha256 against the sidecar and ``expected_sha256``
    (e.g. pinned in a metrics file) and the sidecar's architecture against the tensors."""
    path = Path(path)
    check_file(path)
    if "arch" not in read_sidecar(path):
        raise CheckpointError(f"{path} has no sidecar {path.with_suffix('.json').name} with an 'arch', so "
                              f"the model it belongs to is unknown")
    state_dict, sidecar, _ = _read(path, expected_sha256)
    model = build_model(sidecar["arch"])
    load_strict(model, state_dict, path)
    return model


class EncoderInit(list):
    """The model keys :func:`load_encoder` left at their initialisation; ``ignored``: the
    checkpoint keys it did not use (decoder, mask token, feature heads, heads...)."""

    ignored: list[str]


def load_encoder(model: nn.Module, state_dict) -> EncoderInit:
    """Initialise a classifier's encoder from any checkpoint with one (a state dict or a path).

    Copies cls_token, pos_embed, patch_embed.*, blocks.* and, if the model has a real final
    ``norm`` (not Identity), norm.*; all must exist with the model's shapes. head / head_dist /
    fc_norm / dist_token keep their init, and ``head.weight`` is redrawn with trunc-normal std
    2e-5 as the official SD / fine-tune init does. Unlike the official ``strict=False`` load,
    nothing else is copied from the checkpoint and nothing of the encoder may be missing.
    """
    source = "the checkpoint"
    if isinstance(state_dict, (str, os.PathLike)):
        source, (state_dict, _) = str(state_dict), read_state_dict(state_dict)
    prefixes = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
    if not isinstance(getattr(model, "norm", nn.Identity()), nn.Identity):
        prefixes += ("norm.",)
    own = model.state_dict()
    wanted = [k for k in own if k.startswith(prefixes)]
    missing = [k for k in wanted if k not in state_dict]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in wanted
              if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or shapes:
        # the first few shape mismatches say what is wrong (usually another width or patch); all of them
        # would fill a screen
        shown = "; ".join(shapes[:4]) + (f"; ... {len(shapes) - 4} more of {len(wanted)} encoder tensors"
                                         if len(shapes) > 4 else "")
        raise CheckpointError(f"{source} cannot initialise this {type(model).__name__}: "
                              + "; ".join(filter(None, [missing and f"missing {_patterns(missing)}",
                                                        shapes and f"shape (file vs model) {shown}"])))
    model.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
    if isinstance(getattr(model, "head", None), nn.Linear):
        trunc_normal_(model.head.weight, std=2e-5)
    result = EncoderInit(k for k in own if k not in wanted)
    result.ignored = sorted(set(state_dict) - set(wanted))
    return result


def save_model(model: nn.Module, path, extra: dict | None = None, dtype: torch.dtype | None = None) -> dict:
    """Write ``path`` (``.safetensors``, the architecture also in its header) and its sidecar ``.json``,
    both or neither; returns the sidecar: ``{"arch", "kind", "num_params", "sha256"}`` plus the
    JSON-able ``extra`` (which cannot override them).

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors at lower precision, for bundled
    files with a size limit; loading casts them back to the model's float32."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_model writes safetensors; the path must end in .safetensors, got {path}")
    if getattr(model, "arch", None) is None:
        raise ValueError("the model has no .arch; build it with the g2sd_lib.models factories")
    # own, contiguous CPU copies: safetensors refuses tensors that share memory or are strided
    state_dict = {k: v.detach().to('cpu', copy=True, memory_format=torch.contiguous_format)
                  for k, v in model.state_dict().items()}
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    info = describe(state_dict, {"arch": model.arch}, source=f"the {type(model).__name__} being saved")
    meta = {**(extra or {}), "arch": model.arch, "kind": info.kind, "num_params": info.num_params}
    if dtype is not None:
        meta["dtype"] = str(dtype).removeprefix("torch.")
    json.dumps(meta)  # fail on non-JSON values before anything is written
    weights = safetensors_bytes(state_dict, model.arch)
    meta["sha256"] = hashlib.sha256(weights).hexdigest()
    write_atomic({path: weights, path.with_suffix(".json"): (json.dumps(meta, indent=2) + "\n").encode()})
    return meta
