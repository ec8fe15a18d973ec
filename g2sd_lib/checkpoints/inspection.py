"""What a state dict is: its kind, the sizes its tensor shapes show, the architecture that rebuilds
it, and whether a recorded architecture (sidecar, safetensors header) agrees with its tensors.

Any width and depth is described: a size of ``ENCODER_SIZES`` is named when one matches (an alias),
else the encoder is named ``w{width}d{depth}h{heads}``. The number of attention heads changes no
tensor shape, so it comes, in this order, from a recorded architecture, from the named size of this
width and depth, else from the official ViTs' head width of 64 when the width is a multiple of 64,
else one head; the description says which (``dims['heads_from']``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..models import ENCODER_SIZES, encoder_size, model_kwargs, shape_problem, size_name
from .files import CheckpointError

_ENCODER = ("cls_token", "pos_embed", "patch_embed.proj.*", "blocks.*")
_DECODER = ("mask_token", "decoder_embed.*", "decoder_pos_embed", "decoder_blocks.*", "decoder_norm.*",
            "decoder_pred.*")
# role -> key patterns it needs; "a or b" is satisfied by either
ROLE_KEYS = {
    "gd-student": _ENCODER + ("norm.*",) + _DECODER + ("decoderfeature_pred.*",),
    "gd-teacher": _ENCODER + ("norm.*",) + _DECODER,
    "sd-init": _ENCODER,
    "sd-teacher": _ENCODER + ("fc_norm.* or norm.*", "head.*"),
}
ROLES = set(ROLE_KEYS)
# kind -> keys (``x`` or ``x.*``) that mark it; the first match wins, so the most specific come first
_KIND_KEYS = (("gd-student", ("decoderfeature_pred",)), ("sd-student", ("dist_token", "head_dist")),
              ("mae-finetuned", ("fc_norm", "head")), ("mae-full", ("decoder_embed",)),
              ("classifier", ("norm", "head")), ("mae-encoder", ("cls_token", "pos_embed", "patch_embed", "blocks")))
CHECKPOINT_KINDS = {"mae-full": "an MAE pre-training checkpoint with encoder and decoder",
                    "mae-encoder": "an encoder-only MAE pre-training checkpoint",
                    "mae-finetuned": "a fine-tuned MAE classifier with fc_norm and head",
                    "gd-student": "a G2SD generic-distillation student",
                    "sd-student": "a G2SD specific-distillation student with dist_token and head_dist",
                    "classifier": "a ViT classifier with norm and head",
                    "unknown": "not a recognised ViT checkpoint"}
_OFFICIAL_HEAD_DIM = 64  # ViT-Ti/S/B/L; only ViT-H (80) differs, and it is a named size


@dataclass
class CheckpointInfo:
    """What a state dict is. ``arch`` rebuilds its model (``model.arch`` format) or is None;
    ``dims`` holds the sizes read off the tensor shapes, plus ``num_heads`` and where that came
    from (``heads_from``); ``missing_for`` maps each role to the key patterns the state dict lacks."""

    kind: str
    arch: dict | None
    num_params: int
    num_tensors: int
    missing_for: dict[str, list[str]]
    dims: dict = field(default_factory=dict)
    source: str | None = None


def has_key(keys, pattern: str) -> bool:
    for p in pattern.split(" or "):
        if p in keys or (p.endswith(".*") and any(k.startswith(p[:-1]) for k in keys)):
            return True
    return False


def _detect_kind(keys) -> str:
    return next((kind for kind, needs in _KIND_KEYS if all(has_key(keys, f"{n} or {n}.*") for n in needs)),
                "unknown")


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


def _encoder_name(dims: dict) -> tuple[str, str]:
    """``(size, where its heads come from)``: the ``ENCODER_SIZES`` entry of this width and depth
    (preferring one of the same image format), else ``w{W}d{D}h{H}`` with the heads rule."""
    width, depth = dims["embed_dim"], dims["depth"]
    named = [s for s, v in ENCODER_SIZES.items() if v[:2] == (width, depth)]
    size = max(named, key=lambda s: ENCODER_SIZES[s][3:] == (dims["img_size"], dims["in_chans"]), default=None)
    if size:
        return size, f"size {size}"
    if width % _OFFICIAL_HEAD_DIM == 0:
        return (size_name(width, depth, width // _OFFICIAL_HEAD_DIM),
                f"assumed: head width {_OFFICIAL_HEAD_DIM} as the official ViTs; no weight shape shows heads")
    return (size_name(width, depth, 1), f"assumed: one head, the width is not a multiple of {_OFFICIAL_HEAD_DIM}; "
                                        f"no weight shape shows heads")


def _infer_arch(kind: str, dims: dict) -> tuple[dict, str]:
    """``(arch, where its heads come from)`` of a state dict of ``kind`` with these ``dims``."""
    size, heads_from = _encoder_name(dims)
    _, _, _, img, chans = encoder_size(size)
    over = {k: dims[k] for k, default in (("img_size", img), ("in_chans", chans), ("mlp_ratio", 4.0))
            if k in dims and dims[k] != default}
    encoder = f"vit_{size}_patch{dims['patch_size']}"
    if kind in ("mae-full", "gd-student"):  # .get: a damaged file still gets an arch; strict loading then fails
        name = f"mae_{encoder}_dec{dims.get('decoder_embed_dim', 0)}d{dims.get('decoder_depth', 0)}b"
        if kind == "mae-full":
            return {"builder": "mae", "name": name, **over}, heads_from
        return {"builder": "student", "name": name, "teacher_decoder_dim": dims.get("teacher_decoder_dim"),
                "teacher_embed_dim": dims.get("teacher_embed_dim"),
                "encoder_branch": "teacher_embed_dim" in dims, **over}, heads_from
    # 'token': timm's cls-token ViT; with num_classes=0 it is exactly the MAE encoder (timm's '.mae')
    pool = {"mae-finetuned": "avg", "sd-student": "distilled"}.get(kind, "token")
    return ({"builder": "classifier", "name": encoder, "kind": pool, "num_classes": dims.get("num_classes", 0),
             **over}, heads_from)


# ------------------------------------------------------------------------------------ recorded archs
def _expected_kind(kw: dict, builder: str) -> str:
    if builder != "classifier":
        return {"mae": "mae-full", "student": "gd-student"}[builder]
    if kw["kind"] == "distilled":
        return "sd-student"
    if not kw["num_classes"]:
        return "mae-encoder"
    return "mae-finetuned" if kw["kind"] == "avg" else "classifier"


def _implied_dims(kw: dict, builder: str) -> dict:
    """The sizes an arch's constructor arguments give the tensors, under ``_infer_dims`` names."""
    dims = {k: kw[k] for k in ("embed_dim", "depth", "patch_size", "in_chans", "img_size")}
    dims["mlp_ratio"] = int(kw["embed_dim"] * kw.get("mlp_ratio", 4.0)) / kw["embed_dim"]
    if builder in ("mae", "student"):
        dims.update(decoder_embed_dim=kw["decoder_embed_dim"], decoder_depth=kw["decoder_depth"])
    if builder == "student":
        dims["teacher_decoder_dim"] = kw["teacher_decoder_dim"]
        dims["teacher_embed_dim"] = kw["teacher_embed_dim"] if kw["encoder_branch"] else None
    if builder == "classifier":
        dims["num_classes"] = kw["num_classes"] or None  # num_classes 0: no head tensor
    return dims


