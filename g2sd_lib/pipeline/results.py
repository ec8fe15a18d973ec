"""The pipeline's result files: JSON, per-epoch histories, and ``summary.json`` computed from them.

Three kinds of files carry the stages' numbers (declared in dvc.yaml), written with :mod:`g2sd_lib.history`'s
``write_json`` / ``write_history``:

* ``reports/<profile>/metrics/``: the few numbers per run a person compares between runs and
  experiments (``dvc metrics show``, ``dvc exp show``): :func:`metrics_per_model`;
* ``reports/<profile>/plots/``: every training run's per-epoch history as CSV (``dvc plots show``):
  :func:`g2sd_lib.history.write_history` (the run directory's own ``history.{json,csv}``:
  :func:`g2sd_lib.history.write_run_history`);
* ``reports/<profile>/results/``: the detailed per-seed results the report stage renders its tables
  from, and ``summary.json``: :func:`summarize` (means and stds over seeds, shares of the teacher).

:mod:`g2sd_lib.pipeline.report` renders the tables from these files.
"""

import statistics
from collections import Counter
from pathlib import Path

from ..history import read_json

# The headline metric of each dense task (a fraction): its key in the evaluation files.
DENSE_METRICS = {"segmentation": "miou", "detection": "box_ap"}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_task(teacher: dict, students: dict, metric: str) -> dict:
    """One task's section of ``summary.json`` (classification, segmentation or detection).

    ``teacher``: the teacher's evaluation ``{score: value, ...}`` (non-score keys such as ``params``
    are left out); ``students``: ``{name: {"seeds": {seed: {score: value}}}}``. Returns ``metric``,
    ``teacher`` and per student every score averaged over seeds, plus ``{metric}_mean``,
    ``{metric}_std``, ``seeds`` and ``ratio_to_teacher``; values are fractions.
    """
    scores = {k for s in students.values() for row in s["seeds"].values() for k in row}
    out = {"metric": metric, "teacher": {k: v for k, v in teacher.items() if k in scores}, "students": {}}
    t = out["teacher"][metric]
    for name, s in students.items():
        rows = list(s["seeds"].values())
        m, sd = mean_std([row[metric] for row in rows])
        out["students"][name] = {metric: m, f"{metric}_mean": m, f"{metric}_std": sd,
                                 "seeds": [int(k) for k in s["seeds"]], "ratio_to_teacher": m / t if t else None,
                                 **{k: statistics.fmean(row[k] for row in rows) for k in rows[0]
                                    if k != metric and all(k in row for row in rows)}}
    return out


def summarize(evaluation: dict, dense_evaluation: dict | None = None, plots=None) -> dict:
    """``reports/<profile>/summary.json``: the classification section (top-1) and, given the dense evaluation,
    the :func:`summarize_dense` sections. Given ``plots`` (``reports/<profile>/plots``), each section also
    gets ``last_epoch_gain``: :func:`last_epoch_gains` of its students (classification) or of its
    teacher and students (dense)."""
    out = {"classification": summarize_task(evaluation["teacher"], evaluation["students"], "top1")}
    if dense_evaluation is not None:
        out.update(summarize_dense(dense_evaluation))
    if plots is not None:
        runs = {"classification": (Path(plots) / "students", "top1"),
                **{task: (Path(plots) / "dense" / task, metric) for task, metric in DENSE_METRICS.items()}}
        for section, (where, metric) in runs.items():
            if section in out and "students" in out[section] and where.is_dir():
                out[section]["last_epoch_gain"] = last_epoch_gains(where, f"val_{metric}")
    return out


def summarize_dense(evaluation: dict) -> dict:
    """The ``segmentation`` / ``detection`` sections of ``summary.json`` (:func:`summarize_task` on
    mIoU / box AP); a profile whose dense tasks run outside the pipeline gets ``{"metric", "status"}``."""
    out = {}
    for task, metric in DENSE_METRICS.items():
        ev = evaluation.get("tasks", {}).get(task)
        out[task] = (summarize_task(ev["teacher"], ev["students"], metric) if ev is not None
                     else {"metric": metric, "status": evaluation.get("status", "not run")})
    return out


def last_epoch_gains(plots, metric: str) -> dict[str, float | None]:
    """Per run directory under ``plots`` (a stage's ``seed<k>.csv`` histories, e.g.
    ``reports/<profile>/plots/students``), how much the validation ``metric`` column rose between the
    run's last two validations (every epoch by default), as the mean over seeds of the fraction;
    None for a run validated once. A large gain says the run was still learning when it stopped; a
    small one, under a learning rate decayed to nearly 0, shows nothing (doubling the schedule is the
    test of convergence)."""
    import pandas as pd  # here: the training processes import this module and need no pandas

    gains = {}
    for run in sorted(p for p in Path(plots).iterdir() if p.is_dir()):
        per_seed = []
        for path in sorted(run.glob("seed*.csv")):
            frame = pd.read_csv(path)
            values = frame[metric].dropna() if metric in frame else []
            if len(values) >= 2:
                per_seed.append(float(values.iloc[-1] - values.iloc[-2]))
        gains[run.name] = statistics.fmean(per_seed) if per_seed else None
    return gains


