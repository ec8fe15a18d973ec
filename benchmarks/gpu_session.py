"""The GPU work of the `gpu` profile, as one prepared command for a lent GPU (or a CPU dry run).

A GPU session has minutes of device time in all, start-up included, so everything it must do is
here, tried on the CPU first with ``--dry`` (the same code, a few images and one epoch):

* ``bench``: ``benchmarks/throughput.py --device cuda`` on the ``gpu`` and ``paper`` configurations
  (bf16, eager and compiled), the numbers the README and the calibration notes quote;
* ``sweep``: the teacher's recipe and the students' schedule, chosen on the validation split only:
  the profile's MAE pretraining once, then fine-tuning variants of the teacher trained at once
  (``launch_all``, one process each), and the student from scratch at the profile's schedule and at
  twice it (the convergence check: doubling moves validation top-1 by < 0.3 points);
* ``repro``: the `gpu` profile through DVC (``dvc repro report@gpu explore@gpu``), timed per stage.

Everything it writes goes under ``--out`` (``$OUT`` on the device), and ``--pack`` puts it in one
archive ``gpu_session.tar.gz`` there (the device returns at most 8 files)::

    python benchmarks/gpu_session.py --dry --out /tmp/gs bench sweep      # CPU dry run, minutes
    python benchmarks/gpu_session.py --out "$OUT" --pack bench sweep       # on the GPU

``benchmarks/gpu_session.sh`` prepares the device (wheels, data) and calls this.
"""

import argparse
import copy
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib import config  # noqa: E402
from g2sd_lib.profiles import load_profile  # noqa: E402
from g2sd_lib.stages import launch_all  # noqa: E402

# Teacher fine-tuning variants tried on the validation split (overrides of teacher.finetune).
TEACHER_VARIANTS = {
    "profile": {},
    "blr5e-4": {"train": {"blr": 5.0e-4}},
    "blr2e-3": {"train": {"blr": 2.0e-3}},
    "dp0.2_mix0.8": {"model_kwargs": {"drop_path_rate": 0.2},
                     "augment": {"mixup": 0.8, "cutmix": 1.0, "reprob": 0.25}},
}


