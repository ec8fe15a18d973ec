"""The GPU work of the `gpu` profile, as one prepared command for a lent GPU (or a CPU dry run).

A GPU session has minutes of device time in all, start-up included, so everything it must do is
here, tried on the CPU first with ``--dry`` (the same code, a few images and one epoch):

* ``bench``: ``benchmarks/throughput.py --device cuda`` on the ``gpu`` and ``paper`` configurations
  (bf16, eager and compiled), the numbers the README and the calibration notes quote;
* ``sweep``: the teacher's recipe and the students' schedule, chosen on the validation split only:
  the profile's MAE pretraining once, then fine-tuning variants of the teacher trained at once
  (``launch_all``, one process each), and, alongside, the student from scratch at the profile's
  schedule and at twice it (the convergence check: doubling moves validation top-1 by < 0.3 points).
  The best variant on validation is bundled there and then (``bundle_teacher``: float16 MAE +
  classifier and their model card, under ``teachers/`` in the archive), so the teacher comes back
  even when the session has no time left for more. Alongside too, the ``fmnist`` profile's own
  (patch 7) teacher architecture is trained by the ``gpu`` profile's long teacher recipe and bundled
  as ``teachers/fmnist_*`` (a drop-in for the bundle the CPU default has): the stronger teacher it
  can afford (the ``gpu`` teacher costs it 5 x per image, benchmarks/candidates/README.md);
* ``dense`` (optional): one epoch of each dense teacher from the sweep's MAE at two batch sizes (seconds
  per epoch, to size the dense schedules, which the sweep does not train);
* ``layer_decay`` and ``kd`` (after ``repro``): settings chosen on the validation split, as the ``fmnist``
  profile's were: the layer decay of the students initialised from a pretrained encoder (G2SD, GD only,
  MAE), and the KD baseline's ``alpha`` and temperature. Seed 0 of each run at every setting of
  ``CHOICES`` other than the profile's own (that one is the repro's seed 0, reused), all at once;
  ``<step>.json`` gives each run's validation top-1 and the setting with the best mean over the runs;
* ``adopt``: the chosen bundle becomes the `gpu` profile's (``adopt_bundle``: ``teachers/``, and
  ``teacher.mode: bundled`` with the sha256 and the chosen variant in ``gpu.yaml``), so that ``repro``
  can follow in the same call; here it adopts from a session's extracted archives;
* ``repro``: the `gpu` profile through DVC, its independent stages at once (``python -m g2sd_lib.pipeline.repro
  gpu``: ``concurrent_stages`` of them, each training ``concurrent_runs`` seeds at once), timed per stage;
  what it made comes back even when the deadline stops it halfway. A dry run does ``adopt`` and
  ``repro`` in a scratch copy of the working tree, with the profile shrunk.

Everything it writes goes under ``--out`` (a working directory), and ``--pack-to`` (``$OUT`` on the
device, which returns at most 8 files of 16 MiB, no more than 2 folders down) keeps archives there:
``gpu_session.tar.gz`` and one ``teachers_<prefix>.tar.gz`` per bundled teacher, renewed every minute
and after each step, so a call cut off at its time limit still returns what was done. ``--deadline-min`` stops
the work (and packs) before the device's own limit kills it. ``cpu_util.csv`` samples the CPU load
every 5 s and, on a GPU, ``gpu_util.csv`` ``nvidia-smi`` every 2 s::

    python benchmarks/gpu_session.py --dry --out /tmp/gs sweep adopt repro bench   # CPU dry run, minutes
    python benchmarks/gpu_session.py --out /tmp/gs --pack-to "$OUT" --deadline-min 8 sweep adopt repro bench   # GPU

``benchmarks/gpu_session.sh`` prepares the device (wheels, data) and calls this.
"""

import argparse
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib.pipeline import config, stages  # noqa: E402
from g2sd_lib.pipeline.profiles import load_profile, shrink  # noqa: E402
from g2sd_lib.pipeline.stages import launch_all  # noqa: E402
from g2sd_lib.pipeline.teacher import _copy_saved, bundle_teacher  # noqa: E402

# Teacher fine-tuning variants tried on the validation split (overrides of teacher.finetune).
TEACHER_VARIANTS = {
    "profile": {},
    "blr5e-4": {"train": {"blr": 5.0e-4}},
    "blr2e-3": {"train": {"blr": 2.0e-3}},
    "dp0.2_mix0.8": {"model_kwargs": {"drop_path_rate": 0.2},
                     "augment": {"mixup": 0.8, "cutmix": 1.0, "reprob": 0.25}},
}

