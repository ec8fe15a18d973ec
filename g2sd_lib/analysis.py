"""Looking inside teacher and student: reconstructions, GD alignment, block features, CKA, PCA, and
the noise of a statistic over the images it was measured on (bootstrap)."""

from collections.abc import Callable

import torch
import torch.nn as nn

from .losses import feature_target


@torch.no_grad()
def mae_reconstruction(model, x: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None) -> dict:
    """MAE reconstruction of a batch (B, C, H, W), for display.

    A model trained with ``norm_pix_loss`` predicts per-patch normalised pixels; they are mapped
    back with each patch's true mean and std (as the MAE demo does), so only the patch *shape* is
    predicted. Returns ``masked`` (removed patches zeroed), ``recon`` and ``pasted`` (visible
    patches from the input), all (B, C, H, W), and ``mask`` (B, L).
    """
    model.eval()
    if noise is None:
        noise = model.random_noise(x.shape[0], device=x.device)
    _, pred, mask = model(x, mask_ratio, noise)
    target = model.patchify(x)
    if model.norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    m = mask.unsqueeze(-1)
    return {"masked": model.unpatchify(target * (1 - m)), "recon": model.unpatchify(pred),
            "pasted": model.unpatchify(target * (1 - m) + pred * m), "mask": mask}


@torch.no_grad()
def gd_alignment(teacher, student, x: torch.Tensor, target_block: int, mask_ratio: float = 0.75,
                 noise: torch.Tensor | None = None) -> dict:
    """Student feature predictions next to their targets: ``pred`` and ``target`` (B, 1 + L, D_T)
    (target = LayerNorm-without-affine of the teacher decoder after ``target_block``), ``mask`` (B, L)."""
    teacher.eval()
    student.eval()
    if noise is None:
        noise = teacher.random_noise(x.shape[0], device=x.device)
    latent, _, ids_restore = teacher.forward_encoder(x, mask_ratio, noise)
    target = feature_target(teacher.forward_decoder(latent, ids_restore, stop_after=target_block))
    out = student(x, mask_ratio, noise)
    return {"pred": out["decoder"], "target": target, "mask": out["mask"]}


