"""The GPU-side code paths, run on the CPU: deferred loss read-back, torch.compile (CUDA graphs fall
back to the default mode), batches built on the training device, several runs at once, and the
whole `gpu` profile shrunk (its models, its recipe kinds, every stage kind, dense included)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import load_benchmark

from g2sd_lib import checkpoints, data, device, engine
from g2sd_lib.pipeline import config, stages
from g2sd_lib.pipeline import dense_stages
from g2sd_lib.engine import train
from g2sd_lib.train_config import TrainConfig
from g2sd_lib.errors import UserError
from g2sd_lib.evaluate import count_params
from g2sd_lib.models import create_classifier, create_mae
from g2sd_lib.pipeline.profiles import load_profile, load_profile_file, shrink
from g2sd_lib.pipeline.results import DENSE_METRICS
from g2sd_lib.pipeline.schema import validate_params
from g2sd_lib.tasks import Finetuning
from g2sd_lib.pipeline.teacher import obtain_teacher

from test_engine import _ExplodingTask


def _tiny_finetune(seed=0):
    torch.manual_seed(seed)
    model = create_classifier("vit_smokesmall_patch7", "avg", 10)
    g = torch.Generator().manual_seed(seed)
    loader = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(10, (16,), generator=g)) for _ in range(6)]
    return Finetuning(model, smoothing=0.1), loader


def test_deferred_read_back_sums_the_same_losses_and_still_names_the_nan_step(tmp_path, monkeypatch):
    cfg = dict(epochs=2, batch_size=16, blr=1e-3, amp="none", progress=False)
    task, loader = _tiny_finetune()
    every_step = train(task, loader, TrainConfig(out_dir=str(tmp_path / "a"), **cfg))
    monkeypatch.setattr(engine, "host_sync_every", lambda device: 4)  # what CUDA gets (25 there)
    task, loader = _tiny_finetune()
    deferred = train(task, loader, TrainConfig(out_dir=str(tmp_path / "b"), **cfg))
    for a, b in zip(every_step, deferred):
        assert a["train_loss"] == b["train_loss"] and a["train_ce"] == b["train_ce"]
    nan_loader = [(torch.randn(8, 4), torch.zeros(8)) for _ in range(6)]
    with pytest.raises(FloatingPointError, match=r"step 3 .*mse=nan"):
        train(_ExplodingTask(), nan_loader, TrainConfig(out_dir=str(tmp_path / "c"), **{**cfg, "batch_size": 8}))


def test_compiled_step_matches_eager_and_cuda_graphs_fall_back_on_cpu(tmp_path, capsys):
    cfg = dict(epochs=1, batch_size=16, blr=1e-3, amp="none", progress=False)
    task, loader = _tiny_finetune()
    eager = train(task, loader, TrainConfig(out_dir=str(tmp_path / "eager"), **cfg))
    task, loader = _tiny_finetune()
    compiled = train(task, loader, TrainConfig(out_dir=str(tmp_path / "graphs"), compile="reduce-overhead", **cfg))
    assert "needs a CUDA device; compiling with mode 'default' on cpu" in capsys.readouterr().out
    assert compiled[-1]["train_loss"] == pytest.approx(eager[-1]["train_loss"], rel=1e-4)
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(out_dir="x", compile="max-speed", **cfg).validate()


def test_a_loader_builds_and_augments_batches_on_its_device():
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(20)
    transform = data.Compose([data.RandomResizedCropFlip(28, (0.5, 1.0)), data.RandomErasing(0.5)])
    plain = data.TensorLoader(images, labels, 8, True, True, seed=1, transform=transform)
    placed = data.TensorLoader(images, labels, 8, True, True, seed=1, transform=transform, device="cpu")
    for (x, y), (x2, y2) in zip(plain, placed):  # the random draws do not depend on the device
        assert x2.device.type == "cpu" and torch.equal(x, x2) and torch.equal(y, y2)


def _stage(tmp_path, name, seed, epochs=2):
    return {"kind": "finetune", "model": "vit_smokesmall_patch7", "out_dir": str(tmp_path / name / f"seed{seed}"),
            "data": {"dataset": "fmnist", "val_size": 64, "train_subset": 128, "val_subset": 64,
                     "eval_batch_size": 64},
            "augment": {"crop_scale": [0.5, 1.0], "mixup": 0.8, "smoothing": 0.1},
            "train": {"epochs": epochs, "batch_size": 32, "blr": 1e-3, "amp": "none", "seed": seed,
                      "progress": False, "device": "cpu"}}


def test_concurrent_runs_give_the_sequential_results_and_name_a_failure(tmp_path, fmnist_available, capsys):
    one_by_one = stages.launch_all([_stage(tmp_path / "seq", "r", s) for s in (0, 1)])
    at_once = stages.launch_all([_stage(tmp_path / "par", "r", s) for s in (0, 1)], concurrent=2,
                                names=["seed 0", "seed 1"])
    for a, b in zip(one_by_one, at_once):
        assert [r["val_top1"] for r in a] == [r["val_top1"] for r in b]
        assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-5)
    out = capsys.readouterr().out
    assert "[seed 1] epoch 2/2:" in out and "[seed 0] epoch 1/2:" in out
    bad = _stage(tmp_path / "bad", "r", 1)
    bad["train"]["epcohs"] = 3
    with pytest.raises(UserError, match=r"(?s)run seed1 failed \(exit 2\).*train.epcohs: unknown key"):
        stages.launch_all([_stage(tmp_path / "bad", "r", 0, epochs=1), bad], concurrent=2)
    with pytest.raises(UserError, match="not both"):
        stages.launch_all([bad, bad], nproc=2, concurrent=2)


def _shrunk_gpu_profile() -> dict:
    """The `gpu` profile with its models, kinds and options, on a few images for one epoch (no compile:
    test_compiled_step_* covers it)."""
    params = shrink(load_profile("gpu"), images=64, batch=32, canvases=(8, 4, 4), progress=False,
                                   device="cpu")
    params["seeds"] = params["dense"]["seeds"] = [0]
    params["dense"]["common"]["train"]["batch_size"] = 4
    params["dense"]["data"]["eval_batch_size"] = 4
    return params


def test_the_gpu_profile_runs_every_stage_shrunk_on_cpu(tmp_path, fmnist_available):
    params = _shrunk_gpu_profile()
    teacher = obtain_teacher(params, tmp_path)  # mode train: MAE pretraining + fine-tuning
    assert teacher["gd"]["model"] == "mae_vit_fmlarge_patch4_dec96d4b"
    for run in config.PRETRAIN_RUNS:
        stages.run_stage(config.stage_config(params, "pretrain", run, tmp_path))
    for run in config.STUDENTS:
        history = stages.run_stage(config.stage_config(params, "students", run, tmp_path, seed=0))
        assert 0 <= history[-1]["val_top1"] <= 1
    student = create_classifier(params["students"]["common"]["model"], "avg", 10)
    teacher_model = create_classifier(params["teacher"]["finetune"]["model"], "avg", 10)
    assert 0.2 < count_params(student) / count_params(teacher_model) < 0.3  # ViT-S / ViT-B: 22 M / 86 M
    assert student.patch_embed.grid_size == (7, 7)
    dense_stages.build_canvases(params, tmp_path)
    for task in config.DENSE_TASKS:
        for run, seed in (("teacher", None), ("g2sd", 0), ("gd_only", 0)):
            history = stages.run_stage(config.dense_stage_config(params, task, run, tmp_path, seed=seed))
            assert f"val_{DENSE_METRICS[task]}" in history[-1]
    assert json.loads((tmp_path / "dense/detection/g2sd/seed0/history.json").read_text())


def test_the_gpu_profiles_teacher_pair_fits_the_10_mb_float16_bundle(tmp_path):
    """The issue's budget for a bundled teacher: MAE with decoder + classifier, float16, within 10 MB."""
    teacher = load_profile("gpu")["teacher"]
    models = {"mae": create_mae(teacher["pretrain"]["model"]),
              "classifier": create_classifier(teacher["finetune"]["model"], "avg", 10)}
    size = 0
    for name, model in models.items():
        checkpoints.save_model(model, tmp_path / f"{name}.safetensors", dtype=torch.float16)
        size += sum((tmp_path / f"{name}{ext}").stat().st_size for ext in (".safetensors", ".json"))
    assert 8e6 < size < 10e6  # 9.0 MB: a ViT-B-role teacher as large as the budget allows


