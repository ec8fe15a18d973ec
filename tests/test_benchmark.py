"""benchmarks/throughput.py end to end on the hidden ``smoke`` config (tiny models, one timed step)."""

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

from g2sd_lib.errors import InputError, run_main
from g2sd_lib.pipeline.profiles import PROFILES


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("throughput")


def test_smoke_run_reports_every_kind(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    returned = bench.main(["--configs", "smoke", "--precisions", "fp32", "--warmup", "1", "--steps", "1",
                           "--peak-n", "256", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    assert data["peak"]["fp32"]["flops"] > 0 and data["peak"]["fp32"]["n"] == 256
    assert data["environment"]["threads"] >= 1

    rows = {r["kind"]: r for r in data["results"]}
    assert sorted(rows) == sorted(bench.STEP_KINDS) and len(data["results"]) == len(bench.STEP_KINDS)
    for kind, r in rows.items():
        assert (r["config"], r["precision"], r["batch"], r["device"], r["compile"]) == ("smoke", "fp32", 8, "cpu", "none")
        assert len(r["step_seconds"]) == 1 and r["img_per_s"] > 0
        if kind == "augment":  # the loader's augmentation alone: no model, no FLOPs
            assert r["trained_model"] is None and r["train_flops_per_img"] == 0
            continue
        assert r["trained_forward_flops"] > 0 and r["pct_of_peak"] > 0
        has_teacher = kind in ("gd", "sd")
        assert (r["frozen_forward_flops"] > 0) == has_teacher
        assert r["train_flops_per_img"] == 3 * r["trained_forward_flops"] + r["frozen_forward_flops"]
    assert rows["mae"]["trained_model"] == "mae_vit_smokebase_patch7_dec32d2b"
    assert rows["gd"]["trained_model"] == "mae_vit_smokesmall_patch7_dec16d1b"

    table = capsys.readouterr().out
    assert ("| config | kind | precision | teacher | compile | batch | img/s | train GFLOP/img | GFLOP/s | % of peak |"
            in table)
    for kind in bench.STEP_KINDS:
        assert f"| smoke | {kind} | fp32 | same | none | 8 |" in table


def test_the_teachers_precision_is_measured_for_the_steps_with_a_teacher(bench):
    data = bench.main(["--configs", "smoke", "--precisions", "fp32", "--kinds", "finetune", "sd", "--warmup", "0",
                       "--steps", "1", "--peak-n", "128", "--teacher-amp", "same", "bf16"])
    assert [(r["kind"], r["teacher_amp"]) for r in data["results"]] == [("finetune", "same"), ("sd", "same"),
                                                                        ("sd", "bf16")]


def test_compiled_steps_are_measured_and_a_missing_gpu_is_named(bench, capsys):
    """The --device cuda path is the CPU path plus synchronisation; without a GPU it says so."""
    data = bench.main(["--configs", "smoke", "--precisions", "fp32", "--kinds", "finetune", "--warmup", "0",
                       "--steps", "1", "--peak-n", "128", "--compile", "none", "default"])
    assert [r["compile"] for r in data["results"]] == ["none", "default"]
    assert all(r["img_per_s"] > 0 for r in data["results"])
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.parse_args(["--device", "cuda"])
        assert "no CUDA device here" in capsys.readouterr().err


def test_rejects_bad_step_count(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])


def test_the_fingerprint_repeats_and_sees_a_changed_recipe(tmp_path, capsys, fmnist_available, monkeypatch):
    """benchmarks/fingerprint.py, the before/after check of a behaviour-neutral edit: the same code
    prints the same lines; a changed learning rate changes the runs it reaches (and only those)."""
    fp = load_benchmark("fingerprint")
    runs, load = [], fp.load_profile
    for section in (None, None, "students", "dense"):
        if section:  # the students' (or the dense runs') recipe changes; the others' does not
            profile = load("smoke")
            profile[section]["common"]["train"]["blr"] = 2e-3
            monkeypatch.setattr(fp, "load_profile", lambda name, p=profile: p)
        fp.main(["--profile", "smoke", "--images", "128"])
        runs.append(dict(line.rsplit(None, 1) for line in capsys.readouterr().out.splitlines()))
    assert runs[0] == runs[1] and len(runs[0]) == 15  # teacher fine-tuning, 2 pretrain runs, 6 students, 2 x 3 dense
    for changed_run, section in ((runs[2], "students"), (runs[3], "dense")):
        changed = {name for name in runs[0] if runs[0][name] != changed_run[name]}
        assert changed == {name for name in runs[0] if name.startswith(section)}


def test_cpu_share_adds_up_the_copies_run_side_by_side(tmp_path, capsys):
    """benchmarks/cpu_share.py: each measurement alone and as 2 copies started together, summed."""
    module = load_benchmark("cpu_share")
    out = tmp_path / "share.json"
    module.main(["--configs", "smoke", "--kinds", "finetune", "sd", "--teacher-amp", "same", "bf16", "--steps", "1",
                 "--warmup", "0", "--procs", "2", "--json", str(out)])
    data = json.loads(out.read_text())
    assert [(r["kind"], r["teacher_amp"]) for r in data["rows"]] == [("finetune", "same"), ("sd", "same"),
                                                                     ("sd", "bf16")]
    assert data["procs"] == [2] and data["environment"]["torch"]
    for row in data["rows"]:
        assert row["alone_img_per_s"] > 0 and row["side_by_side_img_per_s"]["2"] > 0
    assert "| smoke | sd | fp32 | bf16 | none | 8 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        module.main(["--procs", "1"])


def test_budget_probe_orders_runs_by_run_seed_epochs_and_averages_each_over_its_seeds(tmp_path):
    """``--runs kd scratch --seeds 0 1 --epochs 4 8``: one configuration per (run, seed, epochs), each
    with its own seed and directory; the mean and std are taken per (run, epochs) over the seeds."""
    probe = load_benchmark("budget_probe")
    probes = probe.probe_configs(probe.load_profile("smoke"), tmp_path / "runs", tmp_path / "work",
                                 ["kd", "scratch"], [4, 8], [0, 1])
    assert [(run, c["train"]["seed"], c["train"]["epochs"]) for run, c in probes] == [
        (run, seed, n) for run in ("kd", "scratch") for seed in (0, 1) for n in (4, 8)]
    assert len({c["out_dir"] for _, c in probes}) == 8
    rows = [{"run": "kd", "seed": 0, "epochs": 4, "val_top1_last": 0.5},
            {"run": "kd", "seed": 0, "epochs": 8, "val_top1_last": 0.9},
            {"run": "kd", "seed": 1, "epochs": 4, "val_top1_last": 0.7}]
    (kd4, kd8) = probe.over_seeds(rows)
    assert kd4 == {"run": "kd", "epochs": 4, "seeds": [0, 1], "val_top1_last_mean": pytest.approx(0.6),
                   "val_top1_last_std": pytest.approx(0.1414, abs=1e-4)}
    assert kd8["seeds"] == [0] and kd8["val_top1_last_std"] == 0.0


def test_budget_probe_set_changes_an_existing_setting_and_refuses_an_unknown_one():
    """``--set students.common.task.layer_decay=null``: the value read as YAML reaches the run's
    configuration; a misspelt key or a missing ``=`` stops with the expected form."""
    probe = load_benchmark("budget_probe")
    params = probe.with_settings(probe.load_profile("smoke"),
                                 ["students.common.task.layer_decay=null", "students.common.train.blr=2e-3"])
    (_, cfg), = probe.probe_configs(params, Path("runs"), Path("work"), ["gd_only"], [2], [0])
    assert cfg["task"]["layer_decay"] is None and cfg["train"]["blr"] == 2e-3
    for bad in ("students.common.task.layer_decay", "students.common.task.layer_dcay=0.5", "student.common=1"):
        with pytest.raises(InputError, match="KEY=VALUE"):
            probe.with_settings(probe.load_profile("smoke"), [bad])


@pytest.mark.parametrize("argv, message", [
    (["--profile", "fmnst"], "argument --profile: invalid choice: 'fmnst'"),
    (["--runs", "scrach"], "argument --runs: invalid choice: 'scrach' (choose from 'g2sd'"),
    (["--set", "students.common.train.blr=abc"], "students.common.train.blr: wrong type (got 'abc')"),
    (["--set", "students.common.train=[1"], "--set KEY=VALUE: '[1' is not valid YAML (expected ',' or ']'"),
    (["--set", "students.common.train={blr: 1, blr: 2}"], "--set: the key 'blr' is given twice"),
])
def test_budget_probe_refuses_a_bad_profile_run_or_setting_before_any_run(argv, message, tmp_path, capsys):
    probe = load_benchmark("budget_probe")
    teacher = tmp_path / "teacher.json"  # present, so that only the mistake stops the probe
    teacher.write_text(json.dumps({"val_top1": 0.5, "sd": {"sha256": "ab"}}))
    argv = ["--profile", "smoke", "--teacher-json", str(teacher), "--work", str(tmp_path / "w"), *argv]
    with pytest.raises(SystemExit) as e:
        run_main(probe.main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name, argv", [("fingerprint", []), ("frs_sweep", ["--json", "x.json"])])
def test_the_profile_benchmarks_refuse_an_unknown_profile(name, argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(load_benchmark(name).main, ["--profile", "fmnst", *argv])
    err = capsys.readouterr().err
    known = ", ".join(f"'{p}'" for p in PROFILES)
    assert e.value.code == 2 and f"invalid choice: 'fmnst' (choose from {known})" in err


def test_the_frs_sweep_refuses_an_unknown_variant_instead_of_running_none(capsys):
    sweep = load_benchmark("frs_sweep")
    with pytest.raises(SystemExit) as e:
        run_main(sweep.main, ["--json", "x.json", "--variants", "labels-only"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'labels-only'" in err and repr(sweep.VARIANTS[1][0]) in err


def test_budget_probe_trains_the_profile_recipe_longer_and_reads_validation(tmp_path, capsys, fmnist_available):
    """benchmarks/budget_probe.py: the student's own recipe with only the epochs changed, its validation
    curve next to the teacher's validation top-1; a missing teacher result is named."""
    probe = load_benchmark("budget_probe")
    params = probe.load_profile("smoke")
    (run, cfg), = probe.probe_configs(params, tmp_path / "runs", tmp_path / "work", ["scratch"], [3], [1])
    recipe = probe.config.stage_config(params, "students", "scratch", tmp_path / "runs", seed=1)
    assert cfg["train"] == {**recipe["train"], "epochs": 3} and cfg["model"] == recipe["model"]
    assert cfg["out_dir"] == str(tmp_path / "work" / "scratch_e3_seed1")

    teacher = tmp_path / "teacher.json"
    with pytest.raises(SystemExit, match="missing"):
        probe.main(["--profile", "smoke", "--teacher-json", str(teacher)])
    teacher.write_text(json.dumps({"val_top1": 0.5, "sd": {"sha256": "ab"}}))
    out = tmp_path / "probe.json"
    probe.main(["--profile", "smoke", "--epochs", "2", "--work", str(tmp_path / "work"),
                "--teacher-json", str(teacher), "--json", str(out)])
    data = json.loads(out.read_text())
    run, = data["runs"]
    assert data["teacher_val_top1"] == 0.5 and data["profile_student_epochs"] == 1
    assert run["seed"] == 0 and data["mean_over_seeds"] == [
        {"run": "scratch", "epochs": 2, "seeds": [0], "val_top1_last_mean": run["val_top1_last"],
         "val_top1_last_std": 0.0}]
    assert run["epochs"] == 2 and len(run["val_top1_per_epoch"]) == 2
    assert run["val_top1_last"] == run["val_top1_per_epoch"][-1]
    assert run["val_top1_best"] == max(run["val_top1_per_epoch"])
    assert "validation top-1 50.00 %" in capsys.readouterr().out


def test_pipeline_time_refuses_a_profile_it_cannot_measure_before_starting_dvc(monkeypatch, tmp_path, capsys):
    """An unknown or unlisted --profile stops with the fix; a listed one without targets measures what
    ``make repro P=...`` reproduces (an ignored --profile once started a bare ``dvc repro`` of every stage)."""
    timer = load_benchmark("pipeline_time")
    started = []
    monkeypatch.setattr(timer, "measure", lambda cmd, record: started.append(cmd) or
                        {"returncode": 0, "total_seconds": 1.0, "peak_rss_mb": 1.0, "stages": []})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profiles: [smoke]\n")
    for argv, said in ((["--profile", "nope"], "invalid choice: 'nope'"),
                       (["--profile", "gpu"], "python -m g2sd_lib.pipeline.profiles enable gpu"),
                       (["--jobs", "2"], "--jobs > 1 needs --profile")):
        with pytest.raises(SystemExit) as e:
            timer.main(argv)
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert not started
    with pytest.raises(SystemExit) as e:
        timer.main(["--profile", "smoke"])
    assert e.value.code == 0 and started[-1][1:] == ["repro", "report@smoke", "explore@smoke", "entry"]
    with pytest.raises(SystemExit):
        timer.main(["--profile", "smoke", "--jobs", "2", "--force"])
    assert started[-1][started[-1].index("--targets") + 1:][:3] == ["report@smoke", "explore@smoke", "entry"]