def _kwargs(arch: dict, source, label: str) -> dict:
    try:
        return model_kwargs(arch)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: the architecture {label} records cannot be built ({err})") from err


def _differences(ours: dict, theirs: dict) -> list[str]:
    return [f"{k}: it says {ours.get(k)}, the weights file's own header says {theirs.get(k)}"
            for k in sorted(ours.keys() | theirs.keys()) if ours.get(k) != theirs.get(k)]


def check_arch(arch: dict, state_dict: Mapping, source, recorded: dict | None = None,
               label: str = "its sidecar") -> None:
    """Refuse ``arch`` (claimed by ``label``) unless it agrees with the tensors on every size they
    show, its sizes can build a model (:func:`g2sd_lib.models.shape_problem`: heads that divide the
    widths, ...), and it matches the ``recorded`` arch of the file's
    header. Archs of other builders (dense models) are only compared with ``recorded``."""
    builder = arch.get("builder")
    if builder not in ("mae", "student", "classifier"):
        problems = _differences(arch, recorded) if recorded is not None else []
    else:
        kw = _kwargs(arch, source, label)
        kind, dims, expected = _detect_kind(set(state_dict)), _infer_dims(state_dict), _expected_kind(kw, builder)
        problems = [] if kind == expected else [f"kind: it says {expected}, the tensors are {kind}"]
        if kind == expected:
            problems += [f"{k}: it says {v}, the tensors say {dims.get(k)}"
                         for k, v in _implied_dims(kw, builder).items() if dims.get(k) != v]
        if problem := shape_problem(kw):
            problems.append(f"sizes: {problem}")
        if not problems and recorded is not None:
            problems = _differences(kw, _kwargs(recorded, source, "the file's header"))
    if problems:
        raise CheckpointError(f"{source} does not match the architecture {label} claims "
                              f"({arch.get('name', arch)}): {'; '.join(problems)}")


def describe(state_dict: Mapping, meta: dict | None = None, source=None) -> CheckpointInfo:
    """Kind, architecture and role fitness of ``state_dict`` of any size; ``meta['arch']`` (a sidecar)
    outranks the shapes but must agree with them (:func:`check_arch`)."""
    keys = set(state_dict)
    kind, dims = _detect_kind(keys), _infer_dims(state_dict)
    arch = (meta or {}).get("arch")
    heads_from = decoder_heads_from = "recorded with the weights"
    if arch is not None:
        check_arch(arch, state_dict, source or "the checkpoint")
    elif dims and kind != "unknown":
        (arch, heads_from), decoder_heads_from = _infer_arch(kind, dims), "width // 32, as the official decoders"
    if dims and arch and arch.get("builder") in ("mae", "student", "classifier"):
        kw = model_kwargs(arch)
        dims.update(num_heads=kw["num_heads"], heads_from=heads_from)
        if "decoder_num_heads" in kw:
            dims.update(decoder_num_heads=kw["decoder_num_heads"], decoder_heads_from=decoder_heads_from)
    missing = {role: [p for p in patterns if not has_key(keys, p)] for role, patterns in sorted(ROLE_KEYS.items())}
    return CheckpointInfo(kind, arch, sum(v.numel() for v in state_dict.values()), len(state_dict), missing,
                          dims, None if source is None else str(source))