def test_the_gpu_session_sweep_is_made_of_valid_stage_configurations(tmp_path):
    """benchmarks/gpu_session.py runs on a GPU only; its sweep's configurations are checked here."""
    from g2sd_lib.pipeline import schema
    session = load_benchmark("gpu_sweep")
    for params in (load_profile("gpu"), shrink(load_profile("gpu"))):
        names, cfgs = session.sweep_configs(params, tmp_path)
        assert len({c["out_dir"] for c in cfgs}) == len(cfgs) == len(session.TEACHER_VARIANTS) + 2
        for cfg in cfgs:
            schema.validate_stage(cfg)
        x1, x2 = cfgs[-2:]
        assert x2["train"]["epochs"] == 2 * x1["train"]["epochs"] and x1["kind"] == "finetune"
    twin = session.twin_params(dry=False)  # the CPU default's teacher by the gpu teacher's schedules
    fmnist, gpu = load_profile("fmnist"), load_profile("gpu")
    for step in ("pretrain", "finetune"):
        cfg = config.teacher_stage_config(twin, step, tmp_path)
        schema.validate_stage(cfg)
        assert cfg["model"] == fmnist["teacher"][step]["model"] and cfg["train"] == gpu["teacher"][step]["train"]
    shrunk = shrink(load_profile("gpu"))
    for task in ("segmentation", "detection"):  # every dense run of the dry run takes one epoch too
        for run, seed in (("teacher", None), ("g2sd", 0)):
            assert config.dense_stage_config(shrunk, task, run, tmp_path, seed=seed)["train"]["epochs"] == 1


