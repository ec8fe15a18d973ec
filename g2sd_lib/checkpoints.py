"""Checkpoints as contracts: read any official or own layout, say what it is, load it strictly.

The official G2SD code loads every checkpoint with ``strict=False``, so a wrong file loads
"successfully": the encoder-only ``mae_pretrain_vit_base.pth`` given as the GD teacher runs with a
random decoder (G2SD issue #7). Here each use of a checkpoint is a *role* (``gd-teacher``,
``sd-teacher``, ``gd-student``, ``sd-init``); :func:`check_role` refuses a file that cannot fill it
with one paragraph naming the missing keys and the file that has them, and :func:`load_model`
builds our model from the weights' shapes and loads it with ``strict=True``.

Our own weights are ``.safetensors`` plus a JSON sidecar (architecture, kind, sha256); resumable
training state is a ``torch.save`` dict that ``torch.load(weights_only=True)`` reads back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import re
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from .download import OFFICIAL_CHECKPOINTS
from .models import ENCODER_SIZES, build_model, vit_kwargs
from .models.classifier import LayerNorm


class CheckpointError(ValueError):
    """A checkpoint cannot be read or cannot fill a role; the message names the file, in plain words."""


ROLES = {"gd-teacher", "sd-teacher", "gd-student", "sd-init"}

_ENCODER = ("cls_token", "pos_embed", "patch_embed.proj.*", "blocks.*")
_DECODER = ("mask_token", "decoder_embed.*", "decoder_pos_embed", "decoder_blocks.*", "decoder_norm.*",
            "decoder_pred.*")
# key patterns each role needs; "a or b" is satisfied by either
_REQUIRED = {
    "sd-init": _ENCODER,
    "gd-teacher": _ENCODER + ("norm.*",) + _DECODER,
    "gd-student": _ENCODER + ("norm.*",) + _DECODER + ("decoderfeature_pred.*",),
    "sd-teacher": _ENCODER + ("fc_norm.* or norm.*", "head.*"),
}
# kind -> keys (``x`` or ``x.*``) that mark it; the first match wins, so the most specific come first
_KIND_KEYS = (("gd-student", ("decoderfeature_pred",)), ("sd-student", ("dist_token", "head_dist")),
              ("mae-finetuned", ("fc_norm", "head")), ("mae-full", ("decoder_embed",)),
              ("classifier", ("norm", "head")), ("mae-encoder", ("cls_token", "pos_embed", "patch_embed", "blocks")))
KINDS = {"mae-full": "an MAE pre-training checkpoint with encoder and decoder",
         "mae-encoder": "an encoder-only MAE pre-training checkpoint",
         "mae-finetuned": "a fine-tuned MAE classifier with fc_norm and head",
         "gd-student": "a G2SD generic-distillation student",
         "sd-student": "a G2SD specific-distillation student with dist_token and head_dist",
         "classifier": "a ViT classifier with norm and head",
         "unknown": "not a recognised ViT checkpoint"}


# ------------------------------------------------------------------------------------ reading
def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file" if path.exists() else f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); an interrupted download or save leaves such files")


def _torch_load(path: Path):
    """``torch.load(weights_only=True)`` with every failure turned into one sentence about ``path``."""
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupt: its zip archive has no central directory "
                              f"(was a download or save interrupted?); fetch or save it again")
    if not head.startswith((b"PK", b"\x80")):  # zip (torch >= 1.6) or a legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {head!r}, neither a zip "
                              f"archive nor a pickle)")
    try:
        # official training checkpoints carry the argparse Namespace under 'args'; it holds only data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it references {found[1]}" if found else "it holds more than tensors and plain data"
        raise CheckpointError(f"{path} is refused by torch.load(weights_only=True): {what}, and unpickling "
                              f"it could run arbitrary code; if you trust its source, load it once with "
                              f"weights_only=False and re-save only its state dict") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for damaged files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint; it may be truncated or "
                              f"corrupt ({reason})") from err


def _unwrap(obj, path: Path) -> dict:
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


def read_state_dict(path) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a ``.safetensors`` file (meta = its ``.json`` sidecar or ``{}``)
    or of a ``torch.save`` file (meta = ``{}``), on CPU. Raises :class:`CheckpointError`."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return _unwrap(_torch_load(path), path), {}
    _check_file(path)
    try:
        state_dict = load_file(path)
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be truncated") from err
    return state_dict, _read_sidecar(path)


def _read_sidecar(path: Path) -> dict:
    sidecar = path.with_suffix(".json")
    try:
        return json.loads(sidecar.read_text()) if sidecar.exists() else {}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"the sidecar {sidecar} of {path} is not valid JSON ({err})") from err


# ------------------------------------------------------------------------------------ describing
@dataclass
class CheckpointInfo:
    """What a state dict is. ``arch`` rebuilds its model (``model.arch`` format) or is None;
    ``dims`` holds the sizes read off the tensor shapes; ``missing_for`` maps each role to the
    key patterns the state dict lacks for it."""

    kind: str
    arch: dict | None
    num_params: int
    num_tensors: int
    missing_for: dict[str, list[str]]
    dims: dict = field(default_factory=dict)
    source: str | None = None

    def problem(self, role: str) -> str | None:
        """One paragraph explaining why this checkpoint cannot fill ``role``, or None if it can."""
        return _role_problem(self, role)


def _has(keys, pattern: str) -> bool:
    for p in pattern.split(" or "):
        if p in keys or (p.endswith(".*") and any(k.startswith(p[:-1]) for k in keys)):
            return True
    return False


def _detect_kind(keys) -> str:
    return next((kind for kind, needs in _KIND_KEYS if all(_has(keys, f"{n} or {n}.*") for n in needs)), "unknown")


def _infer_dims(sd: Mapping) -> dict:
    if not all(k in sd for k in ("cls_token", "pos_embed", "patch_embed.proj.weight")):
        return {}
    width, chans, patch, _ = sd["patch_embed.proj.weight"].shape
    count = lambda prefix: len({k.split(".")[1] for k in sd if k.startswith(prefix)})  # noqa: E731
    tokens = sd["pos_embed"].shape[1]
    dims = dict(embed_dim=sd["cls_token"].shape[-1], depth=count("blocks."), patch_size=patch, in_chans=chans,
                img_size=math.isqrt(tokens - 1) * patch)
    if "blocks.0.mlp.fc1.weight" in sd:
        dims["mlp_ratio"] = sd["blocks.0.mlp.fc1.weight"].shape[0] / width
    if "decoder_embed.weight" in sd:
        dims.update(decoder_embed_dim=sd["decoder_embed.weight"].shape[0], decoder_depth=count("decoder_blocks."))
    for key, name in (("decoderfeature_pred.fc2.weight", "teacher_decoder_dim"),
                      ("encoderfeature_pred.fc2.weight", "teacher_embed_dim"), ("head.weight", "num_classes")):
        if key in sd:
            dims[name] = sd[key].shape[0]
    return dims


def _match_size(dims: dict) -> str | None:
    """The ``ENCODER_SIZES`` entry of this width and depth, preferring one of the same image format."""
    sizes = [s for s, v in ENCODER_SIZES.items() if v[:2] == (dims["embed_dim"], dims["depth"])]
    return max(sizes, key=lambda s: ENCODER_SIZES[s][3:] == (dims["img_size"], dims["in_chans"]), default=None)


def _infer_arch(kind: str, dims: dict, size: str) -> dict:
    _, _, _, img, chans = ENCODER_SIZES[size]
    over = {k: dims[k] for k, default in (("img_size", img), ("in_chans", chans), ("mlp_ratio", 4.0))
            if k in dims and dims[k] != default}
    encoder = f"vit_{size}_patch{dims['patch_size']}"
    if kind in ("mae-full", "gd-student"):  # .get: a damaged file still gets an arch; strict loading then fails
        name = f"mae_{encoder}_dec{dims.get('decoder_embed_dim', 0)}d{dims.get('decoder_depth', 0)}b"
        if kind == "mae-full":
            return {"builder": "mae", "name": name, **over}
        return {"builder": "student", "name": name, "teacher_decoder_dim": dims.get("teacher_decoder_dim"),
                "teacher_embed_dim": dims.get("teacher_embed_dim"),
                "encoder_branch": "teacher_embed_dim" in dims, **over}
    # 'token': timm's cls-token ViT; with num_classes=0 it is exactly the MAE encoder (timm's '.mae')
    pool = {"mae-finetuned": "avg", "sd-student": "distilled"}.get(kind, "token")
    return {"builder": "classifier", "name": encoder, "kind": pool, "num_classes": dims.get("num_classes", 0), **over}


def describe(state_dict: Mapping, meta: dict | None = None, source=None) -> CheckpointInfo:
    """Kind, architecture and role fitness of ``state_dict``; ``meta['arch']`` (a sidecar) outranks
    the shapes. Raises :class:`CheckpointError` for an encoder of no known size (num_heads is not
    in the weights, so the size table must supply it)."""
    keys = set(state_dict)
    kind, dims = _detect_kind(keys), _infer_dims(state_dict)
    size = _match_size(dims) if dims else None
    if size:
        dims["num_heads"] = ENCODER_SIZES[size][2]
    arch = (meta or {}).get("arch")
    if arch is None and dims and kind != "unknown":
        if size is None:
            shown = ", ".join(f"{k} {v}" for k, v in dims.items())
            raise CheckpointError(f"{source or 'the checkpoint'} has an unknown architecture: inferred {shown}, "
                                  f"but no size in g2sd_lib.models.ENCODER_SIZES has this width and depth")
        arch = _infer_arch(kind, dims, size)
    missing = {role: [p for p in _REQUIRED[role] if not _has(keys, p)] for role in sorted(ROLES)}
    return CheckpointInfo(kind, arch, sum(v.numel() for v in state_dict.values()), len(state_dict), missing,
                          dims, None if source is None else str(source))


# ------------------------------------------------------------------------------------ roles
def _official(kind: str, info: CheckpointInfo) -> str:
    """The official file for ``kind`` ('pretrain_..._full' or 'finetuned') at this checkpoint's size."""
    found = re.search(r"vit_(large|huge)_", (info.arch or {}).get("name", ""))
    name = f"mae_{kind.replace('...', found[1] if found else 'base')}.pth"
    return f"{name} ({OFFICIAL_CHECKPOINTS[name]['url']})"


