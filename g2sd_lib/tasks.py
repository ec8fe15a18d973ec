"""What one training step computes, for every stage of the pipeline.

A task owns the trainable ``model`` (which the engine may wrap in DDP) and, for distillation, a
frozen teacher. ``loss(model, batch)`` returns ``(loss, parts)``, ``parts`` a dict of detached
scalars for logging. ``param_groups`` gives the official optimiser groups of the stage.

The teachers are frozen, in ``eval()`` and run under ``no_grad``. The official code leaves them in
train mode without ``no_grad``, which changes nothing for GD and for SD with drop path 0 (README,
"Fidelity to the official code").
"""

import torch
import torch.nn as nn

from . import losses
from .device import autocast_dtype
from .errors import InputError
from .optim import param_groups


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _to_float(out):
    """``out`` (a tensor, or tuples / lists / dicts of them) with floating tensors in float32."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(v) for v in out)
    return out


class TeacherForward:
    """The frozen teacher's forward precision (``TrainConfig.teacher_amp``, set by the engine).

    ``same`` (the default): the teacher runs under the run's own autocast, as the official code runs
    teacher and student under one AMP context. Otherwise the teacher gets its own autocast
    (``none`` = fp32, ``auto`` = bf16 where the hardware has it, ``bf16``, ``fp16``) and its outputs
    come back in float32: e.g. a student trained in fp32 on a CPU whose bf16 is fast for the wide
    teacher's inference-only forward but not for the narrow student's training step.
    """

    teacher_autocast = None  # None: the run's autocast; else (device type, dtype or None = fp32)

    def set_teacher_precision(self, teacher_amp: str, device: torch.device) -> None:
        self.teacher_autocast = None if teacher_amp == "same" else (device.type, autocast_dtype(teacher_amp, device))

    def teacher_forward(self, fn, *args):
        """``fn(*args)`` without gradients, at the teacher's precision."""
        with torch.no_grad():
            if self.teacher_autocast is None:
                return fn(*args)
            device_type, dtype = self.teacher_autocast
            with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                return _to_float(fn(*args))


class MAEPretraining:
    """MAE pretraining (teacher recipe): pixel loss on the removed patches, mask from fresh noise."""

    def __init__(self, model, mask_ratio: float = 0.75):
        self.model, self.mask_ratio = model, mask_ratio

    def param_groups(self, weight_decay):
        return param_groups(self.model, weight_decay)

    def loss(self, model, batch):
        x = batch[0]
        noise = torch.rand(x.shape[0], self.model.num_patches, device=x.device)
        loss, _, _ = model(x, self.mask_ratio, noise)
        return loss, {"mae": loss.detach()}


class GenericDistillation(TeacherForward):
    """G2SD stage 1: the student's decoder features regress the teacher decoder's hidden states.

    Per batch one noise tensor -> one mask for both models; target = teacher decoder after block
    ``target_block`` (1-based, official 4 of 8), all tokens (``supervise_all``) or masked ones;
    loss = smooth L1 (beta) against LayerNorm-without-affine targets, plus
    ``encoder_loss_weight`` x the encoder branch (official weight 0: the branch is not computed).
    """

    def __init__(self, teacher, student, mask_ratio=0.75, target_block=4, supervise_all=True,
                 smooth_l1_beta=2.0, encoder_loss_weight=0.0):
        if student.num_patches != teacher.num_patches:
            raise ValueError(f"teacher and student see different patch grids "
                             f"({teacher.num_patches} vs {student.num_patches} patches)")
        if not 1 <= target_block <= len(teacher.decoder_blocks):
            raise InputError(f"target_block {target_block} is not a block of the teacher's decoder: choose one of "
                             f"1..{len(teacher.decoder_blocks)} (task.target_block in a profile)")
        if encoder_loss_weight and student.encoderfeature_pred is None:
            raise ValueError("encoder_loss_weight > 0 needs a student built with encoder_branch=True")
        self.teacher, self.model = freeze(teacher), student
        self.mask_ratio, self.target_block = mask_ratio, target_block
        self.supervise_all, self.beta = supervise_all, smooth_l1_beta
        self.encoder_loss_weight = encoder_loss_weight
        student.freeze_unused(encoder_branch_used=bool(encoder_loss_weight))

    def param_groups(self, weight_decay):
        return param_groups(self.model, weight_decay)

    def teacher_targets(self, x, noise):
        """Teacher decoder hidden states (B, 1 + L, D_T) and pre-norm encoder tokens (B, 1 + L_keep, D)."""
        return self.teacher_forward(self._teacher_targets, x, noise)

    def _teacher_targets(self, x, noise):
        latent, _, ids_restore, prenorm = self.teacher.forward_encoder(x, self.mask_ratio, noise,
                                                                       return_prenorm=True)
        return self.teacher.forward_decoder(latent, ids_restore, stop_after=self.target_block), prenorm

    def loss(self, model, batch):
        x = batch[0]
        noise = torch.rand(x.shape[0], self.model.num_patches, device=x.device)
        hidden, prenorm = self.teacher_targets(x, noise)
        out = model(x, self.mask_ratio, noise)
        mask = None if self.supervise_all else out["mask"]
        loss = losses.gd_loss(out["decoder"], hidden, mask=mask, beta=self.beta)
        parts = {"decoder": loss.detach()}
        if self.encoder_loss_weight:
            enc = losses.gd_loss(out["encoder"], prenorm, beta=self.beta)
            loss = loss + self.encoder_loss_weight * enc
            parts["encoder"] = enc.detach()
        return loss, parts