# Settings the layer_decay and kd steps try on seed 0 of the student runs they apply to (the profile's own
# setting too: that one is the repro's seed 0, reused). Layer decay, for the students initialised from a
# pretrained encoder: the official 0.75 is SD.sh's for ViT-S after 300 GD epochs; on the CPU default it held
# the GD student back 2 points at 20 epochs. KD's alpha and temperature (no official KD baseline), the grid the
# CPU default chose from: there 0.9 / 1 came level with G2SD at 20 epochs where 0.5 / 4 stayed below, and 1.0 / 1
# (soft labels only) had the best mean at 2 epochs (benchmarks/README.md, budget probe).
CHOICES = {
    "layer_decay": {"keys": ("layer_decay",), "values": [(0.75,), (0.9,), (None,)],
                    "applies": lambda section: bool(section.get("init"))},
    "kd": {"keys": ("alpha", "temperature"), "values": [(0.5, 4.0), (0.9, 1.0), (0.5, 1.0), (0.9, 4.0),
                                                           (1.0, 1.0), (1.0, 4.0)],
           "applies": lambda section: section.get("kind") == "kd"},
}


# every training process started here, so a stopped session can end them (launch_all ends its own
# when it is interrupted, but not those of a launch_all running in another thread); main() installs it.
# Once the session stops, no new one starts, and the threads' work (the scratch runs, the twin
# teacher) gets a short grace before the last pack.
_children, _helpers, _stopping = [], [], threading.Event()


def _track_children() -> None:
    start = stages._start

    def tracked(*args, **kwargs):
        if _stopping.is_set():
            raise RuntimeError("the GPU session is stopping: no new training process")
        started = start(*args, **kwargs)
        _children.append(started[0])
        return started
    stages._start = tracked


def log(msg: str) -> None:
    print(f"[gpu_session {time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
        _copy_saved(Path(cfg["out_dir"]) / "model.safetensors", paths[key])
    notes = ["the `fmnist` profile's teacher architecture trained by the `gpu` profile's teacher schedules "
             "(benchmarks/gpu_session.py twin_params), alongside the `gpu` teacher's sweep on the same GPU"]
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
    _helpers.extend([alongside, twin_run])
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
    _copy_saved(root / "teacher" / "pretrain" / "model.safetensors", paths["gd"])
    _copy_saved(Path(cfg["out_dir"]) / "model.safetensors", paths["sd"])
    (root / "teacher" / "finetune").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(cfg["out_dir"]) / "history.json", root / "teacher" / "finetune" / "history.json")
    notes = [f"recipe chosen on the validation split by `benchmarks/gpu_session.py sweep`: fine-tuning variant "
             f"`{best.removeprefix('teacher ')}` of {', '.join(t.removeprefix('teacher ') for t in tried)} "
             f"({len(tried)} runs sharing the machine, so their minutes are wall time under sharing)"]
    out = bundle_teacher(chosen, root, dest, prefix="gpu", notes=notes)
    log(f"sweep: bundled {', '.join(f['path'] for f in out['files'].values())}; test top-1 {out['test']['top1']:.4f}")
    return {"files": out["files"], "test_top1": out["test"]["top1"], "minutes": out["minutes"]}


def dense(out: Path, dry: bool) -> dict:
    """One epoch of each dense teacher (segmentation, detection) from the sweep's MAE, at the profile's
    batch and a larger one: seconds per epoch, to size the dense schedules (the sweep trains none)."""
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


def _target_repo(out: Path, dry: bool) -> Path:
    """Where ``adopt`` and ``repro`` work: this repository on the device; in a dry run a scratch copy of
    its working tree (the files git tracks or would track, and the data) in a git repository of its own,
    next to ``out`` so that it is not packed, and this repository stays as it is."""
    if not dry:
        return REPO
    scratch = out.parent / f"{out.name}_dry_repo"
    if not (scratch / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, listed):
            if (REPO / rel).is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, scratch / rel)
        shutil.copytree(REPO / "data", scratch / "data", dirs_exist_ok=True)  # git-ignored, as on the device
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=dry", "-c", "user.email=dry@localhost", "commit", "-qm", "dry run copy"]):
            subprocess.run(cmd, cwd=scratch, check=True)
    return scratch


