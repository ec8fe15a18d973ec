"""Figures: attention maps, MAE reconstructions, feature alignment and training curves.

All plotting functions take tensors / dicts and return a matplotlib ``Figure``; callers save them.
No backend is forced: in Jupyter (and under papermill) the inline backend shows every figure below
its cell, and elsewhere matplotlib falls back to a headless backend by itself when there is no display.
"""

import matplotlib.pyplot as plt
import torch
from torch import nn

from .analysis import capture_outputs


@torch.no_grad()
def cls_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLS-to-patch attention of every block, (depth, B, heads, gh, gw).

    timm's fused attention never materialises the softmax, so the blocks are switched to the
    explicit path for this call and hooks read the post-softmax map at ``attn_drop``. Token layout:
    cls first, then the patches (a distillation token, when present, is last and is ignored).
    """
    grid = model.patch_embed.grid_size
    n_patches = grid[0] * grid[1]
    fused = [blk.attn.fused_attn for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = False
    try:
        maps = capture_outputs(model, [blk.attn.attn_drop for blk in model.blocks], x,
                               lambda o: o[:, :, 0, 1:1 + n_patches])
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


def plot_attention_comparison(images: torch.Tensor, attentions: dict[str, torch.Tensor], block: int = -1):
    """One row per image: the image, then per model the head-mean CLS attention of ``block``.

    ``attentions``: model name -> (depth, B, heads, gh, gw) from ``cls_attention``.
    """
    names = list(attentions)
    fig, axes = plt.subplots(len(images), 1 + len(names), figsize=(1.6 * (1 + len(names)), 1.6 * len(images)),
                             squeeze=False)
    for i, img in enumerate(images):
        _show(axes[i, 0], _gray(img), "image" if i == 0 else None)
        for j, name in enumerate(names):
            _show(axes[i, j + 1], attentions[name][block, i].mean(0), name if i == 0 else None, cmap="inferno")
    fig.suptitle("CLS-to-patch attention, last block, mean over heads", fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention_detail(image: torch.Tensor, attention: torch.Tensor, name: str):
    """For one image and model: every head of the last block (top) and the head mean of every block."""
    depth, heads = attention.shape[0], attention.shape[2]
    cols = max(depth, heads) + 1
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols, 3.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], _gray(image), "image")
    for h in range(heads):
        _show(axes[0, h + 1], attention[-1, 0, h], f"last block, head {h}", cmap="inferno")
    for b in range(depth):
        _show(axes[1, b + 1], attention[b, 0].mean(0), f"block {b + 1}, mean", cmap="inferno")
    fig.suptitle(f"{name}: CLS-to-patch attention", fontsize=9)
    fig.tight_layout()
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


def plot_curves(histories: dict[str, list[dict]], keys: list[str], title: str = ""):
    """One panel per metric key, one line per run; ``histories`` as written by the engine."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, hist in histories.items():
            pts = [(r["epoch"], r[key]) for r in hist if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_feature_alignment(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, channels: int = 4):
    """GD feature alignment for one image: predicted vs target (normalised) teacher features.

    pred, target: (1 + L, D) tokens of one image; mask: (L,) with 1 = removed. Left: scatter of
    all elements, visible vs masked patches; right: a few channels as maps over the patch grid.
    """
    side = int(round((pred.shape[0] - 1) ** 0.5))
    fig, axes = plt.subplots(2, channels + 1, figsize=(1.8 * (channels + 1), 3.8), squeeze=False)
    ax = axes[0, 0]
    m = mask.bool()
    for sel, label in ((~m, "visible"), (m, "masked")):
        ax.scatter(target[1:][sel].flatten(), pred[1:][sel].flatten(), s=1, alpha=0.3, label=label)
    ax.set_xlabel("teacher target", fontsize=7)
    ax.set_ylabel("student prediction", fontsize=7)
    ax.legend(fontsize=6, markerscale=5)
    axes[1, 0].axis("off")
    for c in range(channels):
        _show(axes[0, c + 1], target[1:, c].reshape(side, side), f"target ch {c}", cmap="coolwarm")
        _show(axes[1, c + 1], pred[1:, c].reshape(side, side), f"student ch {c}", cmap="coolwarm")
    fig.tight_layout()
    return fig