def test_the_gpu_session_returns_only_archives_each_bundle_apart(tmp_path):
    """The device returns at most 8 files of 16 MiB from $OUT: the work stays in --out, only archives go
    to --pack-to, training checkpoints stay out, and each bundled teacher travels in its own archive."""
    import tarfile
    session = load_benchmark("gpu_session")
    work, dest = tmp_path / "work", tmp_path / "OUT"
    for rel in ("sweep.json", "sweep/scratch/x1/history.json", "sweep/scratch/x1/last.pt",
                "sweep/teacher/mae.safetensors", "teachers/gpu.md", "teachers/gpu_mae.safetensors",
                "teachers/gpu_mae.json", "teachers/gpu_classifier.safetensors", "teachers/gpu_classifier.json",
                "teachers/fmnist.md", "teachers/fmnist_mae.safetensors"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(rel)
    archives = session.pack(work, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in archives) == [
        "gpu_session.tar.gz", "teachers_fmnist.tar.gz", "teachers_gpu.tar.gz"]
    names = {p.name: sorted(tarfile.open(p).getnames()) for p in archives}
    assert names["gpu_session.tar.gz"] == ["sweep.json", "sweep/scratch/x1/history.json"]
    assert names["teachers_gpu.tar.gz"] == sorted(f"teachers/gpu{f}" for f in (
        ".md", "_mae.safetensors", "_mae.json", "_classifier.safetensors", "_classifier.json"))
    assert names["teachers_fmnist.tar.gz"] == ["teachers/fmnist.md", "teachers/fmnist_mae.safetensors"]
    session.pack(work, dest)  # repacking replaces them
    assert len(list(dest.iterdir())) == 3


def _fake_bundle(src, prefix):
    import hashlib
    src.mkdir(parents=True, exist_ok=True)
    (src / f"{prefix}.md").write_text("# card")
    for role in ("mae", "classifier"):
        (src / f"{prefix}_{role}.safetensors").write_bytes(role.encode())
        digest = hashlib.sha256(role.encode()).hexdigest()
        (src / f"{prefix}_{role}.json").write_text(json.dumps({"sha256": digest}))


def test_the_gpu_session_adopts_the_chosen_teacher_into_the_profile_keeping_its_comments(tmp_path):
    """After the sweep, the session (or its user, from the archive) makes the bundled teacher the `gpu`
    profile's: bundled mode, files and sha256 pinned, the chosen fine-tuning variant in the recipe, every
    other line of the hand-written profile untouched; a bundle whose file does not match its sidecar is refused."""
    import hashlib
    import shutil
    from pathlib import Path
    import yaml
    session = load_benchmark("gpu_adopt")
    root = Path(__file__).resolve().parents[1]
    original = (root / "g2sd_lib/pipeline/profiles/gpu.yaml").read_text()
    for variant, override in load_benchmark("gpu_sweep").TEACHER_VARIANTS.items():
        repo = tmp_path / variant
        (repo / "g2sd_lib/pipeline/profiles").mkdir(parents=True)
        (repo / "teachers").mkdir()
        (repo / "g2sd_lib/pipeline/profiles/gpu.yaml").write_text(original)
        shutil.copyfile(root / "g2sd_lib/pipeline/profiles/base.yaml", repo / "g2sd_lib/pipeline/profiles/base.yaml")
        shutil.copyfile(root / "teachers/README.md", repo / "teachers/README.md")
        _fake_bundle(tmp_path / "src", "gpu")
        session.adopt_bundle(tmp_path / "src", "gpu", "gpu", override, repo)
        edited = (repo / "g2sd_lib/pipeline/profiles/gpu.yaml").read_text()
        params = yaml.safe_load(edited)
        schema_ok = validate_params(load_profile_file(repo / "g2sd_lib/pipeline/profiles/gpu.yaml"), "gpu.yaml")
        teacher = schema_ok["teacher"]
        assert teacher["mode"] == "bundled" and teacher["bundled"]["mae"] == "teachers/gpu_mae.safetensors"
        assert teacher["bundled"]["classifier_sha256"] == hashlib.sha256(b"classifier").hexdigest()
        assert params["teacher"]["finetune"] == config.deep_merge(yaml.safe_load(original)["teacher"]["finetune"], override)
        changed = [(a, b) for a, b in zip(original.splitlines(), edited.splitlines()) if a != b]
        assert len(edited.splitlines()) == len(original.splitlines()) and 5 <= len(changed) <= 7, changed
        assert all(a.split("#", 1)[1:] == b.split("#", 1)[1:] for a, b in changed)  # comments kept
        assert (repo / "teachers/gpu_classifier.safetensors").read_bytes() == b"classifier"
        assert "| `gpu` | [gpu.md](gpu.md) | the `gpu` profile" in (repo / "teachers/README.md").read_text()
    (tmp_path / "src/gpu_mae.safetensors").write_bytes(b"other")
    with pytest.raises(SystemExit, match="sidecar"):
        session.adopt_bundle(tmp_path / "src", "gpu", "gpu", {}, tmp_path / "profile")


def test_the_gpu_session_adopts_a_partial_sweep_only_if_its_chosen_variant_finished(tmp_path):
    """A session stopped mid-sweep: no sweep.json (stopped before the variants finished) or a chosen
    variant whose history falls short of its epochs is refused before anything is touched; so is a
    bundle with a file missing; a finished variant is named."""
    adopt = load_benchmark("gpu_adopt")
    out = tmp_path / "D"
    out.mkdir()
    with pytest.raises(SystemExit, match="stopped before its teacher variants finished"):
        adopt.adopt(out, False)
    history = out / "sweep/teacher_finetune/blr5e-4/history.json"
    history.parent.mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"best_teacher_variant": "teacher blr5e-4",
                                                "runs": {"teacher blr5e-4": {"epochs": 3}}}))
    with pytest.raises(SystemExit, match="did not finish.*0 of 3"):  # its history is not there
        adopt.adopt(out, False)
    history.write_text(json.dumps([{"val_top1": 0.5}] * 2))
    with pytest.raises(SystemExit, match="did not finish.*2 of 3"):
        adopt.adopt(out, False)
    history.write_text(json.dumps([{"val_top1": 0.5}] * 3))
    assert adopt.finished_variant(out) == "blr5e-4"
    _fake_bundle(out / "teachers", "gpu")
    (out / "teachers/gpu_classifier.json").unlink()
    with pytest.raises(SystemExit, match="gpu_classifier.json missing.*teachers_gpu.tar.gz"):
        adopt.adopt_bundle(out / "teachers", "gpu", "gpu", {}, tmp_path / "repo")


