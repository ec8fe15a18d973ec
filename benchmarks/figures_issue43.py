"""Issue 43, point 4 ("figures a class can read"): four committed figures redrawn by the current library.

Each figure is redrawn from the result files committed beside it under ``reports/<profile>/`` (no
training, no model), with the call its notebook makes, into ``<out>/<name>_after.png``. The
``<name>_before.png`` next to it is the figure the pipeline drew before the fix, copied from commit
20ef322 (``git show 20ef322:reports/fmnist/figures/<path>``):

* ``students_g2sd_curves``: ``figures/students/g2sd/curves.png`` (notebook 03), three seeds of two epochs;
* ``detection_g2sd_curves``: ``figures/dense/detection/g2sd/curves.png`` (notebook 07), seven loss terms;
* ``pretrain_gd_curves``: ``figures/pretrain/gd/curves.png`` (notebook 02), a loss term equal to the loss;
* ``summary_top1``: ``figures/summary/top1.png`` (notebook 05), the test top-1 bars.

    python benchmarks/figures_issue43.py [--profile fmnist] [--out benchmarks/results/figures_issue43]
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib import curves  # noqa: E402


def read_history(path: Path) -> list[dict]:
    """A ``reports/<profile>/plots/`` CSV as the engine's history: one dict per epoch, empty cells left out."""
    with open(path) as f:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def seeds(run_dir: Path) -> dict[str, list[dict]]:
    """``{"seed k": history}`` of a run's ``seed<k>.csv`` files, as notebooks 03 and 07 name them."""
    return {f"seed {p.stem.removeprefix('seed')}": read_history(p) for p in sorted(run_dir.glob("seed*.csv"))}


def draw(profile: str) -> dict:
    """name -> the figure, each drawn as its notebook draws it."""
    reports = REPO / "reports" / profile
    plots = reports / "plots"
    summary = json.loads((reports / "summary.json").read_text())
    epochs = summary["budget"]["students"]["g2sd"]["epochs"]
    return {
        "students_g2sd_curves": curves.plot_curves(seeds(plots / "students/g2sd"), ["train_loss", "val_top1"],
                                                    title="student 'g2sd'", over_seeds=True),
        "detection_g2sd_curves": curves.plot_curves(seeds(plots / "dense/detection/g2sd"), ["train_loss", "val_box_ap"],
                                                     title="detection, g2sd", over_seeds=True),
        "pretrain_gd_curves": curves.plot_curves({"gd": read_history(plots / "pretrain/gd.csv")}, ["train_loss", "lr"],
                                                  title="pretraining run 'gd'"),
        "summary_top1": curves.plot_test_scores(summary["classification"], "test top-1 (%)",
                                                 f"{profile} profile, {epochs} student epochs"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="fmnist", help="the committed reports/<profile>/ to redraw from")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/figures_issue43")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, fig in draw(args.profile).items():
        # as the notebooks save them (05's bars with a tight box)
        fig.savefig(args.out / f"{name}_after.png", dpi=120, bbox_inches="tight" if name == "summary_top1" else None)
        print(args.out / f"{name}_after.png")


if __name__ == "__main__":
    main()
