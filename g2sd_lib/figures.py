"""Figures: attention maps, MAE reconstructions, feature alignment and training curves.

All plotting functions take tensors / dicts and return a matplotlib ``Figure``; callers save them.
The curves and the bars of test scores are drawn in :mod:`g2sd_lib.curves`.
No backend is forced: in Jupyter (and under papermill) the inline backend shows every figure below
its cell, and elsewhere matplotlib falls back to a headless backend by itself when there is no display.
"""

import matplotlib.pyplot as plt
import torch
from torch import nn

from .analysis import alignment_correlation, capture_outputs
from .curves import TEXT_PT


@torch.no_grad()
def cls_attention(model: nn.Module, x: torch.Tensor, token: str = "cls") -> torch.Tensor:
    """Attention of the CLS token (or, ``token="dist"``, of a distilled student's distillation token)
    to the patches, every block: (depth, B, heads, gh, gw).

    timm's fused attention never materialises the softmax, so the blocks are switched to the
    explicit path for this call and hooks read the post-softmax map at ``attn_drop``. Token layout:
    cls first, then the patches, then the distillation token when present (officially appended last).
    """
    if token not in ("cls", "dist"):
        raise ValueError(f"token must be 'cls' or 'dist', got {token!r}")
    if token == "dist" and not hasattr(model, "dist_token"):
        raise ValueError(f"{type(model).__name__} has no distillation token")
    query = 0 if token == "cls" else -1
    grid = model.patch_embed.grid_size
    n_patches = grid[0] * grid[1]
    fused = [blk.attn.fused_attn for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = False
    try:
        maps = capture_outputs(model, [blk.attn.attn_drop for blk in model.blocks], x,
                               lambda o: o[:, :, query, 1:1 + n_patches])
    finally:
        for blk, f in zip(model.blocks, fused):
            blk.attn.fused_attn = f
    att = torch.stack(maps)  # (depth, B, heads, L)
    return att.reshape(*att.shape[:3], *grid).float()


def _show(ax, img, title=None, cmap="gray"):
    ax.imshow(img, cmap=cmap)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _gray(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (H, W) or (H, W, 3) for imshow."""
    return img[0] if img.shape[0] == 1 else img.permute(1, 2, 0).clamp(0, 1)


def _overlay(ax, image: torch.Tensor, attention: torch.Tensor, vmin: float, vmax: float, title=None):
    """The image in grey with ``attention`` (gh, gw), upsampled to its size, on top; returns the map's artist."""
    _show(ax, _gray(image), title)
    h, w = image.shape[-2:]
    return ax.imshow(attention, cmap="inferno", alpha=0.6, vmin=vmin, vmax=vmax, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                     interpolation="nearest")


def _overlay_row(fig, axes, image: torch.Tensor, maps: list[torch.Tensor], titles: list):
    """One row of overlays on one colour scale (the row's min to max), with its colorbar."""
    vmin, vmax = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    for ax, m, title in zip(axes, maps, titles):
        im = _overlay(ax, image, m, vmin, vmax, title)
    bar = fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.02)
    bar.set_label("attention weight", fontsize=TEXT_PT)
    bar.ax.tick_params(labelsize=TEXT_PT - 1)


def middle_block(depth: int) -> int:
    """The 0-based index of a model's middle block: block ``(depth + 1) // 2`` of ``depth``, 1-based."""
    return (depth - 1) // 2


def _similarity_title(title: str, similarity: float | None) -> str:
    return title if similarity is None else f"{title}\nsimilarity {similarity:+.2f}"


def plot_attention_comparison(images: torch.Tensor, attentions: dict[str, torch.Tensor], block: int | str = -1,
                              token: str = "CLS", similarity: dict[str, float] | None = None):
    """One row per image: the image, then per model the head-mean attention of ``block`` over the image.

    ``attentions``: model name -> (depth, B, heads, gh, gw) from ``cls_attention``. ``block``: an index
    into every model's blocks, or ``"middle"`` for each model's ``middle_block`` (models of different
    depths). Each row has one colour scale, shared by the models (so a brighter map is a more peaked
    one), and a colorbar. ``similarity``: model name -> its similarity to the teacher at that block
    (``analysis.attention_similarity``), written under the model's name (the teacher has none).
    """
    names = list(attentions)
    similarity = similarity or {}
    index = {n: middle_block(len(attentions[n])) if block == "middle" else block for n in names}
    titles = [_similarity_title(f"{n} (block {index[n] + 1})" if block == "middle" else n, similarity.get(n))
              for n in names]
    fig, axes = plt.subplots(len(images), 1 + len(names), figsize=(1.7 * (1 + len(names)) + 0.6, 1.6 * len(images)),
                             squeeze=False, layout="constrained")
    for i, img in enumerate(images):
        _show(axes[i, 0], _gray(img), "image" if i == 0 else None)
        _overlay_row(fig, axes[i, 1:], img, [attentions[n][index[n], i].mean(0) for n in names],
                     titles if i == 0 else [None] * len(names))
    which = {-1: "last block", "middle": "middle block"}.get(block) or f"block {block + 1 if block >= 0 else block}"
    note = "\nsimilarity: Pearson r to the teacher's map" if similarity else ""
    fig.suptitle(f"{token}-to-patch attention, {which}, mean over heads (one colour scale per row){note}", fontsize=9)
    return fig


def plot_attention_detail(image: torch.Tensor, attention: torch.Tensor, name: str, token: str = "CLS",
                          similarity: list[float] | None = None):
    """For one image and model: every head of the last block (top) and the head mean of every block
    (bottom), over the image; one colour scale and colorbar per row. ``similarity``: per block, the
    model's similarity to the teacher (``analysis.attention_similarity``), written under the block's
    title."""
    depth, heads = attention.shape[0], attention.shape[2]
    cols = max(depth, heads) + 1
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols + 0.6, 3.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], _gray(image), "image")
    _overlay_row(fig, axes[0, 1:heads + 1], image, [attention[-1, 0, h] for h in range(heads)],
                 [f"last block, head {h}" for h in range(heads)])
    sims = similarity or [None] * depth
    _overlay_row(fig, axes[1, 1:depth + 1], image, [attention[b, 0].mean(0) for b in range(depth)],
                 [_similarity_title(f"block {b + 1}, mean", sims[b]) for b in range(depth)])
    note = "\nsimilarity: Pearson r to the teacher's map at the same depth" if similarity else ""
    fig.suptitle(f"{name}: {token}-to-patch attention{note}", fontsize=9)
    return fig


