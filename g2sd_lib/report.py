"""Tables and the machine-readable summary, rendered from the pipeline's metric files only.

Paper numbers appear only with their provenance. The companion could not obtain the paper's full
tables, so a cell with no published source says "unavailable" rather than holding a guess.
"""

import csv
import hashlib
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

# What the paper and its reference READMEs publish, with where each value comes from.
PAPER = {
    "teacher_top1": (83.6, "MAE README: ViT-B fine-tuned, ImageNet-1k top-1"),
    "g2sd_ratio": (98.7, "G2SD abstract: ViT-S student reaches 98.7 % of its ViT-B teacher (classification)"),
    "detection_ratio": (98.1, "G2SD abstract: 98.1 % of the teacher on COCO detection"),
    "segmentation_ratio": (99.3, "G2SD abstract: 99.3 % of the teacher on ADE20K segmentation"),
}
UNAVAILABLE = "unavailable"

# The paper's comparison: name -> (label, how it is trained).
METHODS = {
    "g2sd": ("G2SD (GD + SD)", "generic distillation, then specific distillation"),
    "gd_only": ("GD only", "generic distillation, then fine-tuning on labels"),
    "sd_only": ("SD only", "specific distillation from random initialisation"),
    "mae": ("MAE student", "MAE pretraining of the student, then fine-tuning"),
    "kd": ("single-stage KD", "classic soft-label KD from the task teacher, from scratch"),
    "scratch": ("scratch", "supervised training from random initialisation"),
}


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(evaluation: dict) -> dict:
    """``reports/summary.json``: teacher top-1 and, per student, the mean over seeds (``top1``),
    ``top1_mean``, ``top1_std``, ``seeds``, ``ratio_to_teacher``; accuracies are fractions."""
    teacher_top1 = evaluation["teacher"]["top1"]
    students = {}
    for name, ev in evaluation["students"].items():
        per_seed = ev["seeds"]
        top1 = [per_seed[s]["top1"] for s in per_seed]
        m, sd = mean_std(top1)
        students[name] = {"top1": m, "top1_mean": m, "top1_std": sd, "seeds": [int(s) for s in per_seed],
                          "ratio_to_teacher": m / teacher_top1,
                          "agreement": statistics.fmean(per_seed[s]["agreement"] for s in per_seed)}
        if all("top5" in per_seed[s] for s in per_seed):
            students[name]["top5"] = statistics.fmean(per_seed[s]["top5"] for s in per_seed)
    teacher = {"top1": teacher_top1}
    if "top5" in evaluation["teacher"]:
        teacher["top5"] = evaluation["teacher"]["top5"]
    return {"classification": {"teacher": teacher, "students": students}}


# The dense tasks: metric key in the evaluation, its label, and the paper's teacher ratio / teacher value.
DENSE = {
    "segmentation": {"metric": "miou", "label": "mIoU", "ratio": "segmentation_ratio", "benchmark": "ADE20K",
                     "teacher": None},
    "detection": {"metric": "box_ap", "label": "box AP", "ratio": "detection_ratio", "benchmark": "COCO",
                  "teacher": (51.6, "ViTDet README: Mask R-CNN ViT-B box AP (the checkpoint the official code distils from)")},
}
DENSE_METHODS = {
    "g2sd": ("G2SD (GD + dense SD)", "GD student, then the task's specific distillation from the dense teacher"),
    "gd_only": ("GD only", "GD student, then fine-tuning on the dense labels"),
}