# A run whose validation metric still rose by this much (0.3 points) between its last two validations had
# not converged: the project's test of convergence is that doubling the whole schedule moves it by less.
STILL_LEARNING = 0.003


def gain_span(gains: dict[str, float | None]) -> str | None:
    """``+3.83 to +7.36 points``: the range of :func:`last_epoch_gains`, or None if none is known."""
    known = [g for g in gains.values() if g is not None]
    if not known:
        return None
    lo, hi = min(known), max(known)
    return f"{100 * lo:+.2f}" + (f" to {100 * hi:+.2f}" if hi != lo else "") + " points"


def learning_text(gains: dict[str, float | None], runs: str, metric: str) -> str:
    """One sentence on what the last-epoch gains of a group of runs say about their convergence: runs
    that still gained :data:`STILL_LEARNING` or more had not converged; smaller gains, under a learning
    rate decayed to nearly 0, show nothing either way."""
    span = gain_span(gains)
    if span is None:
        return f"No run among the {runs} was validated twice, so none shows whether it was still learning."
    text = f"Between their last two validations the {runs}' {metric} changed by {span} (mean over seeds per run)"
    known = [k for k, g in gains.items() if g is not None]
    still = [k for k in known if gains[k] >= STILL_LEARNING]
    if still:
        who = "all" if len(still) == len(known) else ", ".join(still)
        return (f"{text}: {who} still learning when stopped, so these comparisons are between runs that had "
                "not converged.")
    return (f"{text}: less than {100 * STILL_LEARNING:.1f} points, which a decayed learning rate gives anyway; "
            "only doubling the schedule would show convergence.")


def trained_on(model_path) -> str:
    """The machine that trained a run's ``model.safetensors``: the ``machine`` its sidecar records
    (:func:`g2sd_lib.device.machine`, written by the engine), or ``unknown`` (runs of older versions)."""
    sidecar = Path(model_path).with_suffix(".json")
    return (read_json(sidecar).get("machine") if sidecar.is_file() else None) or "unknown"


def machines_text(*evaluations: dict | None) -> str | None:
    """The machines that trained the runs of the evaluation files (their ``trained_on``: model path ->
    :func:`trained_on`): one machine as is, several with their run counts, most runs first; None when
    no file records any."""
    counts = Counter(m for ev in evaluations if ev for m in ev.get("trained_on", {}).values())
    if len(counts) <= 1:
        return next(iter(counts), None)
    return ", ".join(f"{m} ({n} run{'s' * (n != 1)})" for m, n in counts.most_common())


def metrics_per_model(section: dict) -> dict[str, dict]:
    """Per model of a :func:`summarize_task` section, the numbers its test metric file keeps: the
    mean over seeds, the std and the fraction of the teacher's, e.g. ``{"top1": ..., "top1_std": ...,
    "of_teacher": ...}`` (the teacher: its metric only; a student of one seed: no std, which one run
    cannot measure). The validation files of the training stages use the same keys, so that
    ``dvc metrics show`` stays a few columns wide."""
    metric = section["metric"]
    files = {"teacher": {metric: section["teacher"][metric]}}
    for name, s in section["students"].items():
        spread = {f"{metric}_std": s[f"{metric}_std"]} if len(s["seeds"]) > 1 else {}
        files[name] = {metric: s[f"{metric}_mean"], **spread, "of_teacher": s["ratio_to_teacher"]}
    return files


# The paper's classification claims this regime can test: (claim, student that should win, student it should
# beat, the criteria it needs beyond V1-V3, a note). Scratch, KD and SD only never see the unlabelled images.
PAPER_CLAIMS = [
    ("G2SD beats the student's own MAE pretraining (same images, same labels: generic distillation)", "g2sd", "mae", (), ""),
    ("specific distillation adds to generic distillation (G2SD > GD only)", "g2sd", "gd_only", ("V4",), ""),
    ("generic distillation beats MAE pretraining of the student (GD only > MAE student)", "gd_only", "mae", (), ""),
    ("G2SD beats specific distillation alone (G2SD > SD only)", "g2sd", "sd_only", (), "SD only never sees the unlabelled images"),
    ("G2SD beats single-stage KD from the task teacher", "g2sd", "kd", (), "KD never sees the unlabelled images"),
    ("G2SD beats training the student from scratch", "g2sd", "scratch", (), "scratch never sees the unlabelled images"),
]
PAPER_RATIO = 0.987  # G2SD abstract: the ViT-S student reaches 98.7 % of its ViT-B teacher (ImageNet classification)
ALWAYS_NEEDED = ("V1", "V2", "V3")  # headroom, convergence, power: every claim needs them


