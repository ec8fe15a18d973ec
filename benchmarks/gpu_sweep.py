"""The GPU session's ``sweep`` step (and the optional ``dense`` probe after it): the `gpu` profile's
choices, made on the validation split only.

The teacher's MAE pretraining runs once; then the fine-tuning variants of ``TEACHER_VARIANTS`` train at
once (``launch_all``, one process each). Alongside the pretraining, the student from scratch trains at
the profile's schedule and at twice it (the convergence check: doubling moves validation top-1 by
< 0.3 points), and the ``fmnist`` profile's own (patch 7) teacher architecture trains by the ``gpu``
profile's long teacher recipe (``twin``). The best variant on validation is bundled there and then
(``bundle_teacher``: float16 MAE + classifier and their model card, under ``teachers/`` in the
archive), so the teacher comes back even when the session has no time left for more. ``sweep.json``
names the chosen variant and its bundle only once both exist: a sweep stopped earlier leaves nothing
for ``adopt``.
"""

import copy
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpu_common import helpers, log  # first: it puts the repository on the path

from g2sd_lib.pipeline import config
from g2sd_lib.pipeline.profiles import load_profile, shrink
from g2sd_lib.pipeline.stages import launch_all
from g2sd_lib.pipeline.teacher import copy_saved, bundle_teacher

# Teacher fine-tuning variants tried on the validation split (overrides of teacher.finetune).
TEACHER_VARIANTS = {
    "profile": {},
    "blr5e-4": {"train": {"blr": 5.0e-4}},
    "blr2e-3": {"train": {"blr": 2.0e-3}},
    "dp0.2_mix0.8": {"model_kwargs": {"drop_path_rate": 0.2},
                     "augment": {"mixup": 0.8, "cutmix": 1.0, "reprob": 0.25}},
}


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


def twin_params(dry: bool) -> dict:
    """The ``fmnist`` profile with the ``gpu`` profile's teacher schedules (pretraining and fine-tuning
    epochs, batches, learning rates, precision, compile): its patch-7 teacher trained to convergence."""
    params, gpu = load_profile("fmnist"), load_profile("gpu")
    params["teacher"]["mode"] = "train"
    for step in ("pretrain", "finetune"):
        params["teacher"][step]["train"] = copy.deepcopy(gpu["teacher"][step]["train"])
    params["data"]["eval_batch_size"] = gpu["data"]["eval_batch_size"]
    return shrink(params) if dry else params


def twin(out: Path, dry: bool) -> dict:
    """The CPU default's teacher architecture by the long recipe (``twin_params``), bundled as
    ``teachers/fmnist_*`` with its card (replacing the committed bundle if adopted: same architecture, same
    file names, so the device call stays under its 64 MiB); the teacher stage's ``train`` mode steps."""
    params, root = twin_params(dry), out / "sweep_twin"
    paths, t0 = config.teacher_paths(root), time.perf_counter()
    for step, key in (("pretrain", "gd"), ("finetune", "sd")):
        cfg = config.teacher_stage_config(params, step, root)
        log(f"twin: fmnist teacher {step}, {cfg['train']['epochs']} epochs")
        (history,) = launch_all([cfg], names=[f"twin {step}"])
        copy_saved(Path(cfg["out_dir"]) / "model.safetensors", paths[key])
    notes = ["the `fmnist` profile's teacher architecture trained by the `gpu` profile's teacher schedules "
             "(benchmarks/gpu_sweep.py twin_params), alongside the `gpu` teacher's sweep on the same GPU"]
    bundled = bundle_teacher(params, root, out / "teachers", prefix="fmnist", notes=notes)
    log(f"twin: bundled, val top-1 {history[-1].get('val_top1', 0):.4f}, test top-1 {bundled['test']['top1']:.4f}")
    return {"val_top1": history[-1].get("val_top1"), "test_top1": bundled["test"]["top1"],
            "files": bundled["files"], "minutes": (time.perf_counter() - t0) / 60}