def summarize_dense(evaluation: dict) -> dict:
    """The ``segmentation`` / ``detection`` sections of ``summary.json``, shaped like ``classification``.

    Per task: ``metric`` (its name, e.g. ``miou``), ``teacher`` ``{metric: value}`` and per student
    ``{metric, metric_mean, metric_std, seeds, ratio_to_teacher}`` (fractions). A profile whose dense
    tasks run outside the pipeline gives ``{"metric", "status"}`` only.
    """
    out = {}
    for task, spec in DENSE.items():
        metric = spec["metric"]
        ev = evaluation.get("tasks", {}).get(task)
        if ev is None:
            out[task] = {"metric": metric, "status": evaluation.get("status", "not run")}
            continue
        teacher = ev["teacher"][metric]
        students = {}
        for name, s in ev["students"].items():
            values = [s["seeds"][k][metric] for k in s["seeds"]]
            m, sd = mean_std(values)
            students[name] = {metric: m, f"{metric}_mean": m, f"{metric}_std": sd,
                              "seeds": [int(k) for k in s["seeds"]], "ratio_to_teacher": m / teacher if teacher else None}
        out[task] = {"metric": metric, "teacher": {metric: teacher}, "students": students}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _metric_text(s: dict, metric: str = "top1") -> str:
    """Mean ± std over seeds, in percent (the mean alone for one seed)."""
    m, sd = s[f"{metric}_mean"], s[f"{metric}_std"]
    return f"{_pct(m)} ± {_pct(sd)}" if len(s["seeds"]) > 1 else _pct(m)


def comparison_rows(summary: dict, evaluation: dict, teacher_name: str) -> list[dict]:
    """The paper-style table: method | teacher | params | FLOPs | top-1 | % of teacher | paper | source."""
    cls = summary["classification"]
    t = evaluation["teacher"]
    rows = [{"method": "teacher", "teacher": "-", "params (M)": f"{t['params'] / 1e6:.3g}",
             "GFLOPs": f"{t['flops'] / 1e9:.3g}", "top-1 (%)": _pct(cls["teacher"]["top1"]),
             "% of teacher": "100.00", "paper": f"{PAPER['teacher_top1'][0]} top-1",
             "paper source": PAPER["teacher_top1"][1]}]
    for name, s in cls["students"].items():
        ev = evaluation["students"][name]
        label = METHODS.get(name, (name, ""))[0]
        teacher_col = teacher_name if name in ("g2sd", "gd_only", "sd_only", "kd") else "-"
        paper, source = ((f"{PAPER['g2sd_ratio'][0]} % of teacher", PAPER["g2sd_ratio"][1]) if name == "g2sd"
                         else (UNAVAILABLE, "not in the sources available to this project"))
        rows.append({"method": label, "teacher": teacher_col, "params (M)": f"{ev['params'] / 1e6:.3g}",
                     "GFLOPs": f"{ev['flops'] / 1e9:.3g}", "top-1 (%)": _metric_text(s),
                     "% of teacher": _pct(s["ratio_to_teacher"]), "paper": paper, "paper source": source})
    return rows


def ablation_rows(summary: dict) -> list[dict]:
    """Stage ablation: which of GD / SD the student went through, and its accuracy."""
    stages = {"scratch": ("no", "no"), "gd_only": ("yes", "no"), "sd_only": ("no", "yes"), "g2sd": ("yes", "yes")}
    cls = summary["classification"]
    rows = []
    for name, (gd, sd) in stages.items():
        if name in cls["students"]:
            s = cls["students"][name]
            rows.append({"run": name, "generic distillation": gd, "specific distillation": sd,
                         "top-1 (%)": _metric_text(s), "% of teacher": _pct(s["ratio_to_teacher"])})
    return rows


# The paper's classification comparisons the student runs can test:
# (claim, student that should win, student it should beat).
CLAIMS = [
    ("G2SD beats single-stage KD from the task teacher", "g2sd", "kd"),
    ("generic distillation helps specific distillation (G2SD > SD only)", "g2sd", "sd_only"),
    ("specific distillation helps after GD (G2SD > GD only)", "g2sd", "gd_only"),
    ("G2SD beats the student's own MAE pretraining", "g2sd", "mae"),
    ("G2SD beats training the student from scratch", "g2sd", "scratch"),
]
CLAIM_SOURCE = "a comparison the paper makes; its table values are unavailable here, the direction is tested"