def _block(lines: list[str], path: tuple[str, ...]) -> tuple[int, int]:
    """The line range ``[first, end)`` of the value of the nested key ``path`` in a YAML file written in
    block style (indent 2), a flow map continued over several lines included."""
    first, end, indent = 0, len(lines), 0
    for key in path:
        for i in range(first, end):
            if re.match(rf"{' ' * indent}{re.escape(key)}:(\s|$)", lines[i]):
                break
        else:
            raise KeyError(".".join(path))
        first, end, indent = i, i + 1, indent + 2
        if "{" in lines[i].split("#")[0]:  # a flow map: up to its closing brace
            depth = 0
            for end in range(i, len(lines)):
                depth += lines[end].split("#")[0].count("{") - lines[end].split("#")[0].count("}")
                if depth == 0:
                    break
            end += 1
        else:  # a block: while the lines are indented deeper (blank and comment lines included)
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * indent)
                                        or lines[end].lstrip().startswith("#")):
                end += 1
    return first, end


def _set(lines: list[str], path: tuple[str, ...], value) -> None:
    """Set the scalar at ``path`` to ``value`` in place, in block or flow style, keeping the line's comment
    in its column where the new value leaves room."""
    text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
    try:  # a key on a line of its own
        first, _ = _block(lines, path)
        key_text = f"{path[-1]}:"
        line = lines[first]
        head, sep, comment = line.partition("  #")
        start = line.index(key_text) + len(key_text)
        new_head = f"{line[:start]} {text}"
        lines[first] = (new_head.ljust(len(head)) + sep + comment) if sep else new_head + "\n"
        return
    except KeyError:
        pass
    first, end = _block(lines, path[:-1])  # a key inside a flow map
    for i in range(first, end):
        body, hash_, comment = lines[i].partition("#")
        replaced, n = re.subn(rf"(?<=[{{,\s]){re.escape(path[-1])}: [^,}}]+", f"{path[-1]}: {text}", body)
        if n:
            lines[i] = replaced + hash_ + comment
            return
    raise KeyError(".".join(path))


def adopt_bundle(src: Path, prefix: str, profile: str, finetune_override: dict, repo: Path = REPO) -> dict:
    """Make a bundled teacher the profile's: ``<prefix>_{mae,classifier}.{safetensors,json}`` and the card
    ``<prefix>.md`` from ``src`` into ``repo/teachers`` (with a row in its index), and in
    ``g2sd_lib/pipeline/profiles/<profile>.yaml`` ``teacher.mode: bundled`` with the files and their sha256, and the
    fine-tuning variant the bundle was trained with merged into ``teacher.finetune`` (so that ``train``
    mode regenerates it). The file is edited line by line, its comments and layout kept; the result must
    parse to exactly the old profile with those changes, or nothing is written."""
    import yaml

    from g2sd_lib.checkpoints.files import sha256_file

    dest, bundled = repo / "teachers", {}
    for role in ("mae", "classifier"):
        weights = src / f"{prefix}_{role}.safetensors"
        sidecar = json.loads((src / f"{prefix}_{role}.json").read_text())
        digest = sha256_file(weights)
        if digest != sidecar["sha256"]:
            raise SystemExit(f"adopt: {weights} has sha256 {digest}, its sidecar says {sidecar['sha256']}")
        bundled[role], bundled[f"{role}_sha256"] = f"teachers/{weights.name}", digest
    path = repo / "g2sd_lib" / "pipeline" / "profiles" / f"{profile}.yaml"
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    _set(lines, ("teacher", "mode"), "bundled")
    for key, value in bundled.items():
        _set(lines, ("teacher", "bundled", key), value)

    def leaves(override, prefix_path=()):
        for key, value in override.items():
            yield from leaves(value, (*prefix_path, key)) if isinstance(value, dict) else [((*prefix_path, key), value)]
    for key_path, value in leaves(finetune_override):
        _set(lines, ("teacher", "finetune", *key_path), value)
    expected = yaml.safe_load(text)
    expected["teacher"]["mode"] = "bundled"
    expected["teacher"]["bundled"].update(bundled)
    expected["teacher"]["finetune"] = config.deep_merge(expected["teacher"]["finetune"], finetune_override)
    if yaml.safe_load("".join(lines)) != expected:
        raise SystemExit(f"adopt: editing {path} line by line did not give the intended profile; edit it by hand: "
                         f"teacher.mode bundled, teacher.bundled {bundled}, teacher.finetune += {finetune_override}")
    for file in _bundles(src)[prefix]:  # the card and the four files, as pack() sends them
        shutil.copyfile(file, dest / file.name)
    path.write_text("".join(lines))
    index = dest / "README.md"
    if f"| `{prefix}` |" not in index.read_text():
        row = (f"| `{prefix}` | [{prefix}.md]({prefix}.md) | the `{profile}` profile (`{expected['teacher']['finetune']['model']}` "
               f"-> `{expected['students']['common']['model']}`) |")
        index.write_text(index.read_text().rstrip("\n") + "\n" + row + "\n")
    return {"profile": str(path.relative_to(repo)), "bundled": bundled, "finetune_override": finetune_override}


