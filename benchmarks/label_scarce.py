"""Calibration of the label-scarce regime (issue 42): its pre-registered validity criteria V1-V5,
measured on the validation split before the pipeline's main runs.

The profile ``fmnist_1k_labels`` holds the regime (all 55 000 training images unlabelled for MAE and
GD, ``data.labels`` stratified labels for every supervised stage) and the criteria. This script trains,
outside the pipeline and by the profile's own recipes (only epochs, label draw and seed changed):

* the teacher: the bundled MAE fine-tuned on the labels (``teacher.finetune``), on draw 0 and draw 1;
* GD and the MAE student's pretraining at the profile's epochs P and at 2P;
* every student at the profile's final-stage epochs S (pretrained ones on P and 2P), per seed;
* G2SD and the MAE student on the second draw (seed 0);
* every student at twice the final-stage epochs (seed after seed: the most expensive part, last);

then reads each run's last validation top-1 and the SD views' teacher-label disagreement and writes
every number and each criterion's value, threshold and verdict to ``--json``. No test image is read.

    OMP_NUM_THREADS=1 python benchmarks/label_scarce.py   # writes benchmarks/results/calibration/fmnist_1k_labels_t<T>_p<P>_f<S>.json

Runs train ``--concurrent`` at once (one process and one thread each), in the order above, each as soon
as the runs it needs have finished. Stopped, it resumes: a finished run is read back, a stopped one
continues from its ``last.pt`` under ``--work``. ``--only PART ...`` trains a part of the plan
(``base``, ``pretrain2x``, ``final2x``, ``draw1``); the JSON then reports what exists so far, and a
criterion whose runs are missing is ``untested``. ``--pretrain-epochs P --final-epochs S`` test another
budget than the profile's (runs are named by their epochs, so budgets share the runs they have in common);
``--teacher-epochs``, ``--labels`` (in another ``--work`` directory) and ``--students`` probe further.
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib.data import label_draw  # noqa: E402
from g2sd_lib.device import machine  # noqa: E402
from g2sd_lib.errors import InputError, run_main  # noqa: E402
from g2sd_lib.pipeline import config  # noqa: E402
from g2sd_lib.pipeline.profiles import load_profile  # noqa: E402
from g2sd_lib.pipeline.results import calibration_file  # noqa: E402
from g2sd_lib.pipeline.schema import validate_params  # noqa: E402
from g2sd_lib.pipeline.stages import start_run  # noqa: E402

STUDENTS = ("g2sd", "gd_only", "mae", "sd_only", "scratch", "kd")
PRETRAINED = {"g2sd": "gd", "gd_only": "gd", "mae": "mae_student"}
PARTS = ("base", "pretrain2x", "final2x", "draw1")
# the pre-registered thresholds (the profile's header and the README state them)
V1_HEADROOM, V2_FINAL, V2_PRETRAIN, V3_STD, V4_DISAGREE = 3.0, 0.3, 0.5, 1.0, 2.0


def plan(params: dict, work: Path, seeds: list[int], teacher_mae_epochs: int | None = None) -> list[dict]:
    """The runs, in priority order: ``{"name", "part", "cfg", "needs"}`` (``needs``: names of runs whose
    checkpoints this one loads). ``teacher_mae_epochs``: the teacher's MAE is pretrained here for that many
    epochs by the profile's ``teacher.pretrain`` recipe (run ``teacher_mae_e<M>``) instead of the bundled one;
    it is then the GD teacher and the encoder the SD teacher is fine-tuned from."""
    mae_path = params["teacher"]["bundled"]["mae"]
    mae_needs = []
    p_ep = params["pretrain"]["common"]["train"]["epochs"]
    s_ep = params["students"]["common"]["train"]["epochs"]
    jobs = []

    def add(name, part, cfg, needs=()):
        cfg["out_dir"] = str(work / name)
        jobs.append({"name": name, "part": part, "cfg": cfg, "needs": list(needs)})

    if teacher_mae_epochs is not None:
        cfg = config.teacher_stage_config(params, "pretrain", work)
        cfg["train"]["epochs"] = teacher_mae_epochs
        mae_needs = [f"teacher_mae_e{teacher_mae_epochs}"]
        add(mae_needs[0], "base", cfg)
        mae_path = str(work / mae_needs[0] / "model.safetensors")

    def with_draw(draw):
        p = copy.deepcopy(params)
        p["data"]["labels_seed"] = draw
        return p

    def teacher(draw, part):
        cfg = config.teacher_stage_config(with_draw(draw), "finetune", work)
        cfg["init"] = mae_path
        add(f"teacher_d{draw}", part, cfg, mae_needs)

    def pretrain(run, epochs, part):
        cfg = config.stage_config(params, "pretrain", run, work)
        cfg["train"]["epochs"] = epochs
        needs = []
        if cfg["kind"] == "gd":
            cfg["teacher"], needs = mae_path, mae_needs
        add(f"{run}_e{epochs}", part, cfg, needs)

    def student(run, seed, epochs, pre, draw, part):
        cfg = config.stage_config(with_draw(draw), "students", run, work, seed=seed)
        cfg["train"]["epochs"] = epochs
        needs = []
        if run in PRETRAINED:
            needs.append(f"{PRETRAINED[run]}_e{pre}")
            cfg["init"] = str(work / needs[-1] / "model.safetensors")
        if cfg["kind"] in ("sd", "kd"):
            needs.append(f"teacher_d{draw}")
            cfg["teacher"] = str(work / needs[-1] / "model.safetensors")
        tag = f"_p{pre}" if run in PRETRAINED else ""
        add(f"{run}{tag}_e{epochs}_d{draw}_seed{seed}", part, cfg, needs)
        jobs[-1]["run"] = run

    teacher(0, "base")
    pretrain("gd", p_ep, "base")
    pretrain("mae_student", p_ep, "base")
    for seed in seeds:
        for run in STUDENTS:
            student(run, seed, s_ep, p_ep, 0, "base")
    pretrain("gd", 2 * p_ep, "pretrain2x")
    pretrain("mae_student", 2 * p_ep, "pretrain2x")
    for seed in seeds:
        for run in PRETRAINED:
            student(run, seed, s_ep, 2 * p_ep, 0, "pretrain2x")
    teacher(1, "draw1")
    for run in ("g2sd", "mae"):
        student(run, 0, s_ep, p_ep, 1, "draw1")
    for seed in seeds:
        for run in STUDENTS:
            student(run, seed, 2 * s_ep, p_ep, 0, "final2x")
    return jobs


def keep_students(jobs: list[dict], students) -> list[dict]:
    """The runs of ``students`` and what they need (transitively), plus the teachers (V1, V4 and V5 read them)."""
    kept = [j for j in jobs if j.get("run") in students]
    needed = {n for j in kept for n in j["needs"]} | {j["name"] for j in jobs if j["name"].startswith("teacher_d")}
    for job in reversed(jobs):  # a run's needs come before it in the plan
        if job["name"] in needed:
            needed |= set(job["needs"])
    return [j for j in jobs if j in kept or j["name"] in needed]


def finished(job: dict) -> list[dict] | None:
    """The run's history when it trained all its epochs and saved its model, else None."""
    out = Path(job["cfg"]["out_dir"])
    hist = out / "history.json"
    if not (out / "model.safetensors").exists() or not hist.exists():
        return None
    rows = json.loads(hist.read_text())
    return rows if rows and rows[-1]["epoch"] == job["cfg"]["train"]["epochs"] else None