def claims_rows(summary: dict) -> list[dict]:
    """Each claim next to our measurement: the mean top-1 difference and whether it holds here.

    A claim "holds" when the mean difference is positive and larger than the two runs' standard
    deviations combined (sqrt(s1^2 + s2^2)); with a single seed there is no spread to compare with,
    so the verdict says so."""
    cls = summary["classification"]
    students = cls["students"]
    rows = []
    if "g2sd" in students:
        ratio = students["g2sd"]["ratio_to_teacher"]
        rows.append({"claim": "the ViT-S student reaches 98.7 % of its ViT-B teacher", "paper": "98.7 %",
                     "ours": f"{_pct(ratio)} %", "holds here": "yes" if ratio >= 0.987 else "no",
                     "source": PAPER["g2sd_ratio"][1]})
    for claim, a, b in CLAIMS:
        if a in students and b in students:
            rows.append(_comparison_row(claim, students[a], students[b], "top1"))
    return rows


def _comparison_row(claim: str, sa: dict, sb: dict, metric: str) -> dict:
    """Claim row "a beats b" on ``metric``: the mean difference, the combined seed spread, the verdict."""
    diff = sa[f"{metric}_mean"] - sb[f"{metric}_mean"]
    spread = (sa[f"{metric}_std"] ** 2 + sb[f"{metric}_std"] ** 2) ** 0.5
    if min(len(sa["seeds"]), len(sb["seeds"])) < 2:
        verdict = f"{'yes' if diff > 0 else 'no'} (one seed, no spread measured)"
    else:
        verdict = "yes" if diff > spread else ("no" if diff <= 0 else "not resolved (within the seed spread)")
    return {"claim": claim, "paper": "yes", "ours": f"{100 * diff:+.2f} points (± {100 * spread:.2f})",
            "holds here": verdict, "source": CLAIM_SOURCE}


def dense_rows(summary: dict, evaluation: dict) -> list[dict]:
    """Per dense task: teacher and students, their metric, % of teacher and the paper's value with its source."""
    rows = []
    for task, spec in DENSE.items():
        sec = summary.get(task)
        if not sec or "teacher" not in sec:
            continue
        metric, ev = spec["metric"], evaluation["tasks"][task]
        paper_t = spec["teacher"]
        rows.append({"task": task, "method": "teacher", "params (M)": f"{ev['teacher']['params'] / 1e6:.3g}",
                     "test metric (%)": f"{spec['label']} {_pct(sec['teacher'][metric])}",
                     "% of teacher": "100.00",
                     "paper": f"{paper_t[0]} {spec['label']}" if paper_t else UNAVAILABLE,
                     "paper source": paper_t[1] if paper_t else f"no published {spec['benchmark']} value for the "
                                                                  "G2SD teacher is available to this project"})
        for name, s in sec["students"].items():
            paper, source = ((f"{PAPER[spec['ratio']][0]} % of teacher", PAPER[spec["ratio"]][1]) if name == "g2sd"
                             else (UNAVAILABLE, "not in the sources available to this project"))
            rows.append({"task": task, "method": DENSE_METHODS.get(name, (name, ""))[0],
                         "params (M)": f"{ev['students'][name]['params'] / 1e6:.3g}",
                         "test metric (%)": f"{spec['label']} {_metric_text(s, metric)}",
                         "% of teacher": _pct(s["ratio_to_teacher"]), "paper": paper, "paper source": source})
    return rows


def dense_claims_rows(summary: dict) -> list[dict]:
    """The paper's dense claims: the student's % of teacher, and whether dense SD beats fine-tuning (GD only)."""
    rows = []
    for task, spec in DENSE.items():
        sec = summary.get(task)
        if not sec or "g2sd" not in sec.get("students", {}):
            continue
        metric, g2sd = spec["metric"], sec["students"]["g2sd"]
        target = PAPER[spec["ratio"]][0] / 100
        rows.append({"claim": f"{task}: the ViT-S student reaches {PAPER[spec['ratio']][0]} % of its ViT-B teacher",
                     "paper": f"{PAPER[spec['ratio']][0]} %", "ours": f"{_pct(g2sd['ratio_to_teacher'])} %",
                     "holds here": "yes" if g2sd["ratio_to_teacher"] >= target else "no",
                     "source": PAPER[spec["ratio"]][1]})
        if "gd_only" in sec["students"]:
            rows.append(_comparison_row(f"{task}: dense specific distillation helps after GD (G2SD > GD only)",
                                        g2sd, sec["students"]["gd_only"], metric))
    return rows