def adopt(out: Path, dry: bool) -> dict:
    """The sweep's bundled `gpu` teacher becomes the `gpu` profile's (``adopt_bundle``), so that ``repro``
    can follow in the same session; in a dry run, in the scratch copy."""
    chosen = json.loads((out / "sweep.json").read_text())["best_teacher_variant"].removeprefix("teacher ")
    result = adopt_bundle(out / "teachers", "gpu", "gpu", TEACHER_VARIANTS[chosen], _target_repo(out, dry))
    result["variant"] = chosen
    (out / "adopted.json").write_text(json.dumps(result, indent=1))
    log(f"adopt: teacher variant {chosen} is the gpu profile's bundled teacher ({result['profile']})")
    return result


def setting_probes(params: dict, root: Path, work: Path, choice: str) -> list[dict]:
    """Seed 0 of each student run that ``CHOICES[choice]`` applies to, at its own setting and each of the
    choice's: ``{"run", "setting", "profile_value", "cfg", "reuse"}``, where ``setting`` labels the task
    values (e.g. ``layer_decay=0.9``) and ``reuse`` is the history the pipeline left under ``root`` for
    the profile's own setting (then nothing is trained for it), or None."""
    spec = CHOICES[choice]
    probes = []
    for run, section in params["students"].items():
        if run == "common" or not spec["applies"](section):
            continue
        own = config.stage_config(params, "students", run, root, seed=0)
        own_value, history = tuple(own["task"].get(k) for k in spec["keys"]), Path(own["out_dir"]) / "history.json"
        for value in dict.fromkeys((own_value, *spec["values"])):
            cfg = copy.deepcopy(own)
            cfg["task"].update(zip(spec["keys"], value))
            setting = ",".join(f"{k}={v}" for k, v in zip(spec["keys"], value))
            cfg["out_dir"] = str(work / f"{run}_{setting.replace(',', '_')}")
            probes.append({"run": run, "setting": setting, "profile_value": value == own_value, "cfg": cfg,
                           "reuse": history if value == own_value and history.exists() else None})
    return probes


def choose(out: Path, dry: bool, concurrent: int, choice: str) -> dict:
    """The ``layer_decay`` and ``kd`` steps: the probes of ``setting_probes`` on the profile ``repro`` ran
    (in a dry run, the scratch copy's shrunk one), trained at once; their validation top-1 and, per
    setting, the mean over the runs, in ``<choice>.json``. It reads the validation split only and changes
    no profile."""
    import yaml

    repo = _target_repo(out, dry)
    params = yaml.safe_load((repo / "g2sd_lib" / "pipeline" / "profiles" / "gpu.yaml").read_text())
    probes = setting_probes(params, repo / "runs" / "gpu", out / choice, choice)
    missing = sorted({p["cfg"]["init"] for p in probes if p["cfg"].get("init") and not Path(p["cfg"]["init"]).exists()})
    if missing:
        raise SystemExit(f"{choice}: {', '.join(missing)} missing: run the repro step first (in the same call)")
    todo = [p for p in probes if p["reuse"] is None]
    names = [f"{p['run']} {p['setting']}" for p in todo]
    log(f"{choice}: {len(todo)} runs at once ({'; '.join(names)}); {len(probes) - len(todo)} reused from the pipeline")
    for p, history in zip(todo, launch_all([p["cfg"] for p in todo], 1, concurrent, names=names)):
        p["history"] = history
    rows = []
    for p in probes:
        history = p.get("history") or json.loads(p["reuse"].read_text())
        rows.append({"run": p["run"], "setting": p["setting"], "profile_value": p["profile_value"],
                     "reused": str(p["reuse"].relative_to(repo)) if p["reuse"] else None,
                     "epochs": len(history), "val_top1": history[-1].get("val_top1")})
    means = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        scores = [r["val_top1"] for r in rows if r["setting"] == setting]
        means[setting] = sum(scores) / len(scores)
    best = max(means, key=means.get)
    result = {"dry": dry, "seed": 0, "runs": rows, "mean_val_top1_by_setting": means, "best_setting": best}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{choice}.json").write_text(json.dumps(result, indent=1))
    log(f"{choice}: mean validation top-1 " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()) + f"; best {best}")
    return result


