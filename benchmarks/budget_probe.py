"""Is a profile's comparison decided by its budget? Its student trained alone, for far longer.

The paper's claims are tested only when the teacher is clearly stronger than anything the student
reaches alone. This trains a profile's student runs (default: ``scratch``, the student from random
initialisation on labels) by the profile's own recipe with only the number of epochs changed, and
reads the validation top-1 after every epoch, next to the teacher's validation top-1 from the teacher
stage (``reports/<profile>/results/teacher.json``: run ``make repro`` first). Only the validation
split is read: no test image is looked at.

    OMP_NUM_THREADS=1 python benchmarks/budget_probe.py --profile fmnist --epochs 20 40 --json benchmarks/results/budget_probe_fmnist.json

Several runs and seeds (``--runs scratch kd g2sd --seeds 0 1 2``) compare the students at one longer
budget: each (run, epochs) gets its mean and std over the seeds. ``--set KEY=VALUE`` changes a
setting of the profile first (``--set students.common.task.layer_decay=null``, VALUE read as YAML);
give such a probe its own ``--work``. Runs given at once (``--concurrent``) train side by side, one
process each, on their share of the cores. A run interrupted resumes from its ``last.pt`` under
``--work``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib.pipeline import config  # noqa: E402
from g2sd_lib.errors import InputError, run_main  # noqa: E402
from g2sd_lib.pipeline.profiles import PROFILES, load_profile  # noqa: E402
from g2sd_lib.pipeline.results import mean_std  # noqa: E402
from g2sd_lib.pipeline.schema import validate_params  # noqa: E402
from g2sd_lib.pipeline.stages import launch_all  # noqa: E402


def probe_configs(params: dict, root: Path, work: Path, runs: list[str], epochs: list[int],
                  seeds: list[int]) -> list[tuple[str, dict]]:
    """``(run, run_stage configuration)`` pairs: each run of ``students`` by the profile's recipe, for
    each seed and number of epochs (its learning-rate schedule stretched to that length)."""
    probes = []
    for run in runs:
        for seed in seeds:
            for n in epochs:
                cfg = config.stage_config(params, "students", run, root, seed=seed)
                cfg["train"]["epochs"] = n
                cfg["out_dir"] = str(work / f"{run}_e{n}_seed{seed}")
                probes.append((run, cfg))
    return probes


def summary(run: str, seed: int, history: list[dict], profile_epochs: int) -> dict:
    """Validation top-1 at the profile's budget (from the longer run's curve: same recipe but a longer
    learning-rate schedule, so not the pipeline's number) and at the end, and the best epoch."""
    val = [h["val_top1"] for h in history]
    best = max(range(len(val)), key=val.__getitem__)
    return {"run": run, "seed": seed, "epochs": len(history), "val_top1_last": val[-1], "val_top1_best": val[best],
            "best_epoch": best + 1, "val_top1_at_profile_epochs": val[min(profile_epochs, len(val)) - 1],
            "val_top1_per_epoch": val, "seconds": sum(h["seconds"] for h in history)}


def with_settings(params: dict, settings: list[str]) -> dict:
    """``params`` with each ``dotted.key=value`` of ``settings`` set (value read as YAML); a key that
    is not in the profile is refused, so that a typo cannot silently probe the unchanged recipe."""
    for item in settings:
        key, sep, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not sep or not isinstance(node, dict) or leaf not in node:
            raise InputError(f"--set {item}: expected KEY=VALUE with KEY a setting of the profile "
                             "(dotted, e.g. students.common.task.layer_decay=null)")
        node[leaf] = _value(value)
    return params