def _data_text(d: dict) -> str:
    if d["dataset"] != "fmnist":
        return f"{d['dataset']} at {d['root']}"
    train = d.get("train_subset") or 60000 - d["val_size"]
    val = d.get("val_subset") or d["val_size"]
    return (f"Fashion-MNIST, {train:,} training / {val:,} validation (carved from the training split) / "
            f"{d.get('test_subset') or 10000:,} test images, 28 x 28 grayscale")


def setting_rows(params: dict, evaluation: dict) -> list[dict]:
    """What differs between the paper's setting and this profile's, from the configuration itself."""
    t, s = params["teacher"], params["students"]["common"]
    gd = {**params["pretrain"]["common"], **params["pretrain"]["gd"]}
    g2sd_params = evaluation["students"].get("g2sd", {}).get("params")
    return [
        {"": "data", "paper": "ImageNet-1k, 1.28 M images, 224 x 224 RGB", "here": _data_text(params["data"])},
        {"": "teacher", "paper": "MAE ViT-B/16 (86 M), 1600 pretraining + 100 fine-tuning epochs",
         "here": f"{t['finetune']['model']} ({evaluation['teacher']['params'] / 1e6:.2f} M), "
                 + {"bundled": "bundled, recipe in teachers/README.md", "train": "trained in the pipeline (teacher section)",
                    "download": "the official MAE checkpoints"}[t["mode"]]},
        {"": "student", "paper": "ViT-S/16 (22 M)",
         "here": f"{s['model']}" + (f" ({g2sd_params / 1e6:.2f} M)" if g2sd_params else "")},
        {"": "generic distillation", "paper": "300 epochs, batch 4096, target block 4 of 8",
         "here": f"{gd['train']['epochs']} epochs, batch {gd['train']['batch_size']}, "
                 f"target block {gd['task']['target_block']}"},
        {"": "specific distillation", "paper": "200 epochs, batch 1024, RandAugment, mixup 0.8, cutmix 1.0",
         "here": f"{s['train']['epochs']} epochs, batch {s['train']['batch_size']}, mixup {s['augment'].get('mixup', 0)}, "
                 f"cutmix {s['augment'].get('cutmix', 0)}, no RandAugment"},
        {"": "runs per student", "paper": "one", "here": f"{len(params['seeds'])} seed(s): {params['seeds']}"},
    ]


def write_table(rows: list[dict], stem, caption: str, provenance: dict) -> list[Path]:
    """Write ``stem``.md / .csv / .tex; the Markdown and LaTeX carry the caption and provenance."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    prov = "; ".join(f"{k}: {v}" for k, v in provenance.items())
    md = [f"**{caption}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    md += ["", f"_Provenance: {prov}_", ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)

    def tex(s):
        return (str(s).replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_")
                .replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$"))
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{tex(caption)}}}",
             "\\begin{tabular}{" + "l" * len(cols) + "}", "\\hline",
             " & ".join(tex(c) for c in cols) + " \\\\", "\\hline"]
    lines += [" & ".join(tex(r[c]) for c in cols) + " \\\\" for r in rows]
    lines += ["\\hline", "\\end{tabular}", f"% Provenance: {tex(prov)}", "\\end{table}", ""]
    stem.with_suffix(".tex").write_text("\n".join(lines))
    return [stem.with_suffix(s) for s in (".md", ".csv", ".tex")]


def provenance(params_path="params.yaml", seeds=None) -> dict:
    """Commit, parameters (profile and sha256 of params.yaml), hardware and seeds of a table."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        # the pipeline's own outputs (dvc.lock, reports/) change while it runs: they do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock",
                                ":!reports"], capture_output=True, text=True).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    params_file = Path(params_path)
    params_hash = hashlib.sha256(params_file.read_bytes()).hexdigest()[:12] if params_file.exists() else "n/a"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or platform.machine())
    return {"commit": commit, "params.yaml sha256": params_hash,
            "hardware": f"{device}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "seeds": ", ".join(str(s) for s in (seeds or []))}