def train_all(jobs: list[dict], concurrent: int) -> None:
    """Train the unfinished runs, ``concurrent`` at once, each when what it needs has finished."""
    done = {j["name"] for j in jobs if finished(j)}
    todo = [j for j in jobs if j["name"] not in done]
    known = {j["name"] for j in jobs}
    running = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    print(f"{len(done)} of {len(jobs)} runs finished; training {len(todo)}", flush=True)
    try:
        while todo or running:
            for job in list(todo):
                if len(running) >= concurrent:
                    break
                if all(n in done or n not in known for n in job["needs"]):
                    todo.remove(job)
                    running[job["name"]] = (start_run(job["cfg"], env), time.time())
                    print(f"start {job['name']}", flush=True)
            time.sleep(2)
            for name, ((proc, log, _), t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    tail = "".join(log.read_text().splitlines(keepends=True)[-10:])
                    raise InputError(f"run {name} failed (exit {proc.returncode}); the end of {log}:\n{tail}")
                done.add(name)
                print(f"done {name} in {time.time() - t0:.0f} s", flush=True)
    finally:
        for (proc, _, _), _ in running.values():
            proc.terminate()


def disagreement(params: dict, teacher_path: Path, epochs: int = 10) -> float:
    """V4: % of SD's augmented, mixed labelled views on which the teacher's argmax differs from the
    argmax of the (mixed, smoothed) label, over ``epochs`` epochs of the g2sd run's own loader."""
    import torch

    from g2sd_lib.engine import seed_epoch
    from g2sd_lib.pipeline.stages import build_task, training_loader
    cfg = config.stage_config(params, "students", "g2sd", "runs-unused", seed=0)
    cfg["init"], cfg["teacher"] = None, str(teacher_path)
    task = build_task(cfg)  # its frozen teacher and its mixup, as the SD run uses them
    loader = training_loader(cfg)
    differ = total = 0
    with torch.no_grad():
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            seed_epoch(0, epoch, 0)  # the mixing draws of the run's own epochs (seed 0)
            for batch in loader:
                x, y = task.mixed(batch)
                differ += int((task.teacher(x).argmax(1) != y.argmax(1)).sum())
                total += len(x)
    return 100.0 * differ / total


def _top1(job) -> float | None:
    rows = finished(job)
    return 100.0 * rows[-1]["val_top1"] if rows else None


def _stats(by_seed: dict):
    """Mean, std and count of the finished runs' top-1 (``by_seed``: seed -> value or None), None if none."""
    by_seed = {s: v for s, v in by_seed.items() if v is not None}
    if not by_seed:
        return None
    values = list(by_seed.values())
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "by_seed": by_seed}


