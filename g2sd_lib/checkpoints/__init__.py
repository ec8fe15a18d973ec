"""Checkpoints as contracts: read any official or own layout, say what it is, load it strictly.

The official G2SD code loads every checkpoint with ``strict=False``, so a wrong file loads
"successfully": the encoder-only ``mae_pretrain_vit_base.pth`` given as the GD teacher runs with a
random decoder (G2SD issue #7). Here each use of a checkpoint is a *role* (``gd-teacher``,
``sd-teacher``, ``gd-student``, ``sd-init``); :func:`check_role` refuses a file that cannot fill it
with one paragraph naming the missing keys and the file that has them, and :func:`load_model`
builds our model from the weights' shapes, of any width and depth, and loads it with ``strict=True``.

Our own weights are ``.safetensors`` (architecture recorded in the header) plus a JSON sidecar
(architecture, kind, sha256) that every reader verifies; resumable training state is a
``torch.save`` dict that ``torch.load(weights_only=True)`` reads back. The modules, in data-flow
order: :mod:`.files` (bytes in and out), :mod:`.inspection` (what a state dict is),
:mod:`.roles` (what it can be used for), :mod:`.loading` (models in and out).
"""

from .files import (CheckpointError, load_training_state, save_training_state, to_official_layout)
from .inspection import CHECKPOINT_KINDS, ROLES, CheckpointInfo, check_arch, describe
from .loading import (EncoderInit, load_encoder, load_model, load_saved_model, load_strict, read_state_dict,
                      save_model)
from .roles import check_role, role_problem

__all__ = ["CHECKPOINT_KINDS", "ROLES", "CheckpointError", "CheckpointInfo", "EncoderInit", "check_arch", "check_role",
           "describe", "load_encoder", "load_model", "load_saved_model", "load_strict", "load_training_state",
           "read_state_dict", "role_problem", "save_model", "save_training_state", "to_official_layout"]