def calibration_file(profile: str, params: dict) -> Path:
    """Where ``benchmarks/label_scarce.py`` keeps the calibration of the profile's own budget (the teacher's
    fine-tuning epochs T, pretraining epochs P, final-stage epochs S):
    ``benchmarks/results/calibration/<profile>_t<T>_p<P>_f<S>.json``; a budget that changes reads its own
    calibration, never another budget's."""
    teacher = params["teacher"]["finetune"]["train"]["epochs"]
    pre = params["pretrain"]["common"]["train"]["epochs"]
    final = params["students"]["common"]["train"]["epochs"]
    return Path("benchmarks/results/calibration") / f"{profile}_t{teacher}_p{pre}_f{final}.json"


def validity(calibration: dict | None, source: str) -> dict | None:
    """``summary.json``'s ``validity``: each pre-registered criterion V1-V5 as measured by the calibration
    (``benchmarks/label_scarce.py``, on the validation split): ``value``, ``threshold``, ``pass`` (None:
    not measured). None for a profile without a calibration (the all-label head start)."""
    if calibration is None:
        return None
    return {"source": source, "split": calibration.get("split"),
            **{name: {k: c[k] for k in ("what", "value", "threshold", "pass")}
               for name, c in calibration["criteria"].items()}}


def paper_claims(classification: dict, valid: dict | None) -> list[dict]:
    """``summary.json``'s ``claims``: each paper claim with the test top-1 numbers compared (fractions), the
    seed spread and a verdict ``holds`` / ``fails`` / ``untestable`` with its reason.

    A claim is untestable when a criterion it needs (V1-V3, and V4 for "SD adds to GD") did not pass or was
    not measured, or when the profile has no validity record. Otherwise "a beats b" holds when the mean
    difference exceeds the seed spread sqrt(s_a^2 + s_b^2); it fails when the difference is within the
    spread or reversed. The teacher-ratio claim holds when G2SD's mean plus its std reaches 98.7 % of
    the teacher."""
    students, teacher = classification["students"], classification["teacher"]["top1"]

    def blocked(needs):
        if valid is None:
            return "no validity criteria were measured for this profile (a head start, not a valid test)"
        bad = [n for n in (*ALWAYS_NEEDED, *needs) if not (valid.get(n) or {}).get("pass")]
        return (f"criteria {', '.join(bad)} did not pass or were not measured "
                f"({'; '.join(f'{n}: ' + str((valid.get(n) or {}).get('pass')) for n in bad)})" if bad else None)

    out = []
    if "g2sd" in students:
        g = students["g2sd"]
        ratio = g["top1_mean"] / teacher if teacher else None
        reason = blocked(())
        verdict = ("untestable" if reason else "holds" if (g["top1_mean"] + g["top1_std"]) >= PAPER_RATIO * teacher
                   else "fails")
        out.append({"claim": f"the student reaches {100 * PAPER_RATIO:.1f} % of its teacher", "a": "g2sd", "b": "teacher",
                    "a_top1": g["top1_mean"], "b_top1": teacher, "ratio": ratio, "spread": g["top1_std"],
                    "verdict": verdict, "reason": reason or f"G2SD reaches {100 * ratio:.1f} % of the teacher"})
    for claim, a, b, needs, note in PAPER_CLAIMS:
        if a not in students or b not in students:
            continue
        sa, sb = students[a], students[b]
        diff = sa["top1_mean"] - sb["top1_mean"]
        spread = (sa["top1_std"] ** 2 + sb["top1_std"] ** 2) ** 0.5
        reason = blocked(needs)
        if reason:
            verdict = "untestable"
        elif diff > spread:
            verdict, reason = "holds", f"{100 * diff:+.2f} points, more than the seed spread {100 * spread:.2f}"
        else:
            verdict = "fails"
            reason = (f"{100 * diff:+.2f} points, " + ("reversed" if diff <= 0 else f"within the seed spread {100 * spread:.2f}"))
        out.append({"claim": claim, "a": a, "b": b, "a_top1": sa["top1_mean"], "b_top1": sb["top1_mean"],
                    "difference": diff, "spread": spread, "verdict": verdict,
                    "reason": reason + (f"; {note}" if note else "")})
    return out


def regime(params: dict, teacher_result: dict) -> dict | None:
    """``summary.json``'s ``regime`` of a label-scarce profile: the labelled draw (from the teacher stage's
    ``label_draw``) and the unlabelled images pretraining sees; None when every image carries its label."""
    from .config import train_images
    draw = teacher_result.get("label_draw")
    if draw is None:
        return None
    return {"labels": draw["labels"], "per_class": draw["per_class"], "labels_seed": draw["labels_seed"],
            "draw_sha256": draw["sha256"], "unlabelled_images": train_images(params),
            "labelled_stages": "teacher fine-tuning, SD, KD and every fine-tuned student",
            "unlabelled_stages": "MAE (teacher and student) and GD pretraining"}
