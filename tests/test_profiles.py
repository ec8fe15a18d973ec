"""The configuration presets: complete, commented, consistent with the code that reads them."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from g2sd_lib.pipeline import notebook_runner
from g2sd_lib.pipeline.config import PRETRAIN_RUNS, STUDENTS, stage_config, teacher_stage_config
from g2sd_lib.train_config import TrainConfig
from g2sd_lib.pipeline.profiles import (BASE, PROFILES, STATED, complete, enable, enabled_profiles, load_profile, output_dirs, profile_path, set_profiles)

REPO = Path(__file__).resolve().parents[1]
KEY_WITH_VALUE = re.compile(r"^\s*[\w.]+:\s*\S")


def test_params_yaml_lists_the_committed_profiles_the_default_first():
    assert enabled_profiles(REPO / "params.yaml")[0] == "fmnist"


CANDIDATE = REPO / "benchmarks" / "candidates" / "fmnist_patch4.yaml"


@pytest.mark.parametrize("name", [*PROFILES, "base", "candidate"])
def test_every_value_is_commented(name):
    path = {"candidate": CANDIDATE, "base": BASE}.get(name) or profile_path(name)
    lines = path.read_text().splitlines()
    depth = 0  # inside a flow mapping spread over several lines, the comment is on its first line
    for i, line in enumerate(lines):
        code = line.split("#")[0]
        if depth == 0 and KEY_WITH_VALUE.match(line) and "#" not in line:
            assert lines[i - 1].lstrip().startswith("#"), f"{name}.yaml line {i + 1} has no comment: {line!r}"
        depth += code.count("{") - code.count("}")


@pytest.mark.parametrize("name", PROFILES)
def test_every_run_builds_a_valid_stage_config(name):
    params = load_profile(name)
    assert set(params["pretrain"]) - {"common"} == set(PRETRAIN_RUNS)
    assert set(params["students"]) - {"common"} == set(STUDENTS)
    configs = [stage_config(params, "pretrain", r) for r in PRETRAIN_RUNS]
    configs += [stage_config(params, "students", r, seed=s) for r in STUDENTS for s in params["seeds"]]
    configs += [teacher_stage_config(params, step) for step in ("pretrain", "finetune")]
    for cfg in configs:
        TrainConfig(out_dir=cfg["out_dir"], **cfg["train"]).validate()
    g2sd = stage_config(params, "students", "g2sd", seed=0)
    assert g2sd["init"].endswith("runs/pretrain/gd/model.safetensors")
    assert g2sd["teacher"].endswith("runs/teacher/classifier.safetensors")
    assert g2sd["out_dir"].endswith("runs/students/g2sd/seed0")


def test_paper_profile_has_the_official_recipe():
    p = load_profile("paper")
    gd = stage_config(p, "pretrain", "gd")
    assert gd["model"] == "mae_vit_small_patch16_dec256d4b" and gd["task"]["target_block"] == 4
    assert gd["train"]["batch_size"] * gd["train"]["accum_steps"] * p["nproc"] == 4096
    assert gd["train"]["blr"] == 1.5e-4 and gd["train"]["epochs"] == 300 and gd["train"]["min_lr"] == 2.5e-6
    sd = stage_config(p, "students", "g2sd", seed=0)
    assert sd["train"]["batch_size"] * p["nproc"] == 1024 and sd["train"]["epochs"] == 200
    assert sd["task"]["layer_decay"] == 0.75 and sd["augment"]["mixup"] == 0.8 and sd["augment"]["cutmix"] == 1.0
    assert p["teacher"]["mode"] == "download"
    assert p["teacher"]["download"]["gd"] == "mae_pretrain_vit_base_full.pth"


def test_complete_and_the_pipeline_profiles(tmp_path):
    students = load_profile("fmnist")["students"]
    filled = complete("smoke", data=None, students=students)
    assert filled["data"] == load_profile("smoke")["data"] and filled["students"] is students
    with pytest.raises(ValueError, match=r"students\.x: wrong type"):  # the sections are validated
        complete("smoke", data=None, students={"x": 1})
    params = tmp_path / "params.yaml"
    params.write_text("# which profiles\nprofiles: [fmnist]\n")
    assert enable("gpu", params) and not enable("gpu", params)
    assert enabled_profiles(params) == ["fmnist", "gpu"] and params.read_text().startswith("# which profiles\n")
    set_profiles(["smoke"], params)
    assert enabled_profiles(params) == ["smoke"]
    assert output_dirs("gpu") == (Path("runs/gpu"), Path("reports/gpu"))
    for bad in (lambda: load_profile("huge"), lambda: enable("huge", params)):
        with pytest.raises(ValueError, match="unknown profile"):
            bad()


def test_a_misspelt_profile_is_named_with_the_choices_before_any_work(tmp_path, capsys):
    """`python -m g2sd_lib.pipeline.profiles enable fmnst` (what `make repro P=fmnst` runs) and `make repro P=fmnst`
    itself: the name and the choices, and make stops before `make data`."""
    from g2sd_lib.errors import InputError, run_main
    from g2sd_lib.pipeline.profiles import main
    with pytest.raises(InputError, match="unknown profile 'huge'"):
        profile_path("huge")
    with pytest.raises(SystemExit) as e:
        run_main(main, ["enable", "fmnst"])
    assert e.value.code == 2 and (f"unknown profile 'fmnst' (make repro P=...): choose one of {', '.join(PROFILES)}"
                                  in capsys.readouterr().err)
    if shutil.which("make"):
        # a top-level make, also under `make test` (whose MAKEFLAGS / MAKELEVEL would add directory lines)
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        made = subprocess.run(["make", "-n", "repro", "P=fmnst"], cwd=REPO, capture_output=True, text=True, env=env)
        assert made.returncode != 0 and not made.stdout  # nothing, not even `make data`, would run
        assert f"unknown profile 'fmnst' (make repro P=...): choose one of {' '.join(PROFILES)}" in made.stderr
        assert "g2sd_lib.pipeline.repro gpu" in subprocess.run(["make", "-n", "repro", "P=gpu"], cwd=REPO, env=env,
                                                      capture_output=True, text=True).stdout


def test_the_measured_cpu_default_candidate_stays_a_valid_profile_with_the_gpu_profiles_models():
    """benchmarks/candidates/fmnist_patch4.yaml is what was timed as the CPU default with the gpu
    profile's models (benchmarks/candidates/README.md): it must stay runnable to repeat the measurement."""
    import yaml

    from g2sd_lib.pipeline.schema import validate_params
    cand, gpu = yaml.safe_load(CANDIDATE.read_text()), load_profile("gpu")
    validate_params(cand, source=str(CANDIDATE))
    assert cand["profile"] == "fmnist" and cand["students"]["common"]["data"] == {"train_subset": 20000}

    def models(p):
        return ([p["teacher"][s]["model"] for s in ("pretrain", "finetune")]
                + [p["pretrain"][r]["model"] for r in PRETRAIN_RUNS] + [p["students"]["common"]["model"]]
                + [p["dense"][t][k] for t in ("segmentation", "detection") for k in ("teacher_model", "student_model")])
    assert models(cand) == models(gpu)
    for group, runs in (("pretrain", PRETRAIN_RUNS), ("students", STUDENTS)):
        for r in runs:
            TrainConfig(out_dir="x", **stage_config(cand, group, r, seed=0)["train"]).validate()