def alignment_correlation(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Pearson r of predicted and target features over every element of a token group.

    pred, target (B, 1 + L, D), as from ``gd_alignment``; mask (B, L), 1 = removed. Groups:
    ``visible`` and ``masked`` patch tokens, and ``all`` tokens (cls included), pooled over the batch.
    """
    m = mask.bool()
    groups = {"visible": (pred[:, 1:][~m], target[:, 1:][~m]), "masked": (pred[:, 1:][m], target[:, 1:][m]),
              "all": (pred, target)}
    return {name: torch.corrcoef(torch.stack([p.flatten().double(), t.flatten().double()]))[0, 1].item()
            if p.numel() > 1 else float("nan") for name, (p, t) in groups.items()}


@torch.no_grad()
def capture_outputs(model: nn.Module, modules, x: torch.Tensor, keep=lambda output: output) -> list:
    """``keep(output)`` of each of ``modules`` (in call order) during one ``model(x)`` in eval mode.

    The forward hooks are removed and the model's training mode restored afterwards, even on error.
    """
    outputs, was_training = [], model.training
    hooks = [m.register_forward_hook(lambda mod, inputs, output: outputs.append(keep(output))) for m in modules]
    try:
        model.eval()
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return outputs


def block_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output tokens (B, N, D) of every block of a ViT classifier, in eval mode."""
    return capture_outputs(model, model.blocks, x, lambda o: o.float())


def patch_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The patch tokens (B, L, D) of a block output: prefix tokens dropped, and a distillation token
    (appended last, G2SD layout) too."""
    n_patches = model.patch_embed.num_patches
    start = getattr(model, "num_prefix_tokens", 1)
    return tokens[:, start:start + n_patches]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of the same
    n examples, x (n, d1), y (n, d2): ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` after centring."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    num = (y.T @ x).norm() ** 2
    return (num / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def cka_matrix(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """CKA between every block of model a and every block of model b, on mean-pooled patch tokens
    ((B, L, D) -> (B, D) per block). Returns (len(a), len(b))."""
    pa = [f.mean(1) for f in feats_a]
    pb = [f.mean(1) for f in feats_b]
    return torch.tensor([[linear_cka(a, b) for b in pb] for a in pa])


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """First three principal components of patch tokens (B, L, D), fitted over the batch, as an
    image per sample (B, gh, gw, 3) scaled to [0, 1] per component."""
    B, L, D = tokens.shape
    flat = tokens.reshape(B * L, D).double()
    flat = flat - flat.mean(0)
    _, _, v = torch.pca_lowrank(flat, q=3, center=False)
    proj = flat @ v[:, :3]
    lo, hi = proj.min(0).values, proj.max(0).values
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    return proj.reshape(B, *grid, 3).float()


def attention_similarity(teacher: torch.Tensor, student: torch.Tensor) -> list[float]:
    """How close a student's attention maps are to its teacher's, per student block.

    teacher (depth_T, B, heads_T, gh, gw), student (depth_S, B, heads_S, gh, gw), as from
    ``figures.cls_attention`` on the same images. Per student block b (0-based), the teacher block at
    the same relative depth, ``round((b + 1) * depth_T / depth_S) - 1``; per image the Pearson
    correlation of the two head-mean maps over the patches, averaged over the images: 1 = the same
    pattern, 0 = unrelated (a plain cosine would call any two near-uniform maps similar).
    """
    depth_t, depth_s = teacher.shape[0], student.shape[0]
    t, s = teacher.double().mean(2).flatten(2), student.double().mean(2).flatten(2)  # (depth, B, L)
    t, s = t - t.mean(-1, keepdim=True), s - s.mean(-1, keepdim=True)
    return [nn.functional.cosine_similarity(t[round((b + 1) * depth_t / depth_s) - 1], s[b], dim=-1).mean().item()
            for b in range(depth_s)]


def background_patches(images: torch.Tensor, patch_size: int, threshold: float = 0.05) -> torch.Tensor:
    """Which patches are background: (B, gh, gw) bool, True where the patch's mean intensity is below
    ``threshold``. ``images`` (B, C, H, W) in [0, 1], before normalisation (Fashion-MNIST's
    background is 0)."""
    p = patch_size
    return images.float().mean(1).unfold(1, p, p).unfold(2, p, p).mean((-1, -2)) < threshold


def attention_on_background(attention: torch.Tensor, background: torch.Tensor) -> list[dict]:
    """Per block, where a head-mean attention map puts its weight: ``mass`` the share of the map's
    patch attention on background patches, ``brightest`` the share of images whose brightest patch
    is background, ``corner`` the share whose brightest patch is a grid corner, ``chance`` the
    background's share of the patches (what ``mass`` and ``brightest`` are for a map blind to the image).

    attention (depth, B, heads, gh, gw) from ``figures.cls_attention``; background (B, gh, gw) bool.
    """
    gh, gw = background.shape[-2:]
    corner = torch.zeros(gh, gw, dtype=torch.bool)
    corner[0, 0] = corner[0, -1] = corner[-1, 0] = corner[-1, -1] = True
    bg = background.flatten(1)
    out = []
    for maps in attention.double().mean(2).flatten(2):  # (B, L) per block
        top = maps.argmax(1)
        out.append({"mass": ((maps * bg).sum(1) / maps.sum(1)).mean().item(),
                    "brightest": bg.gather(1, top[:, None]).double().mean().item(),
                    "corner": corner.flatten()[top].double().mean().item(),
                    "chance": bg.double().mean().item()})
    return out


def bootstrap_interval(statistic: Callable[[torch.Tensor], float], n: int, draws: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of a statistic over ``n`` images: ``statistic(idx)`` on ``draws``
    resamples ``idx`` (n,) of the image indices drawn with replacement, and the central ``level`` share
    of its values. A difference whose interval excludes 0 is larger than the noise of the image sample
    (not of the seed: another training run is another sample)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([statistic(torch.randint(0, n, (n,), generator=g)) for _ in range(draws)], dtype=torch.float64)
    tail = (1 - level) / 2
    return values.quantile(tail).item(), values.quantile(1 - tail).item()