def _paired_change(longer: dict | None, base: dict | None) -> tuple[float, int] | None:
    """Mean change over the seeds both groups finished, and how many seeds that is."""
    if not longer or not base:
        return None
    seeds = [s for s in longer["by_seed"] if s in base["by_seed"]]
    if not seeds:
        return None
    return statistics.fmean(longer["by_seed"][s] - base["by_seed"][s] for s in seeds), len(seeds)


def _v2_violated(paired: dict, ppaired: dict, n_seeds: int) -> bool:
    """Whether a comparison that has every seed already breaks V2 (final stage +0.3, pretraining 0.5)."""
    final = any(c and c[1] == n_seeds and c[0] >= V2_FINAL for c in paired.values())
    pre = any(c and c[1] == n_seeds and abs(c[0]) >= V2_PRETRAIN for r, c in ppaired.items() if r != "gd_only")
    return final or pre


def report(params: dict, jobs: list[dict], seeds: list[int], v4: float | None) -> dict:
    """Every measured number, by group, and the criteria V1-V5 (value, threshold, pass or untested)."""
    by = {j["name"]: j for j in jobs}
    p_ep = params["pretrain"]["common"]["train"]["epochs"]
    s_ep = params["students"]["common"]["train"]["epochs"]

    def group(epochs, pre, draw=0, runs=STUDENTS, seed_list=seeds):
        out = {}
        for run in runs:
            tag = f"_p{pre}" if run in PRETRAINED else ""
            out[run] = _stats({s: _top1(by[n]) for s in seed_list
                               if (n := f"{run}{tag}_e{epochs}_d{draw}_seed{s}") in by})
        return out

    teacher = {d: _top1(by[f"teacher_d{d}"]) for d in (0, 1)}
    base, final2x = group(s_ep, p_ep), group(2 * s_ep, p_ep)
    pre2x = group(s_ep, 2 * p_ep, runs=tuple(PRETRAINED))
    draw1 = group(s_ep, p_ep, draw=1, runs=("g2sd", "mae"), seed_list=[0])
    mean = lambda g, r: g[r]["mean"] if g.get(r) else None  # noqa: E731
    crit = {}
    alone = [mean(base, r) for r in ("scratch", "mae")]
    value = teacher[0] - max(alone) if teacher[0] is not None and None not in alone else None
    every_seed = all(base.get(r) and base[r]["n"] == len(seeds) for r in ("scratch", "mae"))
    crit["V1"] = {"what": "teacher minus the better of scratch and MAE student (seed means), points",
                  "value": value, "threshold": f">= {V1_HEADROOM}",
                  "pass": value >= V1_HEADROOM if value is not None and every_seed else None}
    # changes over the seeds both budgets finished; the verdict waits for every seed of every student
    paired = {r: _paired_change(final2x.get(r), base.get(r)) for r in STUDENTS}
    ppaired = {r: _paired_change(pre2x.get(r), base.get(r)) for r in PRETRAINED}
    moves = {r: c[0] for r, c in paired.items() if c}
    pmoves = {r: c[0] for r, c in ppaired.items() if c and r != "gd_only"}
    complete = (all(c and c[1] == len(seeds) for c in paired.values())
                and all(ppaired[r] and ppaired[r][1] == len(seeds) for r in ("g2sd", "mae")))
    ok = complete and all(m < V2_FINAL for m in moves.values()) and all(abs(m) < V2_PRETRAIN for m in pmoves.values())
    crit["V2"] = {"what": f"change of each student's mean when its final stage trains {2 * s_ep} instead of {s_ep} epochs "
                          f"(a fall is over-fitting: the shorter budget stays); change of G2SD and MAE student when "
                          f"pretraining runs {2 * p_ep} instead of {p_ep} epochs",
                  "value": {"final_stage": moves, "pretraining": pmoves,
                            "pretraining_gd_only": ppaired["gd_only"][0] if ppaired["gd_only"] else None,
                            "seeds_compared": {"final_stage": {r: c[1] for r, c in paired.items() if c},
                                               "pretraining": {r: c[1] for r, c in ppaired.items() if c}}},
                  "threshold": f"final stage < +{V2_FINAL} each; pretraining: absolute change < {V2_PRETRAIN}",
                  # a budget that fails one complete comparison fails V2, whatever the others will show
                  "pass": False if _v2_violated(paired, ppaired, len(seeds)) else ok if complete else None}
    stds = {r: base[r]["std"] for r in STUDENTS if base.get(r) and base[r]["n"] == len(seeds)}
    crit["V3"] = {"what": "seed standard deviation of each student, points", "value": stds,
                  "threshold": f"<= {V3_STD}", "pass": all(s <= V3_STD for s in stds.values()) if len(stds) == len(STUDENTS) else None}
    crit["V4"] = {"what": "% of SD's augmented labelled views where the teacher's argmax differs from the mixed label",
                  "value": v4, "threshold": f">= {V4_DISAGREE}", "pass": None if v4 is None else v4 >= V4_DISAGREE}
    d1 = {"teacher": teacher[1], **{r: mean(draw1, r) for r in ("g2sd", "mae")}}
    d0 = {"teacher": teacher[0], **{r: base[r]["by_seed"].get(0) if base.get(r) else None for r in ("g2sd", "mae")}}
    v5 = None not in (*d0.values(), *d1.values())
    crit["V5"] = {"what": "teacher, G2SD and MAE student (seed 0) on a second label draw (labels_seed 1) against draw 0; "
                          "passes when the order teacher > G2SD > MAE student and V1's headroom hold on both draws",
                  "value": {"draw0": d0, "draw1": d1},
                  "threshold": "same order, teacher - MAE student >= 3.0 on both",
                  "pass": (all(d["teacher"] > d["g2sd"] > d["mae"] and d["teacher"] - d["mae"] >= V1_HEADROOM
                               for d in (d0, d1)) if v5 else None)}
    return {"profile": params["profile"], "split": "validation (5 000 images carved from the training split)",
            "regime": {"labels": params["data"]["labels"], "unlabelled_images": config.train_images(params)},
            "epochs": {"teacher": params["teacher"]["finetune"]["train"]["epochs"], "pretrain": p_ep, "final_stage": s_ep},
            "seeds": seeds,
            "teacher": teacher, "students": base, "students_final_2x": final2x, "students_pretrain_2x": pre2x,
            "students_draw1": draw1, "criteria": crit,
            "seconds": {j["name"]: sum(r["seconds"] for r in rows) for j in jobs if (rows := finished(j))}}