class Finetuning:
    """Supervised training of a plain classifier (scratch, MAE-student and GD-only baselines, teacher)."""

    def __init__(self, model, mixup=None, smoothing=0.0, layer_decay=None):
        self.model, self.mixup, self.smoothing, self.layer_decay = model, mixup, smoothing, layer_decay

    def param_groups(self, weight_decay):
        return param_groups(self.model, weight_decay, self.layer_decay, skip_model_list=True)

    def mixed(self, batch):
        """(x, y) after mixup / cutmix when configured: y becomes soft targets (B, C)."""
        x, y = batch
        return self.mixup(x, y) if self.mixup is not None else (x, y)

    def label_loss(self, logits, y):
        if y.dim() > 1:
            return losses.soft_target_cross_entropy(logits, y)
        return nn.functional.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)

    def loss(self, model, batch):
        x, y = self.mixed(batch)
        loss = self.label_loss(model(x), y)
        return loss, {"ce": loss.detach()}


class SpecificDistillation(TeacherForward, Finetuning):
    """G2SD stage 2 (classification): labels for the cls head, the teacher's decision for the dist head.

    The teacher sees the same mixup/cutmix-ed batch; ``loss = (SoftCE + CE(dist, argmax T)) / 2``
    or, with ``loss_type='nkd'``, NKD on the cls head only (official ``--enable_nkd``).
    """

    def __init__(self, teacher, student, mixup=None, loss_type="g2sd", layer_decay=0.75):
        if loss_type not in ("g2sd", "nkd"):
            raise InputError(f"loss_type must be 'g2sd' or 'nkd', got {loss_type!r}")
        super().__init__(student, mixup=mixup, layer_decay=layer_decay)
        self.teacher, self.loss_type = freeze(teacher), loss_type
        if loss_type == "nkd":
            # NKD never trains the dist head, so the student predicts with its cls head alone; the
            # arch records it, so a saved and reloaded student predicts the same way
            student.average_heads = False
            student.arch = {**student.arch, "average_heads": False}

    def loss(self, model, batch):
        x, y = self.mixed(batch)
        t = self.teacher_forward(self.teacher, x)
        cls, dist = model(x)
        if self.loss_type == "nkd":
            loss = losses.nkd_loss(cls + 0 * dist, t, y)
            return loss, {"nkd": loss.detach()}
        return losses.sd_classification_loss(cls, dist, y, t)


class KnowledgeDistillation(TeacherForward, Finetuning):
    """Single-stage "conventional" KD baseline: ``(1 - alpha) CE + alpha tau^2 KL(T || S)``."""

    def __init__(self, teacher, model, alpha=0.5, temperature=4.0, **kwargs):
        super().__init__(model, **kwargs)
        self.teacher, self.alpha, self.temperature = freeze(teacher), alpha, temperature

    def loss(self, model, batch):
        x, y = self.mixed(batch)
        t = self.teacher_forward(self.teacher, x)
        logits = model(x)
        ce = self.label_loss(logits, y)
        kd = losses.soft_kd_loss(logits, t, self.temperature)
        return (1 - self.alpha) * ce + self.alpha * kd, {"ce": ce.detach(), "kd": kd.detach()}
