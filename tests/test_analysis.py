"""Analysis and figure helpers on tiny models."""

import pytest
import torch

from g2sd_lib import analysis, curves, figures
from g2sd_lib.models import create_classifier, create_mae


def test_linear_cka_properties():
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert abs(analysis.linear_cka(x, x) - 1) < 1e-9
    assert abs(analysis.linear_cka(x, 3 * x @ q + 1) - 1) < 1e-9  # invariant to rotation, scale, shift
    assert analysis.linear_cka(x, torch.randn(200, 16)) < 0.2


def test_cls_attention_is_a_distribution_over_tokens_and_restores_fused_attention():
    model = create_classifier("vit_smokesmall_patch7", "distilled", 10)
    fused = [blk.attn.fused_attn for blk in model.blocks]
    att = figures.cls_attention(model, torch.randn(3, 1, 28, 28))
    assert att.shape == (2, 3, 2, 4, 4)  # depth, batch, heads, grid
    assert (att >= 0).all() and (att.sum(dim=(-1, -2)) <= 1 + 1e-5).all()  # cls and dist tokens take the rest
    assert [blk.attn.fused_attn for blk in model.blocks] == fused


def test_pca_rgb_and_block_features_shapes():
    model = create_classifier("vit_smokebase_patch7", "avg", 10)
    feats = analysis.block_features(model, torch.randn(5, 1, 28, 28))
    assert len(feats) == 2 and feats[-1].shape == (5, 17, 32)
    rgb = analysis.pca_rgb(analysis.patch_tokens(model, feats[-1]), (4, 4))
    assert rgb.shape == (5, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(analysis.cka_matrix(feats, feats).diagonal(), torch.ones(2))


def test_mae_reconstruction_keeps_visible_patches():
    model = create_mae("mae_vit_smokebase_patch7_dec32d2b", norm_pix_loss=True)
    x = torch.randn(2, 1, 28, 28)
    rec = analysis.mae_reconstruction(model, x, 0.75, torch.rand(2, 16))
    visible = (1 - rec["mask"]).bool()
    torch.testing.assert_close(model.patchify(rec["pasted"])[visible], model.patchify(x)[visible])
    assert rec["recon"].shape == x.shape


def test_distillation_token_attention_and_similarity_to_the_teacher():
    student = create_classifier("vit_smokesmall_patch7", "distilled", 10)
    teacher = create_classifier("vit_smokebase_patch7", "avg", 10)
    x = torch.randn(3, 1, 28, 28)
    cls, dist = figures.cls_attention(student, x), figures.cls_attention(student, x, token="dist")
    assert dist.shape == cls.shape and not torch.allclose(dist, cls)
    with pytest.raises(ValueError, match="no distillation token"):
        figures.cls_attention(teacher, x, token="dist")
    t = figures.cls_attention(teacher, x)
    assert analysis.attention_similarity(t, t) == pytest.approx([1.0] * len(teacher.blocks))
    deep = t.repeat_interleave(2, dim=0)  # a teacher twice as deep: student block b meets teacher block 2b + 1
    assert analysis.attention_similarity(deep, t) == pytest.approx([1.0] * len(teacher.blocks))
    sims = analysis.attention_similarity(t, cls)
    assert len(sims) == len(student.blocks) and all(-1 - 1e-6 <= s <= 1 + 1e-6 for s in sims)


def test_figures_draw_overlays_curves_with_components_and_labelled_alignment():
    import matplotlib
    matplotlib.use("Agg")
    x = torch.randn(2, 1, 28, 28)
    model = create_classifier("vit_smokesmall_patch7", "distilled", 10)
    att = {"a": figures.cls_attention(model, x), "b": figures.cls_attention(model, x, token="dist")}
    fig = figures.plot_attention_comparison(x, att)
    assert len(fig.axes) == 2 * 3 + 2  # image + 2 models per row, one colorbar per row
    fig = figures.plot_attention_detail(x[0], att["a"][:, :1], "a")
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 2
    hist = [{"epoch": e, "train_loss": 1 / e, "train_label": 0.5 / e, "train_distill": 0.5 / e} for e in (1, 2)]
    fig = curves.plot_curves({"run1": hist, "run2": hist}, ["train_loss"])
    assert len(fig.axes[0].lines) == 6  # per run: the loss and its two terms
    fig = figures.plot_feature_alignment(torch.randn(17, 8), torch.randn(17, 8), (torch.rand(16) > 0.5).float())
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "y = x" in labels and any(label.startswith("masked") for label in labels) and fig._suptitle is not None


def test_detection_labels_do_not_overlap():
    import matplotlib
    matplotlib.use("Agg")
    from g2sd_lib.dense.plots import plot_detection_predictions
    boxes = torch.tensor([[3.0, 4.0, 20.0, 30.0], [5.0, 6.0, 22.0, 28.0], [4.0, 5.0, 21.0, 29.0]])
    truths = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3])}]
    fig = plot_detection_predictions(torch.zeros(1, 1, 56, 56), truths, {"m": [{**truths[0], "scores": torch.ones(3)}]},
                                     best=[3])
    fig.canvas.draw()
    for ax in fig.axes[:2]:
        extents = [t.get_window_extent() for t in ax.texts]
        assert len(extents) == 3
        assert not any(a.overlaps(b) for i, a in enumerate(extents) for b in extents[i + 1:])


