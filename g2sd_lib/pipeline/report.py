"""Tables, rendered from the pipeline's result files only (:mod:`g2sd_lib.pipeline.results` reads and
summarises those files, :mod:`g2sd_lib.history` reads and writes them).

Paper numbers appear only with their provenance. The companion could not obtain the paper's full
tables, so a cell with no published source says "unavailable" rather than holding a guess.

Three kinds of files carry the stages' numbers (declared in dvc.yaml):

* ``reports/<profile>/metrics/``: the few numbers per run a person compares between runs and experiments
  (``dvc metrics show``, ``dvc exp show``);
* ``reports/<profile>/plots/``: every training run's per-epoch history as CSV (``dvc plots show``);
* ``reports/<profile>/results/``: the detailed per-seed results the report stage renders its tables from.
"""

import hashlib
import subprocess
from pathlib import Path

import pandas as pd

from ..device import machine
from .results import DENSE_METRICS

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


# The dense tasks: metric key in the evaluation, its label, and the paper's teacher ratio / teacher value.
DENSE = {
    "segmentation": {"metric": DENSE_METRICS["segmentation"], "label": "mIoU", "ratio": "segmentation_ratio", "benchmark": "ADE20K",
                     "teacher": None},
    "detection": {"metric": DENSE_METRICS["detection"], "label": "box AP", "ratio": "detection_ratio", "benchmark": "COCO",
                  "teacher": (51.6, "ViTDet README: Mask R-CNN ViT-B box AP (the checkpoint the official code distils from)")},
}
DENSE_METHODS = {
    "g2sd": ("G2SD (GD + dense SD)", "GD student, then the task's specific distillation from the dense teacher"),
    "gd_only": ("GD only", "GD student, then fine-tuning on the dense labels"),
}


def _pct(x: float | None) -> str:
    """A fraction in percent; ``n/a`` for a share of a teacher that scored 0 (``ratio_to_teacher`` None)."""
    return "n/a" if x is None else f"{100 * x:.2f}"


def share_text(ratio: float | None) -> str:
    """A student's share of its teacher: ``97.85 %``, or ``n/a`` when the teacher scored 0."""
    return "n/a" if ratio is None else f"{_pct(ratio)} %"


def metric_text(s: dict, metric: str = "top1") -> str:
    """Mean ± std over seeds, in percent (the mean alone for one seed)."""
    m, sd = s[f"{metric}_mean"], s[f"{metric}_std"]
    return f"{_pct(m)} ± {_pct(sd)}" if len(s["seeds"]) > 1 else _pct(m)


def comparison_rows(summary: dict, evaluation: dict, teacher_name: str) -> list[dict]:
    """The paper-style table: method | teacher | params | FLOPs | top-1 | % of teacher | agreement with the
    teacher's predictions | attention similarity to the teacher (CLS attention maps, last block) | paper | source."""
    cls = summary["classification"]
    t = evaluation["teacher"]
    rows = [{"method": "teacher", "teacher": "-", "params (M)": f"{t['params'] / 1e6:.3g}",
             "GFLOPs": f"{t['flops'] / 1e9:.3g}", "top-1 (%)": _pct(cls["teacher"]["top1"]),
             "% of teacher": "100.00", "agreement (%)": "-", "attention sim.": "-",
             "paper": f"{PAPER['teacher_top1'][0]} top-1",
             "paper source": PAPER["teacher_top1"][1]}]
    for name, s in cls["students"].items():
        ev = evaluation["students"][name]
        label = METHODS.get(name, (name, ""))[0]
        teacher_col = teacher_name if name in ("g2sd", "gd_only", "sd_only", "kd") else "-"
        paper, source = ((f"{PAPER['g2sd_ratio'][0]} % of teacher", PAPER["g2sd_ratio"][1]) if name == "g2sd"
                         else (UNAVAILABLE, "not in the sources available to this project"))
        rows.append({"method": label, "teacher": teacher_col, "params (M)": f"{ev['params'] / 1e6:.3g}",
                     "GFLOPs": f"{ev['flops'] / 1e9:.3g}", "top-1 (%)": metric_text(s),
                     "% of teacher": _pct(s["ratio_to_teacher"]), **_closeness(ev), "paper": paper,
                     "paper source": source})
    return rows