_ROLE_TEXT = {  # role -> (what the file cannot be, why the role needs those keys and what to use)
    "gd-teacher": ("cannot be the generic-distillation (GD) teacher",
                   "GD distils the hidden states of the teacher's MAE decoder; the official code loads the teacher "
                   "with strict=False and would have silently run a random decoder here (G2SD issue #7 reports a "
                   "GD loss stuck near 0.2 that way). Use the full MAE checkpoint with its decoder: {full}, e.g. "
                   "via g2sd_lib.download.fetch_official."),
    "sd-teacher": ("cannot be the specific-distillation (SD) teacher",
                   "SD distils the predictions of a classifier fine-tuned on the task; the official SD teacher is "
                   "the fine-tuned MAE {finetuned}, or fine-tune this encoder first."),
    "gd-student": ("is not a G2SD generic-distillation student",
                   "A GD student (ours, or the official ViT_Sm_GD.pth / ViT_Ti_GD.pth) has an MAE encoder and "
                   "decoder plus the decoderfeature_pred head; to start specific distillation from any encoder "
                   "use role sd-init."),
    "sd-init": ("cannot initialise a classifier", "Any checkpoint with a ViT encoder will do (MAE pre-training, "
                "GD student, fine-tuned or distilled classifier)."),
}


def _role_problem(info: CheckpointInfo, role: str) -> str | None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(sorted(ROLES))}")
    cannot, advice = _ROLE_TEXT[role]
    src, what = info.source or "the checkpoint", f"{KINDS[info.kind]} (kind {info.kind})"
    files = {"full": _official("pretrain_vit_..._full", info), "finetuned": _official("finetuned_vit_...", info)}
    if role == "gd-teacher" and info.kind == "gd-student":
        return (f"{src} {cannot}: it is {what}, whose small decoder was trained to imitate a teacher's features, "
                f"not to reconstruct images. The GD teacher is a full MAE pre-training checkpoint with its "
                f"decoder: {files['full']}.")
    if info.missing_for[role]:
        return f"{src} {cannot}: it is {what} and lacks {', '.join(info.missing_for[role])}. " + advice.format(**files)
    return None


