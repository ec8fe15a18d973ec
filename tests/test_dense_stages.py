"""The dense pipeline stages on tiny models: configurations of every profile, canvases from the
pinned splits, whole teacher -> student runs for both tasks, resume, and the report's dense tables."""

import json
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

from g2sd_lib.pipeline import report, results, schema
from g2sd_lib.checkpoints import save_model
from g2sd_lib.pipeline import stages as runner
from g2sd_lib.pipeline.config import DENSE_TASKS, SPLITS, canvas_paths, deep_merge, dense_stage_config
from g2sd_lib.dense import load_dense, make_canvases, save_dense
from g2sd_lib.pipeline import dense_stages as stages
from g2sd_lib.train_config import TrainConfig
from g2sd_lib.models import create_mae
from g2sd_lib.pipeline.profiles import PROFILES, load_profile


def _key_tree(d):
    """The nested keys of a section; the ``*_train`` override dicts are free-form, so they are leaves."""
    return {k: _key_tree(v) if isinstance(v, dict) and not k.endswith("_train") else None for k, v in d.items()}


def test_profiles_share_the_dense_schema():
    trees = {name: _key_tree(load_profile(name)["dense"]) for name in PROFILES}
    assert trees["smoke"] == trees["fmnist"] == trees["paper"]


@pytest.mark.parametrize("name", ["smoke", "fmnist"])
def test_every_dense_run_builds_a_valid_config(name):
    params = load_profile(name)
    for task in DENSE_TASKS:
        teacher = dense_stage_config(params, task, "teacher")
        assert teacher["init"].endswith("runs/teacher/mae.safetensors") and teacher["distill"] is None
        assert teacher["out_dir"].endswith(f"runs/dense/{task}/teacher")
        for run in params["dense"]["runs"]:
            for seed in params["dense"]["seeds"]:
                cfg = dense_stage_config(params, task, run, seed=seed)
                TrainConfig(out_dir=cfg["out_dir"], **cfg["train"]).validate()
                assert cfg["out_dir"].endswith(f"runs/dense/{task}/{run}/seed{seed}") and cfg["train"]["seed"] == seed
        g2sd = dense_stage_config(params, task, "g2sd", seed=0)
        assert g2sd["init"].endswith("runs/pretrain/gd/model.safetensors")
        assert g2sd["teacher"].endswith(f"runs/dense/{task}/teacher/model.safetensors") and g2sd["distill"]
        assert dense_stage_config(params, task, "gd_only", seed=0)["distill"] is None
    with pytest.raises(ValueError, match="no dense run 'nope'"):
        dense_stage_config(params, "segmentation", "nope")
    with pytest.raises(ValueError, match="unknown dense task"):
        dense_stage_config(params, "depth", "teacher")


def test_the_paper_profile_points_to_the_external_libraries():
    params = load_profile("paper")
    with pytest.raises(RuntimeError, match="detectron2.*mmsegmentation"):
        dense_stage_config(params, "detection", "teacher")
    recipes = stages.external_recipes()
    assert recipes["detection"]["library"].startswith("detectron2")
    assert recipes["segmentation"]["library"].startswith("mmsegmentation")
    assert params["dense"]["segmentation"]["distill"] == {"tau": 1.0, "weight": 3.0}
    assert params["dense"]["detection"]["distill"] == {"feat_weight": 0.001, "obj_weight": 0.1, "warmup_iters": 500}


def test_build_canvases_from_the_pinned_splits(fmnist_available, tmp_path):
    params = load_profile("smoke")
    params["data"]["root"] = str(fmnist_available)
    params["dense"]["data"].update(train=12, val=6, test=6)
    made = stages.build_canvases(params, tmp_path)
    paths = canvas_paths(tmp_path)
    assert {s: len(made[s]["images"]) for s in SPLITS} == {"train": 12, "val": 6, "test": 6}
    again = stages.build_canvases(params, tmp_path / "again")
    for split in SPLITS:
        assert torch.equal(load_dense(paths[split])["images"], again[split]["images"])
    assert not torch.equal(made["train"]["images"][:6], made["val"]["images"])  # own items, own seed
    assert made["train"]["images"].shape[-1] == params["dense"]["data"]["size"]