def markdown(out: dict) -> str:
    """The calibration as a page: every student's validation top-1 per budget, then V1-V5."""
    def cell(g, run):
        st = (g or {}).get(run)
        if not st:
            return "-"
        spread = f" ± {st['std']:.2f}" if st["std"] is not None else ""
        return f"{st['mean']:.2f}{spread} ({st['n']} seed{'s' * (st['n'] > 1)})"
    e = out["epochs"]
    lines = [f"# Calibration of `{out['profile']}` (validation top-1 %, generated by benchmarks/label_scarce.py)", "",
             f"Command: `{out['command']}`. Split: {out['split']}. Regime: {out['regime']['labels']} labelled images "
             f"(draw sha256 `{out['regime']['draw_sha256']}`), {out['regime']['unlabelled_images']} unlabelled. "
             f"Trained on: {out['machine']}.", "",
             f"Teacher (its MAE {out['teacher_mae']}, fine-tuned {e['teacher']} epochs on the labels): "
             f"draw 0 {_fmt(out['teacher']['0'])}, draw 1 {_fmt(out['teacher']['1'])}.", "",
             f"| student | pretrain {e['pretrain']} + final {e['final_stage']} epochs | final stage {2 * e['final_stage']} epochs "
             f"| pretrain {2 * e['pretrain']} epochs | draw 1 |", "|---|---|---|---|---|"]
    for run in STUDENTS:
        lines.append(f"| {run} | {cell(out['students'], run)} | {cell(out['students_final_2x'], run)} "
                     f"| {cell(out['students_pretrain_2x'], run)} | {cell(out['students_draw1'], run)} |")
    lines += ["", "| criterion | what | value | threshold | verdict |", "|---|---|---|---|---|"]
    for name, c in out["criteria"].items():
        verdict = "untested" if c["pass"] is None else "pass" if c["pass"] else "FAIL"
        lines.append(f"| {name} | {c['what']} | `{json.dumps(_rounded(c['value']))}` | {c['threshold']} | {verdict} |")
    return "\n".join(lines) + "\n"


