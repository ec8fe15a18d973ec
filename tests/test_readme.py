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


def _numbers(value, scale=100):
    """Every float in a JSON tree, written as the README writes results: percent with 2 decimals."""
    if isinstance(value, dict):
        return set().union(*(_numbers(v, scale) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_numbers(v, scale) for v in value)) if value else set()
    if isinstance(value, float):
        return {f"{scale * value:.2f}"}
    return set()


def _frs_numbers() -> set:
    """The FRS sweep's per-seed validation box AP and, per variant, the mean and (sample) std over seeds."""
    import statistics
    rows = json.loads((REPO / "benchmarks/results/frs_sweep_fmnist.json").read_text())["rows"]
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(100 * row["val_box_ap"])
    out = {f"{v:.2f}" for vals in by_variant.values() for v in vals}
    for vals in by_variant.values():
        out.add(f"{statistics.mean(vals):.2f}")
        if len(vals) > 1:
            out.add(f"{statistics.stdev(vals):.2f}")
    return out


def test_every_result_in_the_readmes_results_section_comes_from_a_committed_file():
    """The Results section quotes numbers with two decimals from the committed summary, the FRS sweep and
    the budget probes: each must be one of them, so that a rerun of the pipeline cannot leave a stale number behind."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Results\n", 1)[1].split("\n### Known limits\n", 1)[0]
    probes = sorted((REPO / "benchmarks/results").glob("budget_probe_fmnist*.json"))
    assert probes, "benchmarks/results/budget_probe_fmnist*.json: none committed"
    allowed = (_numbers(json.loads((REPO / "reports/fmnist/summary.json").read_text())) | _frs_numbers()
               | set().union(*(_numbers(json.loads(p.read_text())) for p in probes)))
    quoted = re.findall(r"(?<![\d.])\d+\.\d\d(?![\d.])", section)
    assert quoted, "the Results section quotes no result"
    stale = sorted(set(quoted) - allowed)
    assert not stale, f"README Results section: {stale} are in no committed result (reports/fmnist/summary.json, " \
                      "benchmarks/results/frs_sweep_fmnist.json, budget_probe_fmnist*.json): quote the current ones"
