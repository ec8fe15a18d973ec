"""Roles: whether a checkpoint can be the GD teacher, the SD teacher, a GD student or an SD
initialisation, and if not, one paragraph saying why and which file would do.

The official G2SD code loads every checkpoint with ``strict=False``, so a wrong file loads
"successfully": the encoder-only ``mae_pretrain_vit_base.pth`` given as the GD teacher runs with a
random decoder (G2SD issue #7). Here the missing keys are named with the official file that has them.
"""

from __future__ import annotations

import re

from ..errors import InputError
from .files import CheckpointError
from .inspection import CHECKPOINT_KINDS, ROLES, CheckpointInfo, describe
from .official import OFFICIAL_CHECKPOINTS


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
                   "via g2sd_lib.pipeline.download.fetch_official."),
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


def role_problem(info: CheckpointInfo, role: str) -> str | None:
    """One paragraph explaining why the checkpoint ``info`` describes cannot fill ``role``, or None."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}; roles: {', '.join(sorted(ROLES))}")
    cannot, advice = _ROLE_TEXT[role]
    src, what = info.source or "the checkpoint", f"{CHECKPOINT_KINDS[info.kind]} (kind {info.kind})"
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
    problem = role_problem(info, role)
    if problem:
        raise CheckpointError(problem)
    return info