def _rounded(v):
    """``v`` with every float rounded to 2 decimals (points), for the page."""
    if isinstance(v, float):
        return round(v, 2)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return v


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/label_scarce.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="fmnist_1k_labels")
    parser.add_argument("--work", type=Path, default=Path("runs/calibration"), help="run directories (resumed)")
    parser.add_argument("--json", type=Path, help="where to write the measurements and criteria (default: "
                        "benchmarks/results/calibration/<profile>_t<T>_p<P>_f<S>.json, which the report stage reads)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts of the plan to train")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="train nothing; report what exists")
    parser.add_argument("--pretrain-epochs", type=int, metavar="P",
                        help="GD and MAE-student epochs of the budget under test (default: the profile's)")
    parser.add_argument("--final-epochs", type=int, metavar="S",
                        help="final-stage epochs of the budget under test (default: the profile's)")
    parser.add_argument("--teacher-epochs", type=int, metavar="T",
                        help="epochs of the teacher's fine-tuning on the labels (default: the profile's)")
    parser.add_argument("--labels", type=int, metavar="N",
                        help="labelled images (default: the profile's data.labels); use its own --work directory")
    parser.add_argument("--teacher-mae-epochs", type=int, metavar="M",
                        help="pretrain the teacher's MAE here for M epochs (the profile's teacher.pretrain recipe) "
                             "instead of using the bundled one; use its own --work directory")
    parser.add_argument("--students", nargs="+", choices=STUDENTS,
                        help="train and report only these students (and the teachers and pretraining runs they need)")
    args = parser.parse_args(argv)
    params = validate_params(load_profile(args.profile), source=args.profile)
    for flag, epochs, train in (("--pretrain-epochs", args.pretrain_epochs, params["pretrain"]["common"]["train"]),
                                ("--final-epochs", args.final_epochs, params["students"]["common"]["train"]),
                                ("--teacher-epochs", args.teacher_epochs, params["teacher"]["finetune"]["train"]),
                                ("--teacher-mae-epochs", args.teacher_mae_epochs, {})):
        if epochs is not None:
            if epochs < 1:
                raise InputError(f"{flag} must be >= 1, got {epochs}")
            train["epochs"] = epochs
    if args.labels is not None:
        params["data"]["labels"] = args.labels
    args.json = args.json or REPO / calibration_file(args.profile, params)
    jobs = plan(params, args.work / args.profile, args.seeds, args.teacher_mae_epochs)
    if args.students:
        jobs = keep_students(jobs, args.students)
    if not args.report_only:
        train_all([j for j in jobs if j["part"] in args.only], args.concurrent)
    teacher = args.work / args.profile / "teacher_d0" / "model.safetensors"
    v4 = disagreement(params, teacher) if teacher.exists() else None
    out = report(params, jobs, args.seeds, v4)
    out["teacher"] = {str(k): v for k, v in out["teacher"].items()}
    draw = label_draw(params["data"])
    out["regime"]["draw_sha256"] = draw["sha256"]
    out["teacher_mae"] = (f"pretrained here, {args.teacher_mae_epochs} epochs (run teacher_mae_e{args.teacher_mae_epochs})"
                          if args.teacher_mae_epochs else f"bundled ({params['teacher']['bundled']['mae']})")
    out["machine"] = machine()
    out["command"] = "python benchmarks/label_scarce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(out, indent=1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")
    args.json.with_suffix(".md").write_text(markdown(out))
    for name, c in out["criteria"].items():
        print(f"{name}: {json.dumps(c['value'])} (threshold {c['threshold']}): "
              f"{'untested' if c['pass'] is None else 'pass' if c['pass'] else 'FAIL'}")


if __name__ == "__main__":
    run_main(main)