@pytest.mark.parametrize("name", PROFILES)
def test_the_pinned_sha256_of_every_bundled_file_is_the_committed_files(name):
    """Each profile names bundled files (its own teacher or, as the alternative to its mode, the
    `fmnist` bundle); a bundle rebuilt without updating a profile's pin would fail only once someone
    switches that profile to `bundled`. The pins are the teacher stage's dependency on the files (a
    param of dvc.yaml, not the teachers/ folder, so that bundling one profile's teacher leaves the
    others' stages current): a file replaced under an unchanged pin fails here, and a new pin reruns the stage."""
    from g2sd_lib.checkpoints.files import sha256_file
    teacher = load_profile(name)["teacher"]
    used = {"bundled": ("mae", "classifier"), "finetune": ("mae",)}.get(teacher["mode"], ())
    for role in ("mae", "classifier") if teacher.get("bundled") else ():
        path = REPO / teacher["bundled"][role]
        assert path.exists() or role not in used, f"{name}.yaml (mode {teacher['mode']}) uses {path}, which is missing"
        if path.exists():
            assert sha256_file(path) == teacher["bundled"][f"{role}_sha256"], f"{name}.yaml pins a stale sha256 for {path.name}"


def test_no_stage_depends_on_the_whole_teachers_folder():
    """Adding one profile's bundled teacher must not make another profile's stages stale."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert not [name for name, stage in stages.items() if "teachers" in stage.get("deps", [])]


def test_the_profiles_are_the_files_and_an_unknown_one_in_params_yaml_is_refused(tmp_path, monkeypatch, capsys):
    """One list (the yaml files) for the library, the Makefile and params.yaml: a name params.yaml lists
    without its file is refused by the library, `python -m g2sd_lib.pipeline.repro` and `make repro` (through
    `python -m g2sd_lib.pipeline.profiles check`, before the data set-up), naming the known profiles."""
    from g2sd_lib.pipeline import repro
    from g2sd_lib.errors import InputError, run_main
    from g2sd_lib.pipeline.profiles import HERE, main
    assert PROFILES == tuple(sorted(p.stem for p in HERE.glob("*.yaml") if p.stem != "base"))
    params = tmp_path / "params.yaml"
    params.write_text("profiles: [fmnist, fmnst]\n")
    with pytest.raises(InputError, match=r"params.yaml lists the unknown profile 'fmnst' \(profiles: \[fmnist, fmnst\]\); "
                                         "the known profiles are the files g2sd_lib/pipeline/profiles/<name>.yaml: "
                                         + ", ".join(PROFILES)):
        enabled_profiles(params)
    monkeypatch.chdir(tmp_path)
    for command, argv in ((repro.main, ["fmnist"]), (main, ["check", "fmnist"])):
        with pytest.raises(SystemExit) as e:
            run_main(command, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "unknown profile 'fmnst'" in err and "Traceback" not in err
    if shutil.which("make"):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        made = subprocess.run(["make", "-n", "repro", "P=fmnist"], cwd=REPO, capture_output=True, text=True, env=env)
        lines = made.stdout.splitlines()
        check = lines.index(".venv/bin/python -m g2sd_lib.pipeline.profiles check fmnist")
        assert check < next(i for i, line in enumerate(lines) if "g2sd_lib.fmnist fetch" in line)


def test_prepare_only_validates_the_profile_sections_it_injects(tmp_path, monkeypatch):
    """`--prepare-only` runs no cell, so nothing else would see a typo in the profile."""
    from g2sd_lib.pipeline.schema import ConfigError
    broken = load_profile("smoke")
    broken["teacher"]["finetune"]["train"]["epochz"] = 3
    monkeypatch.setattr(notebook_runner, "load_profile", lambda name: broken)
    out = tmp_path / "01.ipynb"
    with pytest.raises(ConfigError, match=r"teacher.finetune.train.epochz: unknown key.* did you mean 'epochs'"):
        notebook_runner.run_notebook("smoke", REPO / "notebooks" / "01_teacher.ipynb", out, prepare_only=True)
    assert not out.exists()
    monkeypatch.undo()
    notebook_runner.run_notebook("smoke", REPO / "notebooks" / "01_teacher.ipynb", out, prepare_only=True)
    assert out.exists()


def _tracked(pipeline: dict, file: str) -> set[str]:
    """The keys dvc.yaml's stages track in ``file`` (``${item.task}`` and ``${item.run}`` expanded)."""
    keys = set()
    for stage in pipeline["stages"].values():
        matrix = stage.get("matrix", {})
        for entry in stage.get("params", []):
            for name, listed in (entry.items() if isinstance(entry, dict) else ()):
                if name == file:
                    for key in listed:
                        values = [{"task": t, "run": r} for t in matrix.get("task", [None]) for r in matrix.get("run", [None])]
                        keys |= {key.replace("${item.task}", str(v["task"])).replace("${item.run}", str(v["run"])) for v in values}
    return keys


