"""Figures: attention maps, MAE reconstructions, feature alignment and training curves.

All plotting functions take tensors / dicts and return a matplotlib ``Figure``; callers save them.
No backend is forced: in Jupyter (and under papermill) the inline backend shows every figure below
its cell, and elsewhere matplotlib falls back to a headless backend by itself when there is no display.
"""

import matplotlib.pyplot as plt
import torch
from torch import nn

from .analysis import alignment_correlation, capture_outputs


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
    fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.02).ax.tick_params(labelsize=6)


def middle_block(depth: int) -> int:
    """The 0-based index of a model's middle block: block ``(depth + 1) // 2`` of ``depth``, 1-based."""
    return (depth - 1) // 2


def plot_attention_comparison(images: torch.Tensor, attentions: dict[str, torch.Tensor], block: int | str = -1,
                              token: str = "CLS"):
    """One row per image: the image, then per model the head-mean attention of ``block`` over the image.

    ``attentions``: model name -> (depth, B, heads, gh, gw) from ``cls_attention``. ``block``: an index
    into every model's blocks, or ``"middle"`` for each model's ``middle_block`` (models of different
    depths). Each row has one colour scale, shared by the models (so a brighter map is a more peaked
    one), and a colorbar.
    """
    names = list(attentions)
    index = {n: middle_block(len(attentions[n])) if block == "middle" else block for n in names}
    titles = [f"{n} (block {index[n] + 1})" if block == "middle" else n for n in names]
    fig, axes = plt.subplots(len(images), 1 + len(names), figsize=(1.7 * (1 + len(names)) + 0.6, 1.6 * len(images)),
                             squeeze=False, layout="constrained")
    for i, img in enumerate(images):
        _show(axes[i, 0], _gray(img), "image" if i == 0 else None)
        _overlay_row(fig, axes[i, 1:], img, [attentions[n][index[n], i].mean(0) for n in names],
                     titles if i == 0 else [None] * len(names))
    which = {-1: "last block", "middle": "middle block"}.get(block) or f"block {block + 1 if block >= 0 else block}"
    fig.suptitle(f"{token}-to-patch attention, {which}, mean over heads (one colour scale per row)", fontsize=9)
    return fig


def plot_attention_detail(image: torch.Tensor, attention: torch.Tensor, name: str, token: str = "CLS"):
    """For one image and model: every head of the last block (top) and the head mean of every block
    (bottom), over the image; one colour scale and colorbar per row."""
    depth, heads = attention.shape[0], attention.shape[2]
    cols = max(depth, heads) + 1
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols + 0.6, 3.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], _gray(image), "image")
    _overlay_row(fig, axes[0, 1:heads + 1], image, [attention[-1, 0, h] for h in range(heads)],
                 [f"last block, head {h}" for h in range(heads)])
    _overlay_row(fig, axes[1, 1:depth + 1], image, [attention[b, 0].mean(0) for b in range(depth)],
                 [f"block {b + 1}, mean" for b in range(depth)])
    fig.suptitle(f"{name}: {token}-to-patch attention", fontsize=9)
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


FEW_POINTS = 5  # a curve with fewer epochs than this is drawn as marked, labelled points


def _draw_series(ax, pts, colour, label, style: int = 0):
    """One run's series of (epoch, value): a line when it has ``FEW_POINTS`` or more, else points
    with their values written beside them (a line through two points suggests a trend it cannot show)."""
    xs, ys = zip(*pts)
    if len(pts) >= FEW_POINTS:
        ax.plot(xs, ys, ls=("-", "--", ":", "-.")[style % 4], lw=1.5 if style == 0 else 1, color=colour,
                marker="o" if style == 0 else None, ms=3, label=label)
        return
    ax.plot(xs, ys, ls="none", marker="osD^v"[style % 5], ms=5 if style == 0 else 4, color=colour,
            mfc=colour if style == 0 else "none", label=label)
    for x, y in pts:
        ax.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6, color=colour)


def plot_curves(histories: dict[str, list[dict]], keys: list[str], title: str = "", components: bool = True):
    """One panel per metric key, one colour per run, so several runs overlay; ``histories`` as
    written by the engine. With ``components``, the ``train_loss`` panel also draws each run's loss
    terms (the other ``train_*`` keys, e.g. ``train_label`` and ``train_distill``) in a lighter style.

    A series of fewer than ``FEW_POINTS`` epochs is drawn as points labelled with their values; the
    legends sit below the panels, outside the data.
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys):
        for i, (name, hist) in enumerate(histories.items()):
            colour = f"C{i % 10}"
            pts = [(r["epoch"], r[key]) for r in hist if key in r]
            if pts:
                _draw_series(ax, pts, colour, name)
            parts = sorted({k for r in hist for k in r if k.startswith("train_") and k != "train_loss"})
            for j, part in enumerate(parts if components and key == "train_loss" else []):
                _draw_series(ax, [(r["epoch"], r[part]) for r in hist if part in r], colour,
                             f"{name}: {part.removeprefix('train_')}", style=j + 1)
        epochs = sorted({r["epoch"] for hist in histories.values() for r in hist})
        if 0 < len(epochs) < FEW_POINTS:
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
            ax.margins(y=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      ncol=min(3, len(handles)), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
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
    ax.set_xlabel("teacher target", fontsize=7)
    ax.set_ylabel("student prediction", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, markerscale=5)
    axes[1, 0].axis("off")
    for c in range(channels):
        maps = (target[1:, c].reshape(side, side), pred[1:, c].reshape(side, side))
        bound = max(float(x.abs().max()) for x in maps)
        for row, (title, x) in enumerate(zip((f"target ch {c}", f"student ch {c}"), maps)):
            _show(axes[row, c + 1], x, title, cmap="coolwarm")
            im = axes[row, c + 1].images[-1]
            im.set_clim(-bound, bound)
        fig.colorbar(im, ax=list(axes[:, c + 1]), fraction=0.05, pad=0.02, location="bottom").ax.tick_params(labelsize=6)
    fig.suptitle("GD: student prediction vs teacher decoder features (one image)", fontsize=9)
    return fig