def check_role(info_or_state_dict, role: str, source=None) -> CheckpointInfo:
    """The checkpoint's :class:`CheckpointInfo` if it can fill ``role``; else :class:`CheckpointError`."""
    info = info_or_state_dict
    if not isinstance(info, CheckpointInfo):
        info = describe(info, source=source)
    problem = info.problem(role)
    if problem:
        raise CheckpointError(problem)
    return info


# ------------------------------------------------------------------------------------ loading
def _build(arch: dict) -> nn.Module:
    """``build_model`` plus timm's cls-token classifier (kind 'token'), which the factories lack."""
    if arch.get("builder") != "classifier" or arch.get("kind") != "token":
        return build_model(arch)
    kw = {k: v for k, v in arch.items() if k not in ("builder", "name", "kind", "num_classes")}
    model = VisionTransformer(global_pool="token", num_classes=arch.get("num_classes", 0), norm_layer=LayerNorm,
                              **vit_kwargs(arch["name"], **kw))
    model.arch = dict(arch)
    return model


def _patterns(keys, limit: int = 8) -> str:
    """Key list for a message, block indices folded: 'blocks.*.attn.qkv.weight'."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", k) for k in keys))
    more = f" and {len(folded) - limit} more" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


def _load_strict(model: nn.Module, state_dict: Mapping, source) -> None:
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
    ``G2SDStudent`` (with ``encoderfeature_pred`` iff the file has it). The model is returned in
    train mode, as built; ``sd-init`` initialises a model you build: use :func:`load_encoder`.
    """
    if role == "sd-init":
        raise ValueError("role sd-init initialises a model you build: use load_encoder(model, path)")
    state_dict, meta = read_state_dict(path)
    info = check_role(describe(state_dict, meta, source=path), role)
    model = _build(info.arch)
    _load_strict(model, state_dict, path)
    return model, info


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
        raise CheckpointError(f"{source} cannot initialise this {type(model).__name__}: "
                              + "; ".join(filter(None, [missing and f"missing {_patterns(missing)}",
                                                        shapes and f"shape (file vs model) {'; '.join(shapes)}"])))
    model.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
    if isinstance(getattr(model, "head", None), nn.Linear):
        trunc_normal_(model.head.weight, std=2e-5)
    result = EncoderInit(k for k in own if k not in wanted)
    result.ignored = sorted(set(state_dict) - set(wanted))
    return result