def log(msg: str) -> None:
    print(f"[gpu_session {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shrink(params: dict, images: int = 256, batch: int = 64, canvases=(16, 8, 8), **train) -> dict:
    """The profile on a few images for one epoch, same models and code, no compilation (the dry run
    here; the tests with smaller sizes). ``train``: more TrainConfig fields for every run."""
    p = copy.deepcopy(params)
    p["data"].update(train_subset=images, val_subset=images, test_subset=images, eval_batch_size=images)
    for section in (p["teacher"]["pretrain"], p["teacher"]["finetune"], p["pretrain"]["common"],
                    p["students"]["common"], p["dense"]["common"]):
        section["train"].update(epochs=1, warmup_epochs=0, batch_size=batch, compile="none", **train)
    for task in config.DENSE_TASKS:  # the dense runs' own schedules (e.g. detection's 24 epochs) go too
        p["dense"][task].update(teacher_train={}, student_train={})
    p["dense"]["data"].update(dict(zip(("train", "val", "test"), canvases)))
    return p


def bench(out: Path, dry: bool) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks/throughput.py"), "--json", str(out / "throughput.json")]
    if dry:
        cmd += ["--configs", "smoke", "--precisions", "fp32", "--kinds", "gd", "sd", "augment",
                "--compile", "none", "default", "--steps", "1", "--warmup", "1", "--peak-n", "256"]
    else:
        cmd += ["--device", "cuda", "--configs", "gpu", "--precisions", "bf16", "--kinds", "gd", "sd", "finetune",
                "augment", "--compile", "none", "default", "--steps", "20", "--warmup", "5"]
    log("bench: " + " ".join(cmd[1:]))
    with open(out / "throughput.md", "w") as f:
        subprocess.run(cmd, check=True, stdout=f)
    if not dry:  # paper scale, eager: the GD / SD steps against the official code's 3 211 img/s
        cmd = [sys.executable, str(REPO / "benchmarks/throughput.py"), "--device", "cuda", "--configs", "paper",
               "--precisions", "bf16", "--kinds", "gd", "sd", "--steps", "10", "--warmup", "3",
               "--json", str(out / "throughput_paper.json")]
        with open(out / "throughput_paper.md", "w") as f:
            subprocess.run(cmd, check=True, stdout=f)


def sweep_configs(params: dict, root: Path) -> tuple[list[str], list[dict]]:
    """The runs trained at once after the teacher's pretraining: the teacher fine-tuning variants,
    then the student from scratch at the profile's schedule (x1) and at twice it (x2)."""
    cfgs, names = [], []
    for name, override in TEACHER_VARIANTS.items():
        cfg = config.deep_merge(config.teacher_stage_config(params, "finetune", root), override)
        cfg["out_dir"] = str(root / "teacher_finetune" / name)
        cfgs.append(cfg)
        names.append(f"teacher {name}")
    scratch = config.stage_config(params, "students", "scratch", root, seed=0)
    for factor in (1, 2):
        cfg = copy.deepcopy(scratch)
        cfg["train"]["epochs"] *= factor
        cfg["out_dir"] = str(root / "scratch" / f"x{factor}")
        cfgs.append(cfg)
        names.append(f"scratch x{factor}")
    return names, cfgs


def sweep(out: Path, dry: bool, concurrent: int) -> dict:
    params = load_profile("gpu")
    params = shrink(params) if dry else params
    root = out / "sweep"
    t0 = time.perf_counter()
    pre = config.teacher_stage_config(params, "pretrain", root)
    log(f"sweep: teacher MAE pretraining, {pre['train']['epochs']} epochs")
    launch_all([pre])
    minutes = {"teacher_pretrain": (time.perf_counter() - t0) / 60}
    names, cfgs = sweep_configs(params, root)
    t1 = time.perf_counter()
    histories = launch_all(cfgs, 1, concurrent, names=names)
    minutes["finetune_and_scratch_concurrently"] = (time.perf_counter() - t1) / 60
    result = {"dry": dry, "minutes": minutes, "runs": {}}
    for name, cfg, history in zip(names, cfgs, histories):
        last = history[-1]
        result["runs"][name] = {"epochs": cfg["train"]["epochs"], "val_top1": last.get("val_top1"),
                                "best_val_top1": max(r.get("val_top1", 0) for r in history),
                                "img_per_s": sum(r["img_per_s"] for r in history) / len(history),
                                "overrides": TEACHER_VARIANTS.get(name.removeprefix("teacher "))}
    x1, x2 = result["runs"]["scratch x1"]["val_top1"], result["runs"]["scratch x2"]["val_top1"]
    result["scratch_doubling_gain_points"] = 100 * (x2 - x1)
    best = max((n for n in names if n.startswith("teacher")), key=lambda n: result["runs"][n]["val_top1"])
    result["best_teacher_variant"] = best
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    log(f"sweep: best teacher {best} val top-1 {result['runs'][best]['val_top1']:.4f}; scratch x2 - x1 = "
        f"{result['scratch_doubling_gain_points']:+.2f} points")
    return result


def repro(out: Path, dry: bool) -> None:
    """The `gpu` profile through DVC, timed per stage by benchmarks/pipeline_time.py."""
    if dry:
        log("repro: skipped in a dry run (tests/test_pipeline.py runs the pipeline on the smoke profile, and "
            "tests/test_gpu_paths.py the gpu profile's stages shrunk)")
        return
    subprocess.run([sys.executable, "-m", "g2sd_lib.profiles", "enable", "gpu"], check=True, cwd=REPO)
    subprocess.run([sys.executable, str(REPO / "benchmarks/pipeline_time.py"), "--json", str(out / "pipeline_gpu.json"),
                    "report@gpu", "explore@gpu"], check=True, cwd=REPO)
    for rel in ("reports/gpu", "dvc.lock", "params.yaml"):
        subprocess.run(["cp", "-r", str(REPO / rel), str(out / "repro")], check=False)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("steps", nargs="+", choices=["bench", "sweep", "repro"])
    p.add_argument("--out", type=Path, required=True, help="results directory ($OUT on the device)")
    p.add_argument("--dry", action="store_true", help="shrunk, for a CPU dry run of the exact steps")
    p.add_argument("--concurrent", type=int, default=6, help="runs trained at once in the sweep (default 6)")
    p.add_argument("--pack", action="store_true", help="pack --out into one gpu_session.tar.gz inside it")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repro").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        for step in args.steps:
            s0 = time.perf_counter()
            {"bench": lambda: bench(args.out, args.dry), "sweep": lambda: sweep(args.out, args.dry, args.concurrent),
             "repro": lambda: repro(args.out, args.dry)}[step]()
            log(f"{step}: {(time.perf_counter() - s0) / 60:.1f} min")
    finally:
        log(f"total {(time.perf_counter() - t0) / 60:.1f} min")
        if args.pack:  # histories, metrics, reports; no checkpoints (they stay on the device)
            archive = args.out / "gpu_session.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted(args.out.rglob("*")):
                    if path.is_file() and path != archive and path.suffix not in (".pt", ".safetensors"):
                        tar.add(path, arcname=str(path.relative_to(args.out)))
            log(f"packed {archive} ({archive.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
