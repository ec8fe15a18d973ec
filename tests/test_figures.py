"""What makes a figure readable, checked on the returned matplotlib Figures: labelled axes, legends
and labels of at least 8 points, value labels apart, a spread only where there are seeds, attention
panels that carry their similarity, the part of a loss that moves."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402

from g2sd_lib import curves, figures  # noqa: E402
from g2sd_lib.dense.plots import plot_detection_predictions  # noqa: E402
from g2sd_lib.models import create_classifier  # noqa: E402
from g2sd_lib.pipeline import results  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    """Each test's figures are closed after it (pyplot keeps every open figure)."""
    yield
    matplotlib.pyplot.close("all")

# three seeds of a two-epoch student, as in reports/fmnist/plots/students/g2sd: values a few hundredths apart
SEEDS = {f"seed {s}": [{"epoch": 1, "train_loss": 1.53 + d, "train_label": 1.72 + d, "train_distill": 1.34 + d,
                        "val_top1": 0.735 - d},
                       {"epoch": 2, "train_loss": 0.995 + d, "train_label": 1.28 + d, "train_distill": 0.711 + d,
                        "val_top1": 0.779 - d}] for s, d in ((0, 0.0), (1, 0.01), (2, 0.02))}
LONG = {f"seed {s}": [{"epoch": e, "train_loss": 1 / e + 0.01 * s, "val_top1": 0.5 + e / 20 - 0.01 * s}
                      for e in range(1, curves.FEW_POINTS + 2)] for s in range(3)}


def _texts(fig):
    """Every piece of text a reader sees: titles, axis labels, legend entries and titles, annotations."""
    out = [fig._suptitle] if fig._suptitle else []
    for ax in fig.axes:
        out += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend():
            out += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
    return [t for t in out if t.get_text()]