def _value(text: str):
    """A ``--set`` value as YAML, with ``2e-3`` a number (YAML 1.1 reads it as a string)."""
    try:
        value = config.load_yaml(text, "--set")
    except yaml.YAMLError as e:
        raise InputError(f"--set KEY=VALUE: {text!r} is not valid YAML ({getattr(e, 'problem', None) or e}); "
                         "write VALUE as in params.yaml, e.g. [1, 2], null, 2e-3 or 'a string'") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def over_seeds(runs: list[dict]) -> list[dict]:
    """Per (run, epochs), in the order of ``runs``: the seeds and the mean and sample std of the last
    epoch's validation top-1 over them."""
    groups = {}
    for r in runs:
        groups.setdefault((r["run"], r["epochs"]), []).append(r)
    out = []
    for (run, epochs), rows in groups.items():
        m, sd = mean_std([r["val_top1_last"] for r in rows])
        out.append({"run": run, "epochs": epochs, "seeds": [r["seed"] for r in rows],
                    "val_top1_last_mean": m, "val_top1_last_std": sd})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="fmnist", choices=PROFILES)
    parser.add_argument("--runs", nargs="+", default=["scratch"], choices=config.STUDENTS,
                        help="runs of the profile's `students` section")
    parser.add_argument("--epochs", type=int, nargs="+", default=[20],
                        help="schedule lengths; two (e.g. 20 40) show whether the shorter has converged")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="settings", nargs="+", default=[], metavar="KEY=VALUE",
                        help="profile settings changed before the runs are made (dotted keys, YAML values)")
    parser.add_argument("--concurrent", type=int, default=1, help="runs trained at once")
    parser.add_argument("--work", type=Path, default=None, help="run directories (default runs/<profile>/budget_probe)")
    parser.add_argument("--teacher-json", type=Path, default=None,
                        help="the teacher stage's result (default reports/<profile>/results/teacher.json)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    # a changed value is checked as the profile's own are, before any run starts
    source = f"g2sd_lib/pipeline/profiles/{args.profile}.yaml" + "".join(f" --set {s}" for s in args.settings)
    params = validate_params(with_settings(load_profile(args.profile), args.settings), source=source)
    root = REPO / "runs" / args.profile
    teacher_json = args.teacher_json or REPO / "reports" / args.profile / "results" / "teacher.json"
    if not teacher_json.exists():
        sys.exit(f"{teacher_json} is missing: run the pipeline first (make repro P={args.profile})")
    teacher = json.loads(teacher_json.read_text())
    work = args.work or root / "budget_probe"
    probes = probe_configs(params, root, work, args.runs, args.epochs, args.seeds)
    cfgs = [cfg for _, cfg in probes]
    start = time.time()
    histories = launch_all(cfgs, concurrent=args.concurrent, names=[Path(c["out_dir"]).name for c in cfgs])
    profile_epochs = params["students"]["common"]["train"]["epochs"]
    result = {
        "profile": args.profile, "settings": args.settings, "seeds": args.seeds, "epochs": args.epochs,
        "train_images_per_epoch": config.train_images(params),
        "profile_student_epochs": profile_epochs,
        "teacher_val_top1": teacher["val_top1"], "teacher_sha256": teacher["sd"]["sha256"],
        "wall_seconds": round(time.time() - start, 1),
        "command": "python benchmarks/budget_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": [summary(run, cfg["train"]["seed"], h, profile_epochs) for (run, cfg), h in zip(probes, histories)],
    }
    result["mean_over_seeds"] = over_seeds(result["runs"])
    print(f"teacher validation top-1 {100 * teacher['val_top1']:.2f} %")
    for r in result["runs"]:
        print(f"{r['run']:>8} seed {r['seed']}: validation top-1 {100 * r['val_top1_last']:.2f} % "
              f"after {r['epochs']} epochs "
              f"(best {100 * r['val_top1_best']:.2f} % at epoch {r['best_epoch']}; "
              f"{100 * r['val_top1_at_profile_epochs']:.2f} % at epoch {profile_epochs} of this schedule), "
              f"{r['seconds'] / 60:.1f} min")
    if len(args.seeds) > 1:
        for r in result["mean_over_seeds"]:
            print(f"{r['run']:>8}, {r['epochs']} epochs, seeds {r['seeds']}: validation top-1 "
                  f"{100 * r['val_top1_last_mean']:.2f} +- {100 * r['val_top1_last_std']:.2f} %")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