# ------------------------------------------------------------------------------------ our own files
def _atomic_write(path: Path, write) -> None:
    # a temp file in the same directory + os.replace: readers never see half a checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(1 << 20), b""):
            digest.update(buf)
    return digest.hexdigest()


def save_model(model: nn.Module, path, extra: dict | None = None, dtype: torch.dtype | None = None) -> dict:
    """Write ``path`` (``.safetensors``) and its sidecar ``.json`` atomically; returns the sidecar:
    ``{"arch", "kind", "num_params", "sha256"}`` plus the JSON-able ``extra`` (which cannot override them).

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
    info = describe(state_dict, {"arch": model.arch})
    meta = {**(extra or {}), "arch": model.arch, "kind": info.kind, "num_params": info.num_params}
    if dtype is not None:
        meta["dtype"] = str(dtype).removeprefix("torch.")
    json.dumps(meta)  # fail on non-JSON values before anything is written
    _atomic_write(path, lambda tmp: save_file(state_dict, tmp, metadata={"format": "pt"}))
    meta["sha256"] = _sha256(path)
    _atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return meta


def load_saved_model(path, expected_sha256: str | None = None) -> nn.Module:
    """Rebuild and strictly load a model written by :func:`save_model`, after checking its sha256
    against the sidecar and ``expected_sha256`` (e.g. pinned in a metrics file)."""
    path = Path(path)
    _check_file(path)
    meta = _read_sidecar(path)
    if "arch" not in meta:
        raise CheckpointError(f"{path} has no sidecar {path.with_suffix('.json').name} with an 'arch', so "
                              f"the model it belongs to is unknown")
    actual = _sha256(path)
    for label, want in (("its sidecar", meta.get("sha256")), ("the expected hash", expected_sha256)):
        if want and want.lower() != actual:
            raise CheckpointError(f"{path} has sha256 {actual}, but {label} says {want}: the file changed "
                                  f"after it was saved, or it is not the file meant")
    state_dict, _ = read_state_dict(path)
    model = _build(meta["arch"])
    _load_strict(model, state_dict, path)
    return model


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
    step=, rng=rng_state(), config=...``; refuses values ``weights_only`` could not load."""
    _check_plain(state, "state")
    _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path) -> dict:
    """The dict :func:`save_training_state` wrote, read with ``weights_only=True``, on CPU."""
    return _torch_load(Path(path))
