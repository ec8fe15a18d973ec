"""Figures of numbers: training curves per epoch and bars of test scores, drawn for a reader.

Every panel with data has both axes labelled (``AXIS_LABELS``: units, fractions drawn in percent);
text is at least ``TEXT_PT`` points; legends sit outside the data; value labels are moved apart
until none covers another (``separate_labels``); a spread is drawn (a +- std band or bars) only
where there are several seeds, and a single seed shows no std at all.
"""

import math
import statistics

import matplotlib.pyplot as plt

TEXT_PT = 8  # the smallest text of a figure meant to be read: legends, value labels, axis labels
FEW_POINTS = 5  # a curve with fewer epochs than this is drawn as marked points with their values beside them

# the y-axis label of each history key; a key whose label ends in "(%)" holds fractions, drawn in percent
AXIS_LABELS = {"train_loss": "training loss (epoch mean)", "lr": "learning rate (end of epoch)",
               "val_top1": "validation top-1 (%)", "val_top5": "validation top-5 (%)",
               "val_miou": "validation mIoU (%)", "val_aacc": "validation pixel accuracy (%)",
               "val_box_ap": "validation box AP (%)", "val_box_ap50": "validation box AP50 (%)",
               "val_box_ap75": "validation box AP75 (%)"}


def _axis_label(key: str) -> str:
    return AXIS_LABELS.get(key, key.replace("_", " "))


def _value_text(key: str, y: float) -> str:
    return f"{y:.1f}" if _axis_label(key).endswith("(%)") else f"{y:.1e}" if key == "lr" else f"{y:.3g}"


def _epochs_values(hist: list[dict], key: str, floors: tuple = ()) -> tuple[list, list]:
    """One history's epochs and values of ``key``, less the values of the ``floors`` keys, in percent
    where ``key``'s axis label says so."""
    scale = 100 if _axis_label(key).endswith("(%)") else 1
    rows = [r for r in hist if key in r and all(f in r for f in floors)]
    return [r["epoch"] for r in rows], [scale * (r[key] - sum(r[f] for f in floors)) for r in rows]


def _mean_std(runs: list[tuple[list, list]]) -> tuple[list, list, list | None]:
    """Per epoch, the mean over the runs and their sample std; the std is None for a single run."""
    by_epoch = {}
    for xs, ys in runs:
        for x, y in zip(xs, ys):
            by_epoch.setdefault(x, []).append(y)
    xs = sorted(by_epoch)
    return (xs, [statistics.fmean(by_epoch[x]) for x in xs],
            [statistics.stdev(by_epoch[x]) if len(by_epoch[x]) > 1 else 0.0 for x in xs] if len(runs) > 1 else None)


def _loss_terms(histories: dict[str, list[dict]], key: str) -> tuple[list[str], list[str], dict[str, str]]:
    """The terms drawn with the total ``key``: the other ``train_*`` keys, less those equal to the total
    at every epoch (``same``: named in the total's label instead of drawn on top of it) and the
    floors (``floors``: term -> its ``<term>_floor`` key, a constant part subtracted from it)."""
    keys = sorted({k for h in histories.values() for r in h for k in r if k.startswith("train_") and k != key})
    floors = {k: f"{k}_floor" for k in keys if f"{k}_floor" in keys}
    terms = [k for k in keys if not k.endswith("_floor")]
    same = [k for k in terms if all(k in r and math.isclose(r[k], r[key], rel_tol=1e-6, abs_tol=1e-12)
                                    for h in histories.values() for r in h if key in r)]
    return [k for k in terms if k not in same], same, floors