# what repro brings back from the repository it ran in (no checkpoints: histories, reports, the lock)
REPRO_FILES = ("reports/gpu", "reports/README.md", "reports/tables", "dvc.lock", "params.yaml",
               "g2sd_lib/pipeline/profiles/gpu.yaml", "teachers/gpu.md", "teachers/README.md")


def _collect(repo: Path, dest: Path) -> None:
    histories = (repo / "runs" / "gpu").rglob("history.json")  # a stopped repro's finished runs too
    for src in [*(repo / rel for rel in REPRO_FILES), *histories]:
        if src.is_dir():
            shutil.copytree(src, dest / src.relative_to(repo), dirs_exist_ok=True)
        elif src.is_file():
            (dest / src.relative_to(repo)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / src.relative_to(repo))


def _call(cmd: list[str], cwd: Path, env: dict, log_path: Path) -> None:
    """Run ``cmd``, its lines to stdout and to ``log_path``. When the session stops meanwhile (SIGTERM,
    the deadline), the command gets SIGTERM and a moment to stop its own processes (g2sd_lib.pipeline.repro stops
    its stages), unlike subprocess.run, which would SIGKILL it and leave them running."""
    log(" ".join(cmd[1:]))
    with open(log_path, "a") as logf:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                logf.write(line)
            if proc.wait() != 0:
                raise RuntimeError(f"{' '.join(cmd[1:])} failed (exit {proc.returncode}); see {log_path}")
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def repro(out: Path, dry: bool) -> None:
    """The `gpu` profile through DVC with independent stages at once, timed per stage (g2sd_lib.pipeline.repro
    --json, written each time a stage ends), then ``reports/README.md`` (g2sd_lib.pipeline.compare). What it made
    goes to ``out/repro`` even when the session is stopped halfway (``REPRO_FILES`` and every run's history).
    A dry run does it in the scratch copy, with the `gpu` profile shrunk (``shrink``) on this CPU."""
    import yaml

    repo = _target_repo(out, dry)
    if dry:  # the profile the adopt step wrote, shrunk; comments are lost in the scratch copy only
        profile = repo / "g2sd_lib" / "pipeline" / "profiles" / "gpu.yaml"
        shrunk = shrink(yaml.safe_load(profile.read_text()), canvases=(64, 16, 16))  # one full dense batch of 64
        profile.write_text(yaml.safe_dump(shrunk, sort_keys=False))
    here = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *here]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # dvc, papermill
    log_path = out / "repro.log"
    try:
        _call([sys.executable, "-m", "g2sd_lib.pipeline.profiles", "enable", "gpu"], repo, env, log_path)
        # the profile's stages only: the entry notebook is profile-free, and adopting a bundle into teachers/
        # changes its inputs (the `fmnist` stages that read teachers/ are recorded here, not rerun there)
        _call([sys.executable, "-m", "g2sd_lib.pipeline.repro", "gpu", "--targets", "report@gpu", "explore@gpu",
               "--json", str(out / "pipeline_gpu.json"), *(["--allow-cpu"] if dry else [])], repo, env, log_path)
        _call([sys.executable, "-m", "g2sd_lib.pipeline.compare"], repo, env, log_path)  # reports/README.md
    finally:
        _collect(repo, out / "repro")


MIB16 = 16 * 1024 * 1024  # the device returns files from $OUT up to 16 MiB each, at most 8 of them


def _bundles(teachers: Path) -> dict:
    """``{prefix: its files}`` for each teacher bundled in ``teachers`` (card ``<prefix>.md``)."""
    return {card.stem: [card, *(teachers / f"{card.stem}_{role}{ext}" for role in ("mae", "classifier")
                                for ext in (".safetensors", ".json"))]
            for card in sorted(teachers.glob("*.md"))}


