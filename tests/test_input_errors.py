"""Bad input to the library's entry points is refused with a message that names it and the fix, as a
user error (:func:`g2sd_lib.errors.user_errors`: one paragraph on the command line and in a notebook)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from g2sd_lib import checkpoints
from g2sd_lib.pipeline import config, profiles, schema, stages
from g2sd_lib.device import autocast_dtype, resolve_device
from g2sd_lib.errors import InputError, MissingInputError, UserError, user_errors
from g2sd_lib.models import ModelShapeError, create_classifier, create_mae

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, problem", [
    ("mae_vit_smokesmall_patch7_dec100d1b", "decoder width 100 is not divisible by its 3 heads"),
    ("mae_vit_smokesmall_patch7_dec0d1b", "decoder width is 0"),
    ("mae_vit_smokesmall_patch0_dec16d1b", "patch size is 0"),
    ("mae_vit_w30d2h3_patch7_dec16d1b", "multiples of 4"),
    ("vit_w30d2h4_patch7", "width 30 is not divisible by its 4 heads"),
])
def test_a_model_name_that_cannot_be_built_is_refused_by_the_schema_and_the_factories(name, problem):
    with pytest.raises(ModelShapeError, match=problem):
        create_mae(name) if name.startswith("mae_") else create_classifier(name)
    params = profiles.load_profile("smoke")
    section = ("pretrain", "gd") if name.startswith("mae_") else ("students", "scratch")
    params[section[0]][section[1]]["model"] = name
    with pytest.raises(schema.ConfigError, match=f"{'.'.join(section)}.model: cannot be built: .*{problem}"):
        schema.validate_params(params)


def test_a_mistyped_gd_student_next_to_a_trained_teacher_is_a_config_error_not_a_crash():
    # the teacher's patch is compared with the student's: a name that does not parse used to crash there
    params = profiles.load_profile("smoke")
    params["pretrain"]["gd"]["model"] = "mae_vit_smokesmal_patch7_dec16d1b"
    with pytest.raises(schema.ConfigError, match="pretrain.gd.model: not a model name"):
        profiles.complete("smoke", teacher=params["teacher"], pretrain=params["pretrain"])


def test_devices_and_precisions_that_cannot_run_here_are_input_errors():
    with pytest.raises(InputError, match="train.device 'cuad' is not a device"):
        resolve_device("cuad")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU is visible here"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="needs a CUDA device"):
        autocast_dtype("fp16", torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("call, message", [
    (lambda: profiles.load_profile("fmnst"), "unknown profile 'fmnst'"),
    (lambda: config.stage_config(profiles.load_profile("smoke"), "pretrain", "gdd"), "no run 'gdd'"),
    (lambda: checkpoints.load_model(REPO / "teachers" / "fmnist_mae.safetensors", "gd_teacher"), "unknown role"),
])
def test_bad_names_are_user_errors_and_still_value_errors(call, message):
    with pytest.raises(ValueError, match=message) as e:
        call()
    assert isinstance(e.value, user_errors())


_RUN = {"out_dir": "unused", "train": {"epochs": 1, "batch_size": 8, "blr": 1e-3}}  # what build_task does not read


def test_a_missing_upstream_checkpoint_names_the_stage_that_writes_it(tmp_path):
    init = tmp_path / "runs" / "fmnist" / "pretrain" / "gd" / "model.safetensors"
    cfg = {"kind": "finetune", "model": "vit_smokesmall_patch7", "init": str(init), "data": {"dataset": "fmnist"}, **_RUN}
    with pytest.raises(MissingInputError, match=r"dvc repro pretrain@fmnist-gd"):
        stages.build_task(cfg)
    teacher = tmp_path / "runs" / "smoke" / "teacher" / "classifier.safetensors"
    cfg = {"kind": "kd", "model": "vit_smokesmall_patch7", "teacher": str(teacher), "data": {"dataset": "fmnist"}, **_RUN}
    with pytest.raises(MissingInputError, match=r"dvc repro teacher@smoke"):
        stages.build_task(cfg)


def test_the_stage_command_explains_its_usage_and_refuses_unreadable_configurations(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "g2sd_lib.pipeline.stages", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    p = run("--help")
    assert p.returncode == 0 and "usage: python -m g2sd_lib.pipeline.stages" in p.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: gd\nmodel: a: b\n")
    for path, message in ((tmp_path / "nope.yaml", "no such file"), (bad, "is not valid YAML")):
        p = run(str(path))
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_sidecar_that_is_not_an_object_is_a_checkpoint_error(tmp_path):
    model = create_classifier("vit_smokesmall_patch7", num_classes=10)
    path = tmp_path / "m.safetensors"
    checkpoints.save_model(model, path)
    path.with_suffix(".json").write_text(json.dumps([1, 2]))
    with pytest.raises(checkpoints.CheckpointError, match="not a JSON object with an 'arch' mapping"):
        checkpoints.load_saved_model(path)


def test_bundling_before_the_teacher_was_trained_says_how_to_train_it(tmp_path):
    from g2sd_lib.pipeline.teacher import bundle_teacher

    with pytest.raises(MissingInputError, match=r"dvc repro teacher@smoke"):
        bundle_teacher(profiles.load_profile("smoke"), tmp_path / "runs", tmp_path / "teachers")
    assert issubclass(MissingInputError, UserError) and issubclass(MissingInputError, FileNotFoundError)


def test_a_key_given_twice_is_refused_naming_the_key_and_both_lines(tmp_path, monkeypatch):
    """YAML keeps the last of two equal keys without a word: a second out_dir trained into the other
    directory. Every configuration loader (stage configurations, profiles, params.yaml) refuses it."""
    cfg = tmp_path / "stage.yaml"
    cfg.write_text(f"kind: finetune\nout_dir: {tmp_path / 'a'}\nmodel: vit_smokesmall_patch7\nout_dir: {tmp_path / 'b'}\n")
    p = subprocess.run([sys.executable, "-m", "g2sd_lib.pipeline.stages", str(cfg)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"{cfg}: the key 'out_dir' is given twice in one mapping, on line 2 and line 4" in p.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a profile: the nested key and its lines
    lines = (profiles.HERE / "smoke.yaml").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("    model:"))
    (tmp_path / "smoke.yaml").write_text("".join(lines[:at + 1] + lines[at:]))
    monkeypatch.setattr(profiles, "HERE", tmp_path)
    with pytest.raises(InputError, match=rf"smoke.yaml: the key 'model' is given twice in one mapping, on line "
                                         rf"{at + 1} and line {at + 2}; YAML would keep the second silently"):
        profiles.load_profile("smoke")
    params = tmp_path / "params.yaml"
    params.write_text("profiles: [fmnist]\nprofiles: [gpu]\n")
    with pytest.raises(InputError, match="the key 'profiles' is given twice in one mapping, on line 1 and line 2"):
        profiles.enabled_profiles(params)


def test_hostile_configurations_are_refused_in_well_under_a_second(tmp_path, monkeypatch):
    """Duplicate keys, and a "billion laughs" file: 10 levels of 9 aliases is a few hundred bytes and 9**10 values once a
    deep copy or a JSON dump expands it. Refused while parsing, before anything is built; a profile's
    own anchors and aliases stay allowed, and every profile is far below the bound."""
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp_path / "smoke.yaml").write_text("\n".join(levels) + "\n")
    real = profiles.HERE
    monkeypatch.setattr(profiles, "HERE", tmp_path)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"smoke.yaml: its anchors and aliases .* expand to more than 100,000 values"):
        profiles.load_profile("smoke")
    assert time.perf_counter() - start < 1.0
    (tmp_path / "smoke.yaml").write_text("profile: smoke\nseeds: [0]\nseeds: [0, 1]\n")
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"smoke.yaml: the key 'seeds' is given twice in one mapping, on line 2 and line 3"):
        profiles.load_profile("smoke")
    assert time.perf_counter() - start < 1.0
    with pytest.raises(InputError, match="expand to more than"):  # a node that contains itself
        config.load_yaml("a: &a [1, *a]\n", "loop.yaml")
    assert config.load_yaml("base: &b {lr: 1.0}\nrun: {<<: *b, epochs: 2}\n", "ok.yaml")["run"] == {"lr": 1.0, "epochs": 2}
    own = sorted(real.glob("*.yaml"))
    assert len(own) >= 5 and all(config._expanded_size(config._StrictLoader(p.read_text()).get_single_node()) < 1000
                                 for p in own)


def test_a_misspelt_model_name_gets_a_did_you_mean():
    with pytest.raises(InputError, match="did you mean 'fmsmall'"):
        create_mae("mae_vit_fmsmal_patch7_dec48d2b")
    with pytest.raises(InputError, match="did you mean 'mae_vit_fmsmall_patch7_dec48d2b'"):
        create_mae("mea_vit_fmsmall_patch7_dec48d2b")
    params = profiles.load_profile("smoke")
    params["students"]["scratch"]["model"] = "vit_smokesmal_patch7"
    with pytest.raises(schema.ConfigError, match="students.scratch.model: not a model name .*did you mean "
                                                 "'vit_smokesmall_patch7'"):
        schema.validate_params(params)


def test_a_missing_pipeline_output_or_sidecar_names_the_command_that_restores_it(tmp_path):
    teacher = tmp_path / "runs" / "smoke" / "teacher" / "classifier.safetensors"
    cfg = {"kind": "kd", "model": "vit_smokesmall_patch7", "teacher": str(teacher), "data": {"dataset": "fmnist"}, **_RUN}
    with pytest.raises(MissingInputError, match=rf"`dvc checkout {teacher}` restores it if its stage ran here before; "
                                                "else the teacher stage writes it: `dvc repro teacher@smoke`"):
        stages.build_task(cfg)
    checkpoints.save_model(create_classifier("vit_smokesmall_patch7", num_classes=10), teacher)
    teacher.with_suffix(".json").unlink()  # a pipeline stage refuses what a library call only warns about
    with pytest.raises(MissingInputError, match=rf"has no sidecar {teacher.with_suffix('.json')} .*`dvc checkout "
                                                rf"{teacher.with_suffix('.json')}` restores it"):
        stages.build_task(cfg)