def test_curves_of_few_epochs_are_labelled_points_with_the_legend_outside_the_data():
    import matplotlib
    matplotlib.use("Agg")
    short = [{"epoch": e, "train_loss": 1 / e, "train_label": 0.6 / e, "val_top1": 0.5 + e / 10} for e in (1, 2)]
    fig = curves.plot_curves({"seed 0": short}, ["train_loss", "val_top1"])
    loss_ax, top1_ax = fig.axes[:2]
    assert all(line.get_linestyle() == "None" and line.get_marker() not in (None, "None") for line in loss_ax.lines)
    assert sorted(t.get_text() for t in top1_ax.texts) == ["60.0", "70.0"]  # each value beside its point, in %
    assert len(loss_ax.texts) == 4  # the loss and its label term, two epochs each
    fig.canvas.draw()
    for ax in (loss_ax, top1_ax):
        assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0  # below the panel
    long = [{"epoch": e, "train_loss": 1 / e} for e in range(1, curves.FEW_POINTS + 1)]
    ax = curves.plot_curves({"run": long}, ["train_loss"]).axes[0]
    assert ax.lines[0].get_linestyle() == "-" and not ax.texts


def test_alignment_correlation_per_token_group():
    torch.manual_seed(0)
    target = torch.randn(2, 17, 8)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    pred = target.clone()
    pred[:, 1:][~mask.bool()] = torch.randn(8, 8)  # visible patches unrelated, masked ones exact
    r = analysis.alignment_correlation(pred, target, mask)
    assert r["masked"] == pytest.approx(1.0) and abs(r["visible"]) < 0.5 and r["visible"] < r["all"] < 1


def test_attention_on_background_and_the_middle_block():
    import matplotlib
    matplotlib.use("Agg")
    images = torch.zeros(2, 1, 28, 28)
    images[:, :, 7:21, 7:21] = 1.0  # the item: the 2 x 2 centre patches of a 4 x 4 grid
    background = analysis.background_patches(images, 7)
    assert background.shape == (2, 4, 4) and int((~background).sum()) == 2 * 4
    corner_peak = torch.full((2, 2, 1, 4, 4), 0.01)  # depth 2, B 2, one head
    corner_peak[:, :, :, 0, 0] = 0.5
    where = analysis.attention_on_background(corner_peak, background)
    assert len(where) == 2 and where[0]["brightest"] == 1.0 and where[0]["corner"] == 1.0
    assert where[0]["chance"] == pytest.approx(12 / 16) and where[0]["mass"] > where[0]["chance"]
    item_peak = torch.full((2, 2, 1, 4, 4), 0.01)
    item_peak[..., 1:3, 1:3] = 0.2
    assert analysis.attention_on_background(item_peak, background)[0]["brightest"] == 0.0
    assert figures.middle_block(6) == 2 and figures.middle_block(2) == 0 and figures.middle_block(12) == 5
    model = create_classifier("vit_smokesmall_patch7", "distilled", 10)
    att = {"a": figures.cls_attention(model, images)}
    fig = figures.plot_attention_comparison(images, att, block="middle")
    assert "middle block" in fig._suptitle.get_text() and fig.axes[1].get_title() == "a (block 1)"


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_the_sample():
    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(50, generator=g) + 1, torch.randn(5000, generator=g) + 1
    lo, hi = analysis.bootstrap_interval(lambda i: small[i].mean().item(), len(small))
    assert lo < small.mean().item() < hi and lo > 0  # a mean of 1 with 50 samples: clear of 0
    lo_l, hi_l = analysis.bootstrap_interval(lambda i: large[i].mean().item(), len(large), draws=200)
    assert hi_l - lo_l < (hi - lo) / 5  # about 1 / sqrt(100) of the width
    assert analysis.bootstrap_interval(lambda i: small[i].mean().item(), len(small)) == (lo, hi)  # seeded
    zero = torch.randn(200, generator=g)
    lo, hi = analysis.bootstrap_interval(lambda i: zero[i].mean().item() - zero.mean().item(), len(zero))
    assert lo < 0 < hi