def test_canvas_items_on_a_grid():
    items = torch.full((3, 1, 28, 28), 200, dtype=torch.uint8)  # solid squares: box = item frame
    data = make_canvases(items, torch.arange(3), 40, size=56, max_items=1, seed=0, grid=7)
    corners = torch.stack([b[0, :2] for b in data["boxes"]])
    assert (corners % 7 == 0).all() and len(corners.unique()) > 1
    with pytest.raises(ValueError, match="grid"):
        make_canvases(items, torch.arange(3), 1, size=56, grid=0)


# ------------------------------------------------------------------------------------ whole runs
@pytest.fixture()
def tiny_workdir(tmp_path):
    """A work directory with what the dense stages read: canvases, the teacher MAE, a GD student."""
    g = torch.Generator().manual_seed(0)
    items = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    for i in range(10):
        s = 8 + 2 * i
        items[i, 0, :s, :s] = torch.randint(100, 256, (s, s), generator=g, dtype=torch.uint8)
    root = tmp_path / "runs"
    for offset, (split, path) in enumerate(canvas_paths(root).items()):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_dense(path, make_canvases(items, torch.arange(10), 8, size=56, max_items=3, seed=offset))
    torch.manual_seed(0)
    save_model(create_mae("mae_vit_smokebase_patch7_dec16d1b"), root / "teacher/mae.safetensors")
    save_model(create_mae("mae_vit_smokesmall_patch7_dec16d1b"), root / "pretrain/gd/model.safetensors")
    params = load_profile("smoke")
    params["dense"]["common"]["train"].update(batch_size=4, progress=False, device="cpu")
    return root, params


def test_teacher_then_distilled_students_for_both_tasks(tiny_workdir):
    workdir, params = tiny_workdir
    for task, metric, distill_part in (("segmentation", "miou", "train_cwd"),
                                       ("detection", "box_ap", "train_distill_obj")):
        teacher = runner.run_stage(dense_stage_config(params, task, "teacher", workdir))
        assert 0.0 <= teacher[-1][f"val_{metric}"] <= 1.0
        g2sd = runner.run_stage(dense_stage_config(params, task, "g2sd", workdir, seed=0))
        plain = runner.run_stage(dense_stage_config(params, task, "gd_only", workdir, seed=0))
        assert distill_part in g2sd[-1] and distill_part not in plain[-1]
        models = stages.trained_models(params, task, workdir)
        assert set(models) == {"teacher", "g2sd", "gd_only"} and all(p.exists() for p in models["g2sd"].values())
        student = stages.build_dense_model(dense_stage_config(params, task, "g2sd", workdir, seed=0), 56)
        vit = student.vit if task == "segmentation" else student.backbone.vit
        assert vit.embed_dim == 16  # the smoke student, not the teacher


def test_resumed_detection_distillation_continues_its_warmup(tiny_workdir, monkeypatch):
    """A 2-epoch distillation interrupted after its first epoch (2 steps) resumes with the warm-up
    counter at 2 loss calls."""
    from g2sd_lib import engine

    workdir, params = tiny_workdir
    runner.run_stage(dense_stage_config(params, "detection", "teacher", workdir))
    cfg = deep_merge(dense_stage_config(params, "detection", "g2sd", workdir, seed=0), {"train": {"epochs": 2}})

    class Interrupted(Exception):
        pass

    real_end = engine._end_epoch

    def end_then_stop(run, row, *args):
        real_end(run, row, *args)
        if row["epoch"] == 1:
            raise Interrupted

    monkeypatch.setattr(engine, "_end_epoch", end_then_stop)
    with pytest.raises(Interrupted):
        runner.run_stage(cfg)
    monkeypatch.setattr(engine, "_end_epoch", real_end)
    seen = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda task, *a, **k: seen.append(task.iteration) or real_train(task, *a, **k))
    history = runner.run_stage(cfg)
    assert seen == [2] and [row["epoch"] for row in history] == [1, 2]