def _data_axes(fig):
    """The panels that plot numbers (lines, points, bars), not images or colorbars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and not ax.images
            and (ax.lines or ax.collections or ax.patches)]


def _apart(texts, renderer):
    boxes = [t.get_window_extent(renderer) for t in texts]
    return not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _curve_figures():
    return [curves.plot_curves(SEEDS, ["train_loss", "val_top1"], title="student"),
            curves.plot_curves({"gd": [{"epoch": e, "train_loss": 1 / e, "lr": 1e-4 / e} for e in (1, 2, 3)]},
                                ["train_loss", "lr"]),
            curves.plot_curves(LONG, ["train_loss", "val_top1"])]


def test_every_panel_of_numbers_has_both_axes_labelled_and_legends_of_8_points():
    def check(fig):
        assert _data_axes(fig)
        for ax in _data_axes(fig):
            assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        for legend in [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends:
            assert all(t.get_fontsize() >= 8 for t in legend.get_texts())

    for fig in _curve_figures():
        check(fig)
    assert _curve_figures()[0].axes[1].get_ylabel() == "validation top-1 (%)"
    check(figures.plot_feature_alignment(torch.randn(17, 8), torch.randn(17, 8), (torch.rand(16) > 0.5).float()))
    summary = results.summarize({"teacher": {"top1": 0.9}, "students": {
        n: {"seeds": {"0": {"top1": t}, "1": {"top1": t + 0.01}}} for n, t in (("g2sd", 0.77), ("kd", 0.74))}})
    check(curves.plot_test_scores(summary["classification"], "test top-1 (%)", "fmnist"))


def test_value_labels_of_close_values_do_not_overlap():
    for fig in _curve_figures()[:2]:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            assert ax.texts and _apart(ax.texts, renderer)
            frame = ax.get_window_extent(renderer)
            assert all(t.get_window_extent(renderer).y1 <= frame.y1 + 1 for t in ax.texts)  # inside the panel


def test_one_seed_shows_no_spread_and_several_seeds_a_band():
    one = curves.plot_curves({"seed 0": LONG["seed 0"]}, ["train_loss", "val_top1"], over_seeds=True)
    for ax in one.axes:
        assert not [c for c in ax.collections if isinstance(c, PolyCollection)] and not ax.containers
    assert not [t.get_text() for t in _texts(one) if "±" in t.get_text() or "std" in t.get_text()]
    many = curves.plot_curves(LONG, ["train_loss", "val_top1"], over_seeds=True)
    for ax in many.axes:
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 1  # one band: mean +- std
        assert len(ax.lines) == 1 and "± std over 3 seeds" in ax.get_legend().get_title().get_text()
    few = curves.plot_curves(SEEDS, ["train_loss", "val_top1"], over_seeds=True)
    assert all(any(isinstance(c, ErrorbarContainer) for c in ax.containers) for ax in few.axes)  # bars at 2 epochs
    assert len(few.axes[0].texts) == 3 * 2  # one value per series (loss, label, distill) and epoch, not per seed

    def scores(seeds):
        return results.summarize({"teacher": {"top1": 0.9}, "students": {
            n: {"seeds": {str(s): {"top1": t + s / 100} for s in seeds}} for n, t in (("g2sd", 0.77), ("kd", 0.74))}}
        )["classification"]
    single = curves.plot_test_scores(scores([0]), "test top-1 (%)", "smoke")
    assert not next(c for c in single.axes[0].containers if isinstance(c, BarContainer)).errorbar
    assert not [t.get_text() for t in _texts(single) if "±" in t.get_text() or "std" in t.get_text()]
    several = curves.plot_test_scores(scores([0, 1, 2]), "test top-1 (%)", "fmnist")
    assert next(c for c in several.axes[0].containers if isinstance(c, BarContainer)).errorbar
    assert "± std" in several.axes[0].get_title()


def test_attention_panels_are_titled_with_their_similarity():
    model = create_classifier("vit_smokesmall_patch7", "distilled", 10)
    x = torch.randn(2, 1, 28, 28)
    att = {"teacher": figures.cls_attention(model, x), "g2sd": figures.cls_attention(model, x, token="dist"),
           "scratch": figures.cls_attention(model, x)}
    fig = figures.plot_attention_comparison(x, att, similarity={"g2sd": 0.1234, "scratch": -0.4567})
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[1] == "teacher" and "+0.12" in titles[2] and "-0.46" in titles[3]
    fig = figures.plot_attention_comparison(x, att, block="middle", similarity={"g2sd": 0.25})
    assert fig.axes[2].get_title() == "g2sd (block 1)\nsimilarity +0.25"
    fig = figures.plot_attention_detail(x[0], att["g2sd"][:, :1], "g2sd", similarity=[0.31, -0.05])
    block_titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("block")]
    assert block_titles == ["block 1, mean\nsimilarity +0.31", "block 2, mean\nsimilarity -0.05"]


def test_a_loss_term_equal_to_the_total_is_named_not_drawn_twice():
    gd = [{"epoch": e, "train_loss": 0.2 / e, "train_decoder": 0.2 / e} for e in (1, 2, 3)]
    ax = curves.plot_curves({"gd": gd}, ["train_loss"]).axes[0]
    assert len(ax.lines) == 1 and ax.get_legend_handles_labels()[1] == ["gd (= decoder)"]


def test_cwd_is_drawn_above_the_teachers_entropy_floor():
    """A CWD of 15 + a small KL part: the panel shows the part that moves, not the floor."""
    kl = [0.8, 0.25, 0.12, 0.09, 0.07]
    seg = [{"epoch": e, "train_loss": 15.0 + k + 1.0, "train_seg": 1.0, "train_cwd": 15.0 + k,
            "train_cwd_floor": 15.0} for e, k in enumerate(kl, 1)]
    ax = curves.plot_curves({"seed 0": seg}, ["train_loss"]).axes[0]
    assert max(max(line.get_ydata()) for line in ax.lines) < 2.5 and ax.get_ylim()[1] < 5  # no line at 15
    assert "cwd_floor (mean 15.00)" in ax.get_title()
    drawn = {label: list(line.get_ydata()) for line, label in zip(ax.lines, ax.get_legend_handles_labels()[1])}
    assert drawn["seed 0: cwd above its floor"] == pytest.approx(kl) and drawn["seed 0: seg"] == pytest.approx([1.0] * 5)
    assert drawn["seed 0 above the floor"] == pytest.approx([k + 1.0 for k in kl])


def test_detection_labels_are_readable_inside_their_panel_and_apart():
    """Five boxes crowded in one corner, as a weak detector's best-k detections are."""
    boxes = torch.tensor([[2.0, 2.0, 20.0, 24.0], [3.0, 4.0, 22.0, 26.0], [1.0, 6.0, 18.0, 30.0],
                          [4.0, 1.0, 24.0, 22.0], [0.0, 0.0, 26.0, 28.0]])
    labels = torch.tensor([1, 3, 4, 6, 9])
    truths = [{"boxes": boxes, "labels": labels}]
    preds = {"m": [{"boxes": boxes + 1, "labels": labels.flip(0), "scores": torch.linspace(0.4, 0.1, 5)}]}
    fig = plot_detection_predictions(torch.zeros(1, 1, 56, 56), truths, preds, best=[5])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert all(t.get_fontsize() >= 8 for t in fig.legends[0].get_texts())
    for ax in fig.axes:
        assert len(ax.texts) == 5 and all(t.get_fontsize() >= 8 for t in ax.texts)
        assert _apart(ax.texts, renderer)
        frame = ax.get_window_extent(renderer)
        assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1)
                   for b in (t.get_window_extent(renderer) for t in ax.texts))


def test_a_single_seed_has_no_std_in_its_metric_file():
    evaluation = {"teacher": {"miou": 0.5}, "students": {"g2sd": {"seeds": {"0": {"miou": 0.45}}},
                                                         "kd": {"seeds": {"0": {"miou": 0.4}, "1": {"miou": 0.42}}}}}
    files = results.metrics_per_model(results.summarize_task(evaluation["teacher"], evaluation["students"], "miou"))
    assert set(files["g2sd"]) == {"miou", "of_teacher"} and set(files["kd"]) == {"miou", "miou_std", "of_teacher"}