def plot_reconstructions(images: torch.Tensor, masked: torch.Tensor, recon: torch.Tensor, pasted: torch.Tensor):
    """Rows: original, masked input, reconstruction, reconstruction with visible patches pasted."""
    rows = [("original", images), ("masked", masked), ("reconstruction", recon), ("recon. + visible", pasted)]
    fig, axes = plt.subplots(len(rows), len(images), figsize=(1.4 * len(images), 1.5 * len(rows)), squeeze=False)
    for r, (title, batch) in enumerate(rows):
        for c, img in enumerate(batch):
            _show(axes[r, c], _gray(img), title if c == 0 else None)
    fig.tight_layout()
    return fig


def plot_feature_alignment(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, channels: int = 4):
    """GD feature alignment for one image: predicted vs target (normalised) teacher features.

    pred, target: (1 + L, D) tokens of one image; mask: (L,) with 1 = removed. Left: scatter of
    all elements, visible vs masked patches, with the line y = x a perfect student would lie on and
    each group's correlation; right: a few channels as maps over the patch grid, target above the
    student's prediction on one colour scale per channel, with its colorbar.
    """
    side = int(round((pred.shape[0] - 1) ** 0.5))
    fig, axes = plt.subplots(2, channels + 1, figsize=(1.9 * (channels + 1) + 0.8, 4.2), squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    m = mask.bool()
    r = alignment_correlation(pred[None], target[None], mask[None])
    for sel, label, colour in ((~m, "visible", "C0"), (m, "masked", "C3")):
        t, p = target[1:][sel].flatten(), pred[1:][sel].flatten()
        ax.scatter(t, p, s=1, alpha=0.3, color=colour, label=f"{label} (r = {r[label]:.2f})")
    lo = float(min(target[1:].min(), pred[1:].min()))
    hi = float(max(target[1:].max(), pred[1:].max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("teacher target (normalised)", fontsize=TEXT_PT)
    ax.set_ylabel("student prediction", fontsize=TEXT_PT)
    ax.tick_params(labelsize=TEXT_PT - 1)
    axes[1, 0].axis("off")  # the legend goes in this free cell, off the points
    axes[1, 0].legend(*ax.get_legend_handles_labels(), fontsize=TEXT_PT, markerscale=5, loc="upper center",
                      frameon=False)
    for c in range(channels):
        maps = (target[1:, c].reshape(side, side), pred[1:, c].reshape(side, side))
        bound = max(float(x.abs().max()) for x in maps)
        for row, (title, x) in enumerate(zip((f"target ch {c}", f"student ch {c}"), maps)):
            _show(axes[row, c + 1], x, title, cmap="coolwarm")
            im = axes[row, c + 1].images[-1]
            im.set_clim(-bound, bound)
        bar = fig.colorbar(im, ax=list(axes[:, c + 1]), fraction=0.05, pad=0.02, location="bottom")
        bar.set_label("feature (normalised)", fontsize=TEXT_PT)
        bar.ax.tick_params(labelsize=TEXT_PT - 1)
    fig.suptitle("GD: student prediction vs teacher decoder features (one image)", fontsize=9)
    return fig
