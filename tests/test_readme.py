"""The README quotes the committed results; it must quote them right."""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_fmnist_numbers_match_the_committed_summary():
    readme = (REPO / "README.md").read_text()
    summary = json.loads((REPO / "reports/fmnist/summary.json").read_text())["classification"]
    g2sd = summary["students"]["g2sd"]
    row = next(line for line in readme.splitlines() if line.startswith("| `fmnist` (default)"))
    assert f"teacher {100 * summary['teacher']['top1']:.2f} %" in row
    assert f"G2SD student {100 * g2sd['top1_mean']:.2f} ± {100 * g2sd['top1_std']:.2f} %" in row
    assert f"({100 * g2sd['ratio_to_teacher']:.2f} % of the teacher)" in row
    timing = json.loads((REPO / "benchmarks/results/pipeline_fmnist.json").read_text())
    assert f"{timing['total_seconds'] / 60:.1f} min" in row
    assert re.search(r"README quickstart|make repro", readme)


def test_readme_quotes_the_committed_dense_results():
    readme = (REPO / "README.md").read_text()
    summary = json.loads((REPO / "reports/fmnist/summary.json").read_text())
    row = next(line for line in readme.splitlines() if line.startswith("| `fmnist` (default)"))
    for task, label in (("segmentation", "mIoU"), ("detection", "box AP")):
        sec = summary[task]
        metric = sec["metric"]
        g2sd = sec["students"]["g2sd"]
        assert (f"{task} teacher {label} {100 * sec['teacher'][metric]:.2f}, G2SD {100 * g2sd[metric]:.2f} "
                f"({100 * g2sd['ratio_to_teacher']:.2f} % of the teacher)") in row, task
