"""Why does FRS distillation lower the `fmnist` detector? A sweep of its weights on validation canvases.

The fmnist pipeline's dense result: the detection student distilled with the official FRS weights
(feature 0.001, objectness 0.1) ends below the same student trained on labels only. This trains
the G2SD detection student again from the pipeline's own checkpoints (``runs/<profile>``: the GD
student and the dense detection teacher; run ``make repro`` first), with the profile's schedule
and the given seeds, changing only the distillation weights and warm-up, and reads the validation box AP
(validation canvases: no test image is looked at). Each run also records its loss parts, so the
share of the objectness term in the student's loss can be read off.

    python benchmarks/frs_sweep.py --json benchmarks/results/frs_sweep_fmnist.json
    python benchmarks/frs_sweep.py --json ... --seeds 1 2 --variants "labels only" "weights 0 (path on)"

Runs already in the JSON file (same variant and seed) are kept and not repeated, as long as they were
trained from the same checkpoints: the file records the sha256 of the GD student and the dense teacher,
and a rerun of the pipeline that changed either starts the file afresh. A run not in the file starts
afresh too (its directory under ``--work`` is cleared: a run the sweep did not record is stale).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib.pipeline import config  # noqa: E402
from g2sd_lib.checkpoints.files import sha256_file  # noqa: E402
from g2sd_lib.errors import run_main  # noqa: E402
from g2sd_lib.pipeline.profiles import PROFILES, load_profile, output_dirs  # noqa: E402
from g2sd_lib.pipeline.stages import run_stage  # noqa: E402

# (name, distill options or None for labels only); the official weights come first
VARIANTS = [
    ("official feat 0.001 obj 0.1", {"feat_weight": 0.001, "obj_weight": 0.1}),
    ("labels only", None),
    ("feature only (obj 0)", {"feat_weight": 0.001, "obj_weight": 0.0}),
    ("objectness only (feat 0)", {"feat_weight": 0.0, "obj_weight": 0.1}),
    ("obj 0.01", {"feat_weight": 0.001, "obj_weight": 0.01}),
    ("feat 0.01, obj 0.01", {"feat_weight": 0.01, "obj_weight": 0.01}),
    ("official, warm-up x5", {"feat_weight": 0.001, "obj_weight": 0.1, "warmup_factor": 5}),
    # the distillation path on (teacher forward, adapters) with both weights 0: what the machinery
    # alone changes, without any distillation loss
    ("weights 0 (path on)", {"feat_weight": 0.0, "obj_weight": 0.0}),
]


def configs(params: dict, root: Path, out: Path, seed: int = 0) -> list[tuple[str, dict]]:
    base = config.dense_stage_config(params, "detection", "g2sd", root, seed=seed)
    result = []
    for i, (name, distill) in enumerate(VARIANTS):
        cfg = json.loads(json.dumps(base))
        if distill is None:
            cfg["distill"] = None
            cfg.pop("teacher", None)
        else:
            distill = dict(distill)
            factor = distill.pop("warmup_factor", 1)
            cfg["distill"] = {**base["distill"], **distill}
            cfg["distill"]["warmup_iters"] = base["distill"]["warmup_iters"] * factor
        cfg["out_dir"] = str(out / f"v{i}" / f"seed{seed}")
        result.append((name, cfg))
    return result


def checkpoints(params: dict, root: Path) -> dict:
    """``{role: sha256}`` of the files every variant starts from: the GD student and the dense detection teacher."""
    base = config.dense_stage_config(params, "detection", "g2sd", root)
    files = {"student_init": Path(base["init"]), "dense_teacher": Path(base["teacher"])}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise SystemExit(f"frs_sweep: {', '.join(missing)} missing: run `make repro` (the {params['profile']} "
                         "pipeline) first; the sweep starts from its checkpoints")
    return {role: sha256_file(f) for role, f in files.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="fmnist", choices=PROFILES)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "frs_sweep", help="run directories")
    p.add_argument("--epochs", type=int, help="override the profile's detection student epochs (a quick look)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds (default 0)")
    p.add_argument("--variants", nargs="+", choices=[name for name, _ in VARIANTS], metavar="VARIANT",
                   help=f"only these variants, of: {'; '.join(repr(name) for name, _ in VARIANTS)}")
    args = p.parse_args(argv)
    params = load_profile(args.profile)
    root, _ = output_dirs(args.profile)
    hashes = checkpoints(params, REPO / root)
    earlier = json.loads(args.json.read_text()) if args.json.exists() else {}
    rows = earlier.get("rows", [])  # add to earlier runs, if they started from the same checkpoints
    if rows and earlier.get("checkpoints") != hashes:
        print(f"frs_sweep: the {len(rows)} runs in {args.json} started from other checkpoints (an earlier "
              "pipeline run); starting the file afresh", flush=True)
        rows = []
    done = {(r["variant"], r["seed"]) for r in rows}
    todo = [(seed, name, cfg) for seed in args.seeds for name, cfg in configs(params, REPO / root, args.work, seed)
            if (not args.variants or name in args.variants) and (name, seed) not in done]
    for seed, name, cfg in todo:
        if args.epochs:
            cfg["train"]["epochs"] = args.epochs
        cfg["train"]["progress"] = False
        shutil.rmtree(cfg["out_dir"], ignore_errors=True)  # not in the JSON: whatever is there is stale
        t0 = time.perf_counter()
        history = run_stage(cfg)
        last = history[-1]
        parts = {k: v for k, v in last.items() if k.startswith("train_")}
        rows.append({"variant": name, "seed": seed, "distill": cfg["distill"], "epochs": cfg["train"]["epochs"],
                     "val_box_ap": last["val_box_ap"], "val_box_ap_per_epoch": [r["val_box_ap"] for r in history],
                     "last_epoch_losses": parts, "minutes": (time.perf_counter() - t0) / 60})
        print(f"{name}, seed {seed}: val box AP {100 * last['val_box_ap']:.2f}; last epoch {parts}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"profile": args.profile, "split": "validation canvases",
                                         "checkpoints": hashes, "rows": rows}, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    run_main(lambda argv: main(argv) and 0)  # the rows main returns are for the tests; the exit status is 0