def _closeness(ev: dict) -> dict:
    """How close a student is to its teacher: mean agreement over seeds, attention similarity of the
    last block (``attention_similarity`` of notebook 04, absent in older results)."""
    agreement = [seed["agreement"] for seed in ev["seeds"].values() if "agreement" in seed]
    similarity = ev.get("attention_similarity")
    return {"agreement (%)": _pct(sum(agreement) / len(agreement)) if agreement else "-",
            "attention sim.": f"{similarity[-1]:.2f}" if similarity else "-"}


def ablation_rows(summary: dict) -> list[dict]:
    """Stage ablation: which of GD / SD the student went through, and its accuracy."""
    stages = {"scratch": ("no", "no"), "gd_only": ("yes", "no"), "sd_only": ("no", "yes"), "g2sd": ("yes", "yes")}
    cls = summary["classification"]
    rows = []
    for name, (gd, sd) in stages.items():
        if name in cls["students"]:
            s = cls["students"][name]
            rows.append({"run": name, "generic distillation": gd, "specific distillation": sd,
                         "top-1 (%)": metric_text(s), "% of teacher": _pct(s["ratio_to_teacher"])})
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
    """Each claim next to our measurement: the mean top-1 difference and whether it holds at the profile's budget.

    A claim "holds" when the mean difference is positive and larger than the two runs' standard
    deviations combined (sqrt(s1^2 + s2^2)); with a single seed there is no spread to compare with,
    so the verdict says so."""
    students = summary["classification"]["students"]
    rows = [_ratio_row("the ViT-S student", students["g2sd"], "g2sd_ratio")] if "g2sd" in students else []
    for claim, a, b in CLAIMS:
        if a in students and b in students:
            rows.append(comparison_claim_row(claim, students[a], students[b], "top1"))
    return rows


def _ratio_row(who: str, student: dict, paper_key: str) -> dict:
    """Claim row "``who`` reaches the paper's % of its ViT-B teacher" (``PAPER[paper_key]``)."""
    value, source = PAPER[paper_key]
    ratio = student["ratio_to_teacher"]
    return {"claim": f"{who} reaches {value} % of its ViT-B teacher", "paper": f"{value} %",
            "ours": share_text(ratio) if ratio is not None else "n/a (the teacher scored 0)",
            "holds at this budget": "yes" if ratio is not None and ratio >= value / 100 else "no", "source": source}


def comparison_claim_row(claim: str, sa: dict, sb: dict, metric: str) -> dict:
    """Claim row "a beats b" on ``metric``: the mean difference, the combined seed spread, the verdict."""
    diff = sa[f"{metric}_mean"] - sb[f"{metric}_mean"]
    spread = (sa[f"{metric}_std"] ** 2 + sb[f"{metric}_std"] ** 2) ** 0.5
    if min(len(sa["seeds"]), len(sb["seeds"])) < 2:
        verdict = f"{'yes' if diff > 0 else 'no'} (one seed, no spread measured)"
    else:
        verdict = "yes" if diff > spread else ("no" if diff <= 0 else "not resolved (within the seed spread)")
    return {"claim": claim, "paper": "yes", "ours": f"{100 * diff:+.2f} points (± {100 * spread:.2f})",
            "holds at this budget": verdict, "source": CLAIM_SOURCE}


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
                         "test metric (%)": f"{spec['label']} {metric_text(s, metric)}",
                         "% of teacher": _pct(s["ratio_to_teacher"]), "paper": paper, "paper source": source})
    return rows


def dense_claims_rows(summary: dict) -> list[dict]:
    """The paper's dense claims: the student's % of teacher, and whether dense SD beats fine-tuning (GD only)."""
    rows = []
    for task, spec in DENSE.items():
        students = summary.get(task, {}).get("students", {})
        if "g2sd" not in students:
            continue
        rows.append(_ratio_row(f"{task}: the ViT-S student", students["g2sd"], spec["ratio"]))
        if "gd_only" in students:
            rows.append(comparison_claim_row(f"{task}: dense specific distillation helps after GD (G2SD > GD only)",
                                             students["g2sd"], students["gd_only"], spec["metric"]))
    return rows