# ------------------------------------------------------------------------------------ report
def _dense_evaluation():
    def task(metric, teacher, g2sd, gd_only):
        return {"metric": metric, "teacher": {metric: teacher, "params": 2.0e6},
                "students": {"g2sd": {"seeds": {"0": {metric: g2sd[0]}, "1": {metric: g2sd[1]}}, "params": 5.0e5},
                             "gd_only": {"seeds": {"0": {metric: gd_only[0]}, "1": {metric: gd_only[1]}},
                                         "params": 5.0e5}}}
    return {"dataset": "canvases", "test_canvases": 100,
            "tasks": {"segmentation": task("miou", 0.5, (0.49, 0.51), (0.40, 0.42)),
                      "detection": task("box_ap", 0.4, (0.30, 0.34), (0.30, 0.32))}}


def test_dense_summary_tables_and_claims():
    summary = results.summarize_dense(_dense_evaluation())
    seg, det = summary["segmentation"], summary["detection"]
    assert seg["metric"] == "miou" and det["metric"] == "box_ap" and seg["teacher"] == {"miou": 0.5}
    assert seg["students"]["g2sd"]["miou"] == pytest.approx(0.5) and seg["students"]["g2sd"]["seeds"] == [0, 1]
    assert seg["students"]["g2sd"]["ratio_to_teacher"] == pytest.approx(1.0)
    assert det["students"]["g2sd"]["ratio_to_teacher"] == pytest.approx(0.8)
    rows = report.dense_rows(summary, _dense_evaluation())
    assert [(r["task"], r["method"]) for r in rows][:2] == [("segmentation", "teacher"), ("segmentation", "G2SD (GD + dense SD)")]
    g2sd_det = next(r for r in rows if r["task"] == "detection" and r["method"].startswith("G2SD"))
    assert g2sd_det["paper"] == "98.1 % of teacher" and g2sd_det["% of teacher"] == "80.00"
    assert next(r for r in rows if r["task"] == "detection" and r["method"] == "teacher")["paper"] == "51.6 box AP"
    assert next(r for r in rows if r["task"] == "segmentation" and r["method"] == "teacher")["paper"] == "unavailable"
    claims = {r["claim"]: r["holds at this budget"] for r in report.dense_claims_rows(summary)}
    assert claims["segmentation: the ViT-S student reaches 99.3 % of its ViT-B teacher"] == "yes"
    assert claims["detection: the ViT-S student reaches 98.1 % of its ViT-B teacher"] == "no"
    assert claims["segmentation: dense specific distillation helps after GD (G2SD > GD only)"] == "yes"
    assert claims["detection: dense specific distillation helps after GD (G2SD > GD only)"] == \
        "not resolved (within the seed spread)"
    external = results.summarize_dense({"dataset": "external", "status": "external: run elsewhere", "tasks": {}})
    assert external["detection"] == {"metric": "box_ap", "status": "external: run elsewhere"}
    assert report.dense_rows(external, {}) == [] and report.dense_claims_rows(external) == []