def sweep(out: Path, dry: bool, concurrent: int) -> dict:
    params = load_profile("gpu")
    params = shrink(params) if dry else params
    root = out / "sweep"
    names, cfgs = sweep_configs(params, root)
    runs = dict(zip(names, cfgs))
    scratch = [n for n in names if n.startswith("scratch")]
    teachers = [n for n in names if n.startswith("teacher")]
    result = {"dry": dry, "minutes": {}, "runs": {}}
    t0 = time.perf_counter()
    # the students from scratch need no teacher: they train alongside the teacher's MAE pretraining,
    # and so does the CPU default's twin teacher
    pool = ThreadPoolExecutor(2)
    alongside = pool.submit(launch_all, [runs[n] for n in scratch], 1, concurrent, names=scratch)
    twin_run = pool.submit(twin, out, dry)
    helpers.extend([alongside, twin_run])
    pool.shutdown(wait=False)
    pre = config.teacher_stage_config(params, "pretrain", root)
    log(f"sweep: teacher MAE pretraining, {pre['train']['epochs']} epochs; {', '.join(scratch)} alongside")
    launch_all([pre], names=["teacher MAE"])
    result["minutes"]["teacher_pretrain"] = (time.perf_counter() - t0) / 60
    t1 = time.perf_counter()
    histories = dict(zip(teachers, launch_all([runs[n] for n in teachers], 1, concurrent, names=teachers)))
    result["minutes"]["teacher_finetune_variants_at_once"] = (time.perf_counter() - t1) / 60
    for name, history in histories.items():
        result["runs"][name] = _summary(runs[name], history, TEACHER_VARIANTS[name.removeprefix("teacher ")])
    best = max(teachers, key=lambda n: result["runs"][n]["val_top1"])
    result["best_teacher_variant"] = best
    log(f"sweep: best teacher {best}, val top-1 {result['runs'][best]['val_top1']:.4f}; bundling it")
    result["teacher_bundle"] = _bundle(params, root, out / "teachers", best, runs[best], teachers)
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    for name, history in zip(scratch, alongside.result()):  # a failure there is raised here
        result["runs"][name] = _summary(runs[name], history, None)
    x1, x2 = (result["runs"][n]["val_top1"] for n in scratch)
    result["scratch_doubling_gain_points"] = 100 * (x2 - x1)
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    log(f"sweep: scratch x2 - x1 = {result['scratch_doubling_gain_points']:+.2f} points of validation top-1")
    result["fmnist_teacher_long_recipe"] = twin_run.result()
    result["minutes"]["total"] = (time.perf_counter() - t0) / 60
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    return result


def _summary(cfg: dict, history: list, overrides) -> dict:
    return {"epochs": cfg["train"]["epochs"], "val_top1": history[-1].get("val_top1"),
            "best_val_top1": max(r.get("val_top1", 0) for r in history),
            "img_per_s": sum(r["img_per_s"] for r in history) / len(history), "overrides": overrides}


def _bundle(params: dict, root: Path, dest: Path, best: str, cfg: dict, tried: list) -> dict:
    """The chosen teacher in the teacher stage's layout under ``root``, then bundled (float16 + card)."""
    chosen = copy.deepcopy(params)
    chosen["teacher"]["finetune"] = config.deep_merge(chosen["teacher"]["finetune"],
                                                      TEACHER_VARIANTS[best.removeprefix("teacher ")])
    paths = config.teacher_paths(root)
    copy_saved(root / "teacher" / "pretrain" / "model.safetensors", paths["gd"])
    copy_saved(Path(cfg["out_dir"]) / "model.safetensors", paths["sd"])
    (root / "teacher" / "finetune").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(cfg["out_dir"]) / "history.json", root / "teacher" / "finetune" / "history.json")
    notes = [f"recipe chosen on the validation split by `benchmarks/gpu_session.py sweep`: fine-tuning variant "
             f"`{best.removeprefix('teacher ')}` of {', '.join(t.removeprefix('teacher ') for t in tried)} "
             f"({len(tried)} runs sharing the machine, so their minutes are wall time under sharing)"]
    out = bundle_teacher(chosen, root, dest, prefix="gpu", notes=notes)
    log(f"sweep: bundled {', '.join(f['path'] for f in out['files'].values())}; test top-1 {out['test']['top1']:.4f}")
    return {"files": out["files"], "test_top1": out["test"]["top1"], "minutes": out["minutes"]}


def dense(out: Path, dry: bool) -> dict:
    """The ``dense`` step (optional): one epoch of each dense teacher (segmentation, detection) from the
    sweep's MAE, at the profile's batch and a larger one: seconds per epoch, to size the dense schedules
    (the sweep trains none)."""
    from g2sd_lib.pipeline import dense_stages
    params = load_profile("gpu")
    params = shrink(params) if dry else params
    root = out / "sweep"
    if not config.teacher_paths(root)["gd"].exists():
        raise SystemExit("dense: run the sweep step first (it leaves the teacher's MAE in sweep/teacher/)")
    dense_stages.build_canvases(params, root)
    result = {}
    for task in config.DENSE_TASKS:
        for batch in (4, 8) if dry else (16, 64):
            cfg = config.dense_stage_config(params, task, "teacher", root)
            cfg["train"].update(epochs=1, warmup_epochs=0, batch_size=batch)
            cfg["out_dir"] = str(root / "dense_probe" / f"{task}_b{batch}")
            (history,) = launch_all([cfg], names=[f"{task} b{batch}"])
            result[f"{task} batch {batch}"] = {k: history[-1].get(k) for k in ("seconds", "img_per_s", "train_loss")}
            log(f"dense: {task} batch {batch}: {history[-1]['seconds']:.1f} s for one epoch")
    result["canvases_per_epoch"] = params["dense"]["data"]["train"]
    (out / "dense_probe.json").write_text(json.dumps(result, indent=1))
    return result