def _card(bundled_file: str) -> str:
    """The model card ``bundle_teacher`` wrote beside a bundled file: teachers/fmnist_mae.safetensors -> teachers/fmnist.md."""
    path = Path(bundled_file)
    return str(path.with_name(path.stem.rsplit("_", 1)[0] + ".md"))


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
    decay = {**s.get("task", {}), **params["students"].get("g2sd", {}).get("task", {})}.get("layer_decay")
    return [
        {"": "data", "paper": "ImageNet-1k, 1.28 M images, 224 x 224 RGB", "here": _data_text(params["data"])},
        {"": "teacher", "paper": "MAE ViT-B/16 (86 M), 1600 pretraining + 100 fine-tuning epochs",
         "here": f"{t['finetune']['model']} ({evaluation['teacher']['params'] / 1e6:.2f} M), "
                 + {"bundled": f"bundled, recipe in {_card(t['bundled']['classifier'])}",
                    "train": "trained in the pipeline (teacher section)",
                    "download": "the official MAE checkpoints"}[t["mode"]]},
        {"": "student", "paper": "ViT-S/16 (22 M)",
         "here": f"{s['model']}" + (f" ({g2sd_params / 1e6:.2f} M)" if g2sd_params else "")},
        {"": "generic distillation", "paper": "300 epochs, batch 4096, target block 4 of 8",
         "here": f"{gd['train']['epochs']} epochs, batch {gd['train']['batch_size']}, "
                 f"target block {gd['task']['target_block']}"},
        {"": "specific distillation", "paper": "200 epochs, batch 1024, RandAugment, mixup 0.8, cutmix 1.0, layer decay 0.75",
         "here": f"{s['train']['epochs']} epochs, batch {s['train']['batch_size']}, mixup {s['augment'].get('mixup', 0)}, "
                 f"cutmix {s['augment'].get('cutmix', 0)}, no RandAugment, "
                 + ("no layer decay" if decay is None else f"layer decay {decay}")},
        {"": "runs per student", "paper": "one", "here": f"{len(params['seeds'])} seed(s): {params['seeds']}"},
    ]


def write_table(rows: list[dict], stem, caption: str, provenance: dict) -> list[Path]:
    """Write ``stem``.md / .csv / .tex from ``rows`` (one dict per row, cells already formatted as
    text); the Markdown and LaTeX carry the caption and provenance. The LaTeX uses booktabs rules."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows).astype(str)
    prov = "; ".join(f"{k}: {v}" for k, v in provenance.items())
    # disable_numparse: the cells are already formatted ("100.00" stays "100.00", not "100")
    markdown = table.to_markdown(index=False, tablefmt="pipe", disable_numparse=True)
    stem.with_suffix(".md").write_text(f"**{caption}**\n\n{markdown}\n\n_Provenance: {prov}_\n")
    table.to_csv(stem.with_suffix(".csv"), index=False)
    styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(caption=_latex_escape(caption), position="t", position_float="centering",
                            hrules=True, column_format="l" * len(table.columns))
    latex = latex.replace("±", "$\\pm$").replace("\\end{table}", f"% Provenance: {_latex_escape(prov)}\n\\end{{table}}")
    stem.with_suffix(".tex").write_text(latex)
    return [stem.with_suffix(s) for s in (".md", ".csv", ".tex")]


def _latex_escape(text: str) -> str:
    """The caption and provenance line, escaped as ``Styler.format(escape="latex")`` escapes the cells."""
    for char, escaped in (("\\", "\\textbackslash "), ("%", "\\%"), ("_", "\\_"), ("&", "\\&"), ("#", "\\#"),
                          ("$", "\\$"), ("{", "\\{"), ("}", "\\}")):
        text = text.replace(char, escaped)
    return text


def provenance(params_path, seeds=None, trained_on: str | None = None) -> dict:
    """Commit, parameters (the profile file and its sha256), machine and seeds of a table.

    ``trained_on`` (:func:`g2sd_lib.pipeline.results.machines_text` of the evaluated runs) names the machines
    that trained the runs; without it, the machine rendering the table is named (``hardware``). A
    report rerun elsewhere (e.g. on a CPU after a GPU run) thus still names where the results came from."""
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
    return {"commit": commit, "parameters": f"{params_path} (sha256 {params_hash})",
            **({"trained on": trained_on} if trained_on else {"hardware": machine()}),
            "seeds": ", ".join(str(s) for s in (seeds or []))}