def _panel_series(histories: dict[str, list[dict]], key: str, components: bool, over_seeds: bool) -> tuple[list, str]:
    """The series of one panel, each ``(label, colour, style, epochs, values, std or None)``, and the
    note on floors subtracted ("" when none)."""
    terms, same, floors = _loss_terms(histories, key) if components and key == "train_loss" else ([], [], {})
    total_floors = tuple(floors.values())
    name_of = {t: t.removeprefix("train_") + (" above its floor" if t in floors else "") for t in terms}
    total = "loss" + (" above the floor" if floors else "") + "".join(f" (= {s.removeprefix('train_')})" for s in same)
    note = ""
    if floors:
        values = [r[f] for h in histories.values() for r in h for f in floors.values() if f in r]
        note = f"{' + '.join(f.removeprefix('train_') for f in floors.values())} (mean {statistics.fmean(values):.2f})"
    series = []
    if over_seeds:
        for j, (t, fl) in enumerate([(key, total_floors)] + [(t, (floors[t],) if t in floors else ()) for t in terms]):
            xs, ys, std = _mean_std([_epochs_values(h, t, fl) for h in histories.values()])
            if xs:
                label = (total if terms or same or floors else key) if j == 0 else name_of[t]
                series.append((label, f"C{j % 10}", j, xs, ys, std))
        return series, note
    for i, (name, hist) in enumerate(histories.items()):
        for j, (t, fl) in enumerate([(key, total_floors)] + [(t, (floors[t],) if t in floors else ()) for t in terms]):
            xs, ys = _epochs_values(hist, t, fl)
            if xs:
                label = (name + total.removeprefix("loss") if j == 0 else f"{name}: {name_of[t]}")
                series.append((label, f"C{i % 10}", j, xs, ys, None))
    return series, note


def _draw_series(ax, key: str, series: tuple, few: bool) -> list:
    """One series: a line (with a band of +- std) when it has ``FEW_POINTS`` or more epochs, else
    marked points (with +- std bars) with their values written beside them (a line through two
    points suggests a trend it cannot show); returns the value labels."""
    label, colour, style, xs, ys, std = series
    if not few:
        ax.plot(xs, ys, ls=("-", "--", ":", "-.")[style % 4], lw=1.5 if style == 0 else 1, color=colour,
                marker="o" if style == 0 else None, ms=3, label=label)
        if std is not None:
            ax.fill_between(xs, [y - s for y, s in zip(ys, std)], [y + s for y, s in zip(ys, std)], color=colour,
                            alpha=0.2, lw=0)
        return []
    ax.plot(xs, ys, ls="none", marker="osD^v<>"[style % 7], ms=5 if style == 0 else 4, color=colour,
            mfc=colour if style == 0 else "none", label=label)
    if std is not None:
        ax.errorbar(xs, ys, yerr=std, ls="none", color=colour, capsize=3, lw=1)
    return [ax.annotate(_value_text(key, y), (x, y), textcoords="offset points", xytext=(6, -3), fontsize=TEXT_PT,
                        color=colour, annotation_clip=False) for x, y in zip(xs, ys)]


def _stack(labels: list, renderer, dpi: float) -> list:
    """Move each label up (its offset in points) above any lower label it would cover; returns
    (label, extent) pairs as placed."""
    placed = []
    for t in sorted(labels, key=lambda t: t.get_window_extent(renderer).y0):
        box = t.get_window_extent(renderer)
        shift = 0.0
        while (hit := next((p for _, p in placed if box.translated(0, shift).overlaps(p)), None)) is not None:
            shift = hit.y1 + 1 - box.y0
        if shift:
            dx, dy = t.xyann
            t.xyann = (dx, dy + shift * 72 / dpi)
        placed.append((t, box.translated(0, shift)))
    return placed


def separate_labels(fig, labels: list, tries: int = 4) -> None:
    """Move value labels (annotations placed in offset points) until no two of them overlap, measured
    on the laid-out figure: the lowest first, each above any label it would cover; a panel whose
    labels then rise above it grows upwards, and the labels are placed again."""
    if len(labels) < 2:
        return
    start = {t: t.xyann for t in labels}
    for t in labels:
        t.set_in_layout(False)  # a moved label must not move the panels under it
    for _ in range(tries):
        for t in labels:
            t.xyann = start[t]
        fig.draw_without_rendering()
        placed = _stack(labels, fig.canvas.get_renderer(), fig.dpi)
        grown = False
        for ax in {t.axes for t in labels}:
            frame = ax.get_window_extent()
            over = max(box.y1 - frame.y1 for t, box in placed if t.axes is ax)
            if over > 0:
                lo, hi = ax.get_ylim()
                ax.set_ylim(lo, hi + (hi - lo) * (over + 4) / frame.height)
                grown = True
        if not grown:
            return