def test_several_processes_run_the_one_stage_module_under_torchrun(tmp_path, monkeypatch):
    import subprocess

    from g2sd_lib.errors import UserError

    calls, codes = [], [0, 1]

    def fake_run(cmd):
        calls.append(cmd)
        (tmp_path / "run" / "history.json").write_text(json.dumps([{"epoch": 1}]))
        return subprocess.CompletedProcess(cmd, codes[len(calls) - 1])

    monkeypatch.setattr(subprocess, "run", fake_run)
    cfg = dense_stage_config(load_profile("smoke"), "segmentation", "teacher", tmp_path)
    cfg["out_dir"] = str(tmp_path / "run")
    history = runner.launch(cfg, nproc=2)
    assert history == [{"epoch": 1}]
    assert calls[0][1:5] == ["--standalone", "--nproc-per-node=2", "-m", "g2sd_lib.pipeline.stages"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kind"] == "segmentation"
    with pytest.raises(UserError, match="torchrun of the run .* failed \\(exit status 1\\)"):
        runner.launch(cfg, nproc=2)  # a worker failed: one line under the workers' own error
    with pytest.raises(schema.ConfigError):
        runner.launch({**cfg, "kind": "segmentatoin"}, nproc=2)  # refused before torchrun starts
    assert len(calls) == 2


def test_the_frs_sweep_changes_only_the_distillation(tmp_path):
    """benchmarks/frs_sweep.py retrains the detection student from the pipeline's checkpoints; its
    variants must differ from the pipeline's G2SD run in the distillation options alone."""
    from g2sd_lib.pipeline import schema
    sweep = load_benchmark("frs_sweep")
    params = load_profile("fmnist")
    base = dense_stage_config(params, "detection", "g2sd", tmp_path, seed=0)
    variants = dict(sweep.configs(params, tmp_path, tmp_path / "sweep"))
    assert len(variants) == len(sweep.VARIANTS) and variants["official feat 0.001 obj 0.1"]["distill"] == base["distill"]
    assert variants["labels only"]["distill"] is None and "teacher" not in variants["labels only"]
    assert variants["official, warm-up x5"]["distill"]["warmup_iters"] == 5 * base["distill"]["warmup_iters"]
    for cfg in variants.values():
        schema.validate_stage(cfg)
        same = {k: v for k, v in cfg.items() if k not in ("distill", "out_dir", "teacher")}
        assert same == {k: v for k, v in base.items() if k not in ("distill", "out_dir", "teacher")}


def test_the_frs_sweep_keeps_earlier_runs_only_from_the_same_checkpoints(tmp_path, monkeypatch):
    """A rerun of the pipeline changes the checkpoints the sweep starts from: rows trained from the old
    ones must not be mixed with new ones (the JSON records both files' sha256)."""
    sweep = load_benchmark("frs_sweep")
    params = load_profile("fmnist")
    base = dense_stage_config(params, "detection", "g2sd", tmp_path)
    with pytest.raises(SystemExit, match="make repro"):
        sweep.checkpoints(params, tmp_path)
    for key, content in (("init", b"student"), ("teacher", b"teacher")):
        Path(base[key]).parent.mkdir(parents=True, exist_ok=True)
        Path(base[key]).write_bytes(content)
    hashes = sweep.checkpoints(params, tmp_path)
    assert set(hashes) == {"student_init", "dense_teacher"} and len(set(hashes.values())) == 2

    trained = []
    monkeypatch.setattr(sweep, "checkpoints", lambda params, root: hashes)
    monkeypatch.setattr(sweep, "run_stage", lambda cfg: trained.append(cfg) or [{"val_box_ap": 0.25}])
    out = tmp_path / "sweep.json"
    old = {"variant": "labels only", "seed": 0, "val_box_ap": 0.5}
    out.write_text(json.dumps({"checkpoints": hashes, "rows": [old]}))
    rows = sweep.main(["--json", str(out), "--work", str(tmp_path / "w"), "--variants", "labels only"])["rows"]
    assert rows == [old] and not trained  # same checkpoints: kept, not repeated
    out.write_text(json.dumps({"checkpoints": {"student_init": "other"}, "rows": [old]}))
    rows = sweep.main(["--json", str(out), "--work", str(tmp_path / "w"), "--variants", "labels only"])["rows"]
    assert len(trained) == 1 and [r["val_box_ap"] for r in rows] == [0.25]
    assert json.loads(out.read_text())["checkpoints"] == hashes


def test_a_dense_setting_a_profile_leaves_out_takes_the_schemas_one_default(tmp_path):
    """flip and eval_batch_size: unset in the profile, unset in the stage configuration (as written, as DVC
    hashes it), and filled once, by the dense stage schema, in the typed stage the run is built from."""
    from g2sd_lib.pipeline.schema import typed_stage
    from g2sd_lib.pipeline.schema.stage_models import EVAL_BATCH_SIZE
    params = load_profile("smoke")
    del params["dense"]["common"]["flip"], params["dense"]["data"]["eval_batch_size"]
    cfg = dense_stage_config(params, "segmentation", "g2sd", tmp_path, seed=0)
    assert "flip" not in cfg and "eval_batch_size" not in cfg["data"]
    stage = typed_stage(cfg)
    assert stage.flip is True and stage.data.eval_batch_size == EVAL_BATCH_SIZE
    stated = typed_stage(dense_stage_config(load_profile("smoke"), "segmentation", "g2sd", tmp_path, seed=0))
    assert stated.data.eval_batch_size == load_profile("smoke")["dense"]["data"]["eval_batch_size"] != EVAL_BATCH_SIZE
