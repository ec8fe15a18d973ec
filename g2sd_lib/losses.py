"""The losses of G2SD and of the baselines it is compared with.

Each function states its shapes and the equation; the official behaviour it reproduces is checked
against outputs of the official code in ``tests/test_parity.py``.
"""

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- generic distillation
def feature_target(teacher_hidden: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim: the GD regression target, (B, N, D) -> (B, N, D)."""
    return F.layer_norm(teacher_hidden, teacher_hidden.shape[-1:], eps=eps)


def gd_loss(pred: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor | None = None,
            beta: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Generic-distillation feature loss.

    ``L = smoothL1_beta(pred, LN(h_T))``, mean over elements, with h_T the teacher decoder hidden
    states after block k (before ``decoder_norm``) and LN a LayerNorm without affine.

    Args:
        pred: (B, 1 + L, D_T) student predictions for cls + all patches (original order).
        teacher_hidden: (B, 1 + L, D_T) teacher hidden states, same tokens.
        mask: None to supervise all tokens (official ``supervise_all=True``); else (B, L) with
            1 = removed, to supervise the masked patch tokens only.
        beta: smooth-L1 threshold (official: 2.0, hard-coded there).
    """
    target = feature_target(teacher_hidden.float(), eps)
    pred = pred.float()
    if mask is not None:
        keep = mask.bool()
        pred, target = pred[:, 1:][keep], target[:, 1:][keep]
    return F.smooth_l1_loss(pred, target, beta=beta)


def mae_pixel_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   norm_pix: bool = False) -> torch.Tensor:
    """MAE reconstruction loss on removed patches.

    ``L = sum_i m_i * mean_j (pred_ij - t_ij)^2 / sum_i m_i`` with t the patch pixels (B, L, P),
    normalised per patch, ``(t - mean) / sqrt(var + 1e-6)`` (unbiased var), when ``norm_pix``.
    ``mask`` (B, L) has 1 = removed.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


# -------------------------------------------------------------------------- specific distillation
def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_c -y_bc log softmax(z_b)_c`` for soft (mixup) targets y (B, C)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def sd_classification_loss(cls_logits: torch.Tensor, dist_logits: torch.Tensor, targets: torch.Tensor,
                           teacher_logits: torch.Tensor):
    """G2SD specific distillation for classification.

    ``L = (SoftCE(z_cls, y_mix) + CE(z_dist, argmax z_T)) / 2``: the cls head learns the (mixup,
    label-smoothed) labels, the distillation head the teacher's hard decision on the same mixed
    batch. All logits (B, C); ``targets`` (B, C) soft or (B,) hard.

    Returns (loss, {"label": ..., "distill": ...}).
    """
    if targets.dim() == 1:
        label = F.cross_entropy(cls_logits.float(), targets)
    else:
        label = soft_target_cross_entropy(cls_logits, targets)
    distill = F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
    return (label + distill) / 2, {"label": label.detach(), "distill": distill.detach()}


def nkd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """Normalized KD (Yang et al. 2022), the official SD option ``--enable_nkd``.

    ``L = -mean_b(p^T_{b,y} log p^S_{b,y}) - gamma * tau^2 * mean_b sum_{c != y} q^T_bc log q^S_bc``
    with p the softmax over all classes, q the softmax over the non-target classes at temperature
    tau. ``labels`` (B,) hard or (B, C) soft (its argmax is used, as officially).
    """
    if labels.dim() > 1:
        labels = labels.argmax(dim=-1)
    logits, teacher_logits = logits.float(), teacher_logits.float()
    idx = labels.view(-1, 1)
    target_s = F.log_softmax(logits, dim=-1).gather(1, idx)
    target_t = F.softmax(teacher_logits, dim=-1).gather(1, idx).detach()
    loss_target = -(target_t * target_s).mean()
    B, C = logits.shape
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, idx, False)
    non_s = F.log_softmax(logits[keep].view(B, C - 1) / temperature, dim=-1)
    non_t = F.softmax(teacher_logits[keep].view(B, C - 1) / temperature, dim=-1)
    loss_non_target = -gamma * temperature**2 * (non_t * non_s).sum(dim=-1).mean()
    return loss_target + loss_non_target


def soft_kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Classic KD (Hinton et al.): ``tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))``, batch mean."""
    log_p_s = F.log_softmax(logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


# ------------------------------------------------------------------------------------ dense tasks
def cwd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0,
             weight: float = 3.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al. 2021) on segmentation logits (N, C, H, W).

    Per (n, c) a softmax over the H*W positions:
    ``L = weight * tau^2 * sum_{n,c,hw} -softmax(T/tau) * log softmax(S/tau) / (N * C)``.
    This is the official cross-entropy form (no teacher-entropy term): the same gradient as KL, a
    larger value. Official: tau 1, weight 3 (run.sh overrides the config's 10).
    """
    N, C, H, W = student_logits.shape
    p_t = F.softmax(teacher_logits.float().reshape(N * C, H * W) / tau, dim=1)
    log_p_s = F.log_softmax(student_logits.float().reshape(N * C, H * W) / tau, dim=1)
    return weight * tau**2 * torch.sum(-p_t * log_p_s) / (N * C)


def cwd_floor(teacher_logits: torch.Tensor, tau: float = 1.0, weight: float = 3.0) -> torch.Tensor:
    """The least value :func:`cwd_loss` can take against ``teacher_logits`` (N, C, H, W), reached by a
    student that copies them: ``weight * tau^2 * sum_{n,c} H(softmax(T_{n,c} / tau)) / (N * C)``, the
    teacher's spatial entropy. It does not depend on the student; ``cwd_loss - cwd_floor`` is the KL
    part, the part training moves."""
    N, C, H, W = teacher_logits.shape
    log_p_t = F.log_softmax(teacher_logits.float().reshape(N * C, H * W) / tau, dim=1)
    return weight * tau**2 * torch.sum(-log_p_t.exp() * log_p_t) / (N * C)


def frs_losses(student_feats, teacher_feats, student_objectness, teacher_objectness):
    """FRS-style detection distillation, unweighted, summed over pyramid levels.

    Per level l, with features (N, C, H, W) (student ones already through their 3x3 adapter) and
    objectness logits (N, A, H, W), the teacher's max-over-anchors objectness is the mask
    ``M = max_a sigmoid(T_obj)`` (N, H, W), detached:

    * ``feat_l = sum_{n,c,h,w} (F_T - F_S)^2 M / sum M``
    * ``obj_l = sum_{n,a,h,w} BCE(sigmoid(S_obj), sigmoid(T_obj)) M / sum M``

    The BCE is taken in its logits form, which equals the official probability form in fp32 and
    stays finite under autocast (official bug 5). Returns (sum_l feat_l, sum_l obj_l).
    """
    feat_total, obj_total = 0.0, 0.0
    for f_s, f_t, o_s, o_t in zip(student_feats, teacher_feats, student_objectness, teacher_objectness,
                                  strict=True):
        o_t = o_t.float().detach()
        m = torch.sigmoid(o_t).amax(dim=1).detach()
        norm = m.sum()
        feat_total = feat_total + ((f_t.float() - f_s.float()) ** 2 * m[:, None]).sum() / norm
        bce = F.binary_cross_entropy_with_logits(o_s.float(), torch.sigmoid(o_t), reduction="none")
        obj_total = obj_total + (bce * m[:, None]).sum() / norm
    return feat_total, obj_total


def distill_warmup(iteration: int, warmup_iters: int = 500) -> float:
    """Linear warm-up factor of the detection distillation losses: ``min(1, it / warmup)``."""
    return 1.0 if warmup_iters <= 0 or iteration >= warmup_iters else iteration / warmup_iters