def test_dvc_tracks_only_what_every_profile_states_and_the_base_has():
    """DVC stops `dvc repro` on a tracked parameter missing from its file: every key dvc.yaml tracks in a
    profile's file is one the loader requires each profile to state (STATED), and every key it tracks in
    base.yaml is there; each committed profile states them all."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    own = _tracked(pipeline, "g2sd_lib/pipeline/profiles/${item.profile}.yaml")
    stated = set(STATED) | {key.rsplit(".", i)[0] for key in STATED for i in range(1, key.count(".") + 1)}  # and parents
    assert own and own <= stated, sorted(own - stated)
    base_keys = _tracked(pipeline, "${base}")
    assert pipeline["vars"][1]["base"] == str(BASE.relative_to(REPO)) and base_keys
    base = yaml.safe_load(BASE.read_text())
    for key in base_keys:
        node = base
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml tracks {key} in base.yaml, which lacks it"
            node = node[part]
    for name in PROFILES:
        load_profile(name)  # refuses a profile that does not state one


def test_a_profile_is_its_file_merged_into_the_base_and_must_state_what_dvc_tracks(tmp_path, monkeypatch):
    from g2sd_lib.errors import InputError
    from g2sd_lib.pipeline import profiles
    shutil.copyfile(BASE, tmp_path / "base.yaml")
    text = profile_path("fmnist").read_text()
    monkeypatch.setattr(profiles, "HERE", tmp_path)
    (tmp_path / "fmnist.yaml").write_text(text.replace("  kd: {}", "  kd: {task: {alpha: 0.5}}"))
    params = profiles.load_profile("fmnist")
    base = yaml.safe_load(BASE.read_text())
    assert params["students"]["kd"]["task"] == {**base["students"]["kd"]["task"], "alpha": 0.5}  # merged key by key
    assert params["students"]["kd"]["kind"] == "kd" and params["profile"] == "fmnist"  # the rest is base's
    (tmp_path / "fmnist.yaml").write_text(text.replace("  kd: {}", "  kd: {}\n  mae:\n    init: null"
                                                        ).replace("  mae: {}                   # as base\n", ""))
    assert profiles.load_profile("fmnist")["students"]["mae"]["init"] is None  # null replaces
    (tmp_path / "fmnist.yaml").write_text(text.replace("  kd: {}", "  kd_typo: {}"))
    with pytest.raises(InputError, match=r"fmnist.yaml does not state students.kd: dvc.yaml tracks each by name in "
                                         r"the profile's file; add it \(`\{\}` for a section taken whole from base.yaml\)"):
        profiles.load_profile("fmnist")