STOPPED_SESSION = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import gpu_common, gpu_session

def sweep(out, dry, concurrent):  # a sweep half done: a result written, a training process running
    (out / "sweep").mkdir()
    (out / "sweep/history.json").write_text("[]")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    gpu_common.children.append(child)
    print("child", child.pid, flush=True)
    time.sleep(120)

gpu_session.sweep = sweep
gpu_session.main(sys.argv[2:])
"""


@pytest.mark.parametrize("stop", ["deadline", "SIGTERM"])
def test_a_gpu_session_stopped_mid_sweep_returns_its_archives_and_ends_its_runs(tmp_path, stop):
    """The deadline (--deadline-min) or the device's SIGTERM in the middle of the sweep: the session
    stops with a message, ends the training processes it started, and packs what was done."""
    import signal
    import tarfile
    import time
    from pathlib import Path
    import psutil
    script = tmp_path / "stopped.py"
    script.write_text(STOPPED_SESSION)
    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    args = [sys.executable, str(script), str(bench_dir), "--out", str(tmp_path / "work"),
            "--pack-to", str(tmp_path / "OUT"), "sweep", *(["--deadline-min", "0.1"] if stop == "deadline" else [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = None
    for line in proc.stdout:
        if line.startswith("child "):
            child = int(line.split()[1])
            break
    if stop == "SIGTERM":
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped by SIGTERM" in err, err
    with tarfile.open(tmp_path / "OUT/gpu_session.tar.gz") as tar:
        assert "sweep/history.json" in tar.getnames()
    assert child is not None
    try:
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def test_the_gpu_session_brings_back_what_a_stopped_repro_made(tmp_path):
    """repro's results come back without checkpoints, also from a pipeline stopped halfway."""
    session = load_benchmark("gpu_repro")
    repo, dest = tmp_path / "repo", tmp_path / "out"
    for rel in ("dvc.lock", "reports/gpu/summary.json", "runs/gpu/students/g2sd/seed0/history.json",
                "runs/gpu/students/g2sd/seed0/model.safetensors", "teachers/gpu.md"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(rel)
    session._collect(repo, dest)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["dvc.lock", "reports/gpu/summary.json", "runs/gpu/students/g2sd/seed0/history.json", "teachers/gpu.md"]


def test_the_gpu_session_chooses_the_students_settings_on_validation(tmp_path, monkeypatch):
    """The layer_decay and kd steps, after repro: seed 0 of every run they apply to (layer decay: G2SD,
    GD only and MAE, initialised from a pretrain run; kd: the KD baseline) at the profile's setting and
    each other one, as valid stage configurations in their own directories; the profile's setting reused
    from the pipeline's history where it has one; the setting with the best mean validation top-1 named.
    Without the pipeline's encoders the layer_decay step stops first."""
    import shutil
    from pathlib import Path
    from g2sd_lib.pipeline import schema
    session = load_benchmark("gpu_choose")
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "g2sd_lib/pipeline/profiles").mkdir(parents=True)
    for name in ("gpu.yaml", "base.yaml"):
        shutil.copyfile(Path(__file__).resolve().parents[1] / "g2sd_lib/pipeline/profiles" / name, repo / "g2sd_lib/pipeline/profiles" / name)
    monkeypatch.setattr(session, "target_repo", lambda out, dry: repo)
    with pytest.raises(SystemExit, match="run the repro step first"):
        session.choose(out, False, 6, "layer_decay")
    runs = repo / "runs/gpu"
    for init in ("gd", "mae_student"):
        (runs / "pretrain" / init).mkdir(parents=True)
        (runs / "pretrain" / init / "model.safetensors").write_bytes(b"")
    for run in ("g2sd", "kd"):  # the pipeline's seed 0 of G2SD and KD; GD only and MAE have none yet
        (runs / f"students/{run}/seed0").mkdir(parents=True)
        (runs / f"students/{run}/seed0/history.json").write_text(json.dumps([{"val_top1": 0.5}, {"val_top1": 0.8}]))
    trained = []

    def fake_launch_all(cfgs, nproc, concurrent, names):
        for cfg in cfgs:
            schema.validate_stage(cfg)
            assert cfg["train"]["seed"] == 0
        trained.extend(cfgs)
        return [[{"val_top1": val_top1(cfg)}] for cfg in cfgs]

    def val_top1(cfg):  # the winners: KD at alpha 0.9 and temperature 1, the others without layer decay
        task = cfg["task"]
        if cfg["kind"] == "kd":
            return 0.9 if (task["alpha"], task["temperature"]) == (0.9, 1.0) else 0.7
        return 0.9 if task["layer_decay"] is None else 0.7
    monkeypatch.setattr(session, "launch_all", fake_launch_all)

    result = session.choose(out, False, 6, "layer_decay")
    assert len(trained) == 8 and len({c["out_dir"] for c in trained}) == 8  # 3 runs x 3 values, one reused
    assert all(Path(c["out_dir"]).parent == out / "layer_decay" for c in trained)
    assert all(c["init"].startswith(str(runs / "pretrain")) for c in trained)
    reused = [r for r in result["runs"] if r["reused"]]
    assert [(r["run"], r["setting"], r["val_top1"]) for r in reused] == [("g2sd", "layer_decay=0.75", 0.8)]
    assert {r["run"] for r in result["runs"]} == {"g2sd", "gd_only", "mae"}
    assert result["mean_val_top1_by_setting"] == pytest.approx(
        {"layer_decay=0.75": 2.2 / 3, "layer_decay=0.9": 0.7, "layer_decay=None": 0.9})
    assert result["best_setting"] == "layer_decay=None"
    assert json.loads((out / "layer_decay.json").read_text()) == result

    trained.clear()
    result = session.choose(out, False, 6, "kd")
    assert {c["kind"] for c in trained} == {"kd"} and len(trained) == 5  # 6 settings, the profile's reused
    assert {(c["task"]["alpha"], c["task"]["temperature"]) for c in trained} == {(0.9, 1.0), (0.5, 1.0), (0.9, 4.0),
                                                                                (1.0, 1.0), (1.0, 4.0)}
    assert [r["setting"] for r in result["runs"] if r["reused"]] == ["alpha=0.5,temperature=4.0"]
    assert result["best_setting"] == "alpha=0.9,temperature=1.0"
    assert json.loads((out / "kd.json").read_text()) == result