def pack(out: Path, dest: Path) -> list[Path]:
    """``out`` into archives in ``dest`` ($OUT on the device, which returns at most 8 files of 16 MiB,
    no more than 2 folders down; so the work itself lives elsewhere): ``gpu_session.tar.gz`` with the
    histories, metrics, logs and reports (no training checkpoints, no bundles) and one
    ``teachers_<prefix>.tar.gz`` per bundled teacher (9 MB for ``gpu``). Each is replaced atomically,
    so a call cut off at its limit keeps the last ones."""
    bundles = _bundles(out / "teachers")
    in_bundle = {f for files in bundles.values() for f in files}
    groups = {"gpu_session": [f for f in sorted(out.rglob("*")) if f.is_file() and f not in in_bundle
                              and f.suffix not in (".pt", ".safetensors", ".partial")
                              and not f.name.endswith(".tar.gz")]}
    groups.update({f"teachers_{prefix}": [f for f in files if f.exists()] for prefix, files in bundles.items()})
    dest.mkdir(parents=True, exist_ok=True)
    archives = []
    for name, files in groups.items():
        archive, partial = dest / f"{name}.tar.gz", dest / f"{name}.partial"
        with tarfile.open(partial, "w:gz") as tar:
            for path in files:
                try:
                    tar.add(path, arcname=str(path.relative_to(out)))
                except OSError:  # a file a run replaced meanwhile: the next pack has it
                    pass
        os.replace(partial, archive)
        if archive.stat().st_size > MIB16:
            log(f"WARNING: {archive.name} is {archive.stat().st_size / 2**20:.1f} MiB, over the 16 MiB the device "
                "returns: it will not come back")
        archives.append(archive)
    return archives


def _every(seconds: float, fn, stop: threading.Event) -> threading.Thread:
    def loop():
        while not stop.wait(seconds):
            fn()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _cpu_sampler(path: Path, t0: float):
    """A function appending ``seconds, cpu %, load average, training processes`` to ``path``."""
    import psutil
    path.write_text("seconds,cpu_percent,load_1min,training_processes\n")
    psutil.cpu_percent()

    def sample():
        runs = sum(p.poll() is None for p in _children)
        with open(path, "a") as f:
            f.write(f"{time.perf_counter() - t0:.0f},{psutil.cpu_percent():.0f},{os.getloadavg()[0]:.1f},{runs}\n")
    return sample


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("steps", nargs="+", choices=["sweep", "dense", "adopt", "bench", "repro", *CHOICES])
    p.add_argument("--out", type=Path, required=True, help="working directory (runs, histories, bundles)")
    p.add_argument("--dry", action="store_true", help="shrunk, for a CPU dry run of the exact steps")
    p.add_argument("--concurrent", type=int, default=6, help="runs trained at once in the sweep, layer_decay and kd (default 6)")
    p.add_argument("--pack-to", type=Path, help="keep --out packed in archives there ($OUT on the device)")
    p.add_argument("--deadline-min", type=float, help="stop (and pack) after this many minutes")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repro").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    # a timeout's SIGTERM (and the deadline) unwinds through the finally below: the runs stop, all is packed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM after {(time.perf_counter() - t0) / 60:.1f} min"))
    deadline = threading.Timer(60 * (args.deadline_min or 0), lambda: os.kill(os.getpid(), signal.SIGTERM))
    deadline.daemon = True
    if args.deadline_min:
        deadline.start()
    _track_children()
    stop = threading.Event()
    if args.pack_to:
        _every(60, lambda: pack(args.out, args.pack_to), stop)
    smi = None
    if shutil.which("nvidia-smi"):
        with open(args.out / "gpu_util.csv", "w") as f:
            smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
                                    "--format=csv", "-l", "2"], stdout=f, stderr=subprocess.DEVNULL)
    _every(5, _cpu_sampler(args.out / "cpu_util.csv", t0), stop)  # are the launch-bound runs short of cores?
    try:
        for step in args.steps:
            s0 = time.perf_counter()
            {"bench": lambda: bench(args.out, args.dry), "sweep": lambda: sweep(args.out, args.dry, args.concurrent),
             "dense": lambda: dense(args.out, args.dry), "adopt": lambda: adopt(args.out, args.dry),
             "repro": lambda: repro(args.out, args.dry),
             **{c: lambda c=c: choose(args.out, args.dry, args.concurrent, c) for c in CHOICES}}[step]()
            log(f"{step}: {(time.perf_counter() - s0) / 60:.1f} min")
            if args.pack_to:
                pack(args.out, args.pack_to)
    finally:
        deadline.cancel()
        stop.set()
        _stopping.set()
        for proc in _children:  # runs a thread started (the sweep's scratch runs), when it was cut short
            if proc.poll() is None:
                proc.terminate()
        if smi is not None:
            smi.terminate()
        wait(_helpers, timeout=30)  # e.g. a bundle being written in a helper thread
        log(f"total {(time.perf_counter() - t0) / 60:.1f} min")
        if args.pack_to:
            for archive in pack(args.out, args.pack_to):
                log(f"packed {archive} ({archive.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