def plot_curves(histories: dict[str, list[dict]], keys: list[str], title: str = "", components: bool = True,
                over_seeds: bool = False):
    """One panel per metric key, its y axis labelled (``AXIS_LABELS``; top-1, mIoU, AP in percent).

    ``histories``: name -> per-epoch rows, as written by the engine. By default one colour per run,
    so several runs overlay; with ``over_seeds`` the histories are the seeds of one run, drawn as
    their mean with a band (bars, for few epochs) of +- one sample std, and no band or std at all
    for a single seed. With ``components``, the ``train_loss`` panel also draws the loss terms (the
    other ``train_*`` keys, e.g. ``train_label`` and ``train_distill``) in lighter styles; a term
    equal to the total at every epoch is named in the total's label, not drawn over it, and a term
    with a ``<term>_floor`` key (CWD's teacher entropy) is drawn less its floor, as is the total:
    the part that moves.

    A series of fewer than ``FEW_POINTS`` epochs is drawn as points labelled with their values, the
    labels moved apart until none overlaps another; the legends sit below the panels, outside the data.
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False, layout="constrained")
    labels = []
    for ax, key in zip(axes[0], keys):
        series, note = _panel_series(histories, key, components, over_seeds)
        epochs = sorted({x for s in series for x in s[3]})
        few = 0 < len(epochs) < FEW_POINTS
        for s in series:
            labels += _draw_series(ax, key, s, few)
        if few:
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.8)  # room for the last values' labels
            ax.margins(y=0.25)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        if key == "lr":  # a learning rate is never below 0: a little room under 0 for the last label
            ax.set_ylim(bottom=-0.06 * ax.get_ylim()[1])
        ax.set_xlabel("epoch")
        ax.set_ylabel(_axis_label(key) if not note else "training loss above the floor")
        ax.set_title(key if not note else f"{key}, less {note}", fontsize=9)
        ax.grid(alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            spread = (f"mean ± std over {len(histories)} seeds" if len(histories) > 1 else next(iter(histories))) \
                if over_seeds else None
            ax.legend(handles, names, fontsize=TEXT_PT, title=spread, title_fontsize=TEXT_PT, loc="upper center",
                      bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(handles)), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    separate_labels(fig, labels)
    return fig


def plot_test_scores(section: dict, axis_label: str, title: str, highlight: str = "g2sd"):
    """A bar per student of a summary section (``results.summarize_task``): its mean test metric in
    percent with +- one sample std bars when every student has several seeds (else no bar and no std),
    its value written above it, ``highlight`` in red; the teacher as a dashed line labelled at its end."""
    metric, students = section["metric"], section["students"]
    names = list(students)
    means = [100 * students[n][f"{metric}_mean"] for n in names]
    several = all(len(students[n]["seeds"]) > 1 for n in names)
    stds = [100 * students[n][f"{metric}_std"] for n in names] if several else [0.0] * len(names)
    teacher = 100 * section["teacher"][metric]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 1), 3.6), layout="constrained")
    ax.bar(names, means, yerr=stds if several else None, capsize=4,
           color=["tab:red" if n == highlight else "tab:gray" for n in names])
    labels = [ax.annotate(f"{m:.2f} ± {sd:.2f}" if several else f"{m:.2f}", (i, m + sd), textcoords="offset points",
                          xytext=(0, 3), ha="center", va="bottom", fontsize=TEXT_PT)
              for i, (m, sd) in enumerate(zip(means, stds))]
    ax.axhline(teacher, color="black", linestyle="--")
    labels.append(ax.annotate(f"teacher {teacher:.2f}", (1, teacher), xycoords=("axes fraction", "data"),
                              textcoords="offset points", xytext=(-3, 3), ha="right", va="bottom", fontsize=TEXT_PT))
    ax.set_ylim(min(m - sd for m, sd in zip(means, stds)) - 5, max(teacher, *means) + 4)
    ax.set_xlabel("student")
    ax.set_ylabel(axis_label)
    seeds = sorted({s for n in names for s in students[n]["seeds"]})
    spread = f"mean ± std over seeds {seeds}" if several else f"seed {', '.join(map(str, seeds))}, one run each"
    ax.set_title(f"{title}: {spread}", fontsize=10)
    separate_labels(fig, labels)
    return fig