def test_processes_at_once_share_the_cpu_cores(monkeypatch):
    """Each of the runs trained at once (seeds of a stage, stages under g2sd_lib.pipeline.repro) gets the cores
    divided among all of them, as torchrun caps its workers, on a GPU machine and on a CPU alike."""
    env = {}
    assert device.cpu_threads(env, 1, cores=16) is None  # one process: torch's default
    assert device.cpu_threads(env, 3, cores=16) == 5
    assert device.cpu_threads({"G2SD_CONCURRENT_STAGES": "4"}, 3, cores=16) == 1  # 4 stages x 3 runs
    assert device.cpu_threads({"G2SD_CONCURRENT_STAGES": "2"}, 1, cores=2) == 1  # fmnist on 2 cores
    assert device.cpu_threads({"G2SD_CONCURRENT_STAGES": "4"}, 3, cores=2) == 1  # never below 1
    assert device.cpu_threads({"OMP_NUM_THREADS": "7", "G2SD_CONCURRENT_STAGES": "4"}, 3, cores=16) is None
    assert device.cpu_threads({"G2SD_STAGE_THREADS": "8", "OMP_NUM_THREADS": "8"}, 3, cores=16) == 2  # a stage's share
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("G2SD_CONCURRENT_STAGES", "2")
    assert stages._run_env(1)["OMP_NUM_THREADS"] == str(device.cpu_threads({"G2SD_CONCURRENT_STAGES": "2"}))
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's setting wins
    assert stages._run_env(3)["OMP_NUM_THREADS"] == "7"


def test_a_stage_started_among_others_takes_its_share_of_the_threads(tmp_path):
    """The notebook runner that g2sd_lib.pipeline.repro starts next to another stage gives the notebook's kernel
    its share of the threads, and the runs that notebook starts divide it; ``import g2sd_lib`` caps nothing."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "G2SD_CONCURRENT_STAGES", "G2SD_STAGE_THREADS")}

    def threads(code, **extra):
        out = subprocess.run([sys.executable, "-c", f"{code}; print(torch.get_num_threads())"],
                             env={**env, **extra}, capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert threads("import torch, g2sd_lib", G2SD_CONCURRENT_STAGES="64") == threads("import torch")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, torch\nfrom g2sd_lib.pipeline.stages import _run_env\n"
        "print(torch.get_num_threads(), _run_env(3)['OMP_NUM_THREADS'])")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "threads.ipynb")
    done = subprocess.run([sys.executable, "-m", "g2sd_lib.pipeline.notebook_runner", "none", tmp_path / "threads.ipynb",
                           tmp_path / "out" / "threads.ipynb"], env={**env, "G2SD_CONCURRENT_STAGES": "2"},
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    printed = nbformat.read(tmp_path / "out" / "threads.ipynb", as_version=4).cells[0].outputs[0]["text"].split()
    share = device.cpu_threads({"G2SD_CONCURRENT_STAGES": "2"})
    assert printed == [str(share or torch.get_num_threads()), str(max(1, (share or 1) // 3))]
