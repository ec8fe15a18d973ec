"""The label-scarce regime: the stratified label draw, supervised stages on the drawn labels only,
the teacher's ``finetune`` mode, the calibration's criteria and the claims' verdicts."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import json_floats, load_benchmark
from g2sd_lib import data
from g2sd_lib.errors import InputError
from g2sd_lib.pipeline import config, results
from g2sd_lib.pipeline.profiles import load_profile, shrink
from g2sd_lib.pipeline.schema import validate_params
from g2sd_lib.data import label_draw
from g2sd_lib.pipeline.stages import training_loader

PROFILE = "fmnist_1k_labels"


def test_the_draw_is_stratified_seeded_and_named_by_its_digest():
    labels = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    a, b = data.labelled_subset(labels, 100, 0), data.labelled_subset(labels, 100, 0)
    assert torch.equal(a, b) and torch.equal(a, a.sort().values) and len(a.unique()) == 100
    assert torch.bincount(labels[a], minlength=10).tolist() == [10] * 10
    other = data.labelled_subset(labels, 100, 1)
    assert not torch.equal(a, other)
    assert data.label_draw_digest(a) == data.label_draw_digest(a.flip(0)) != data.label_draw_digest(other)
    for bad in (95, 0, 510):
        with pytest.raises(InputError, match="multiple of the 10 classes"):
            data.labelled_subset(labels, bad, 0)
    with pytest.raises(InputError, match="needs 60 images of class 1, the training split has 50"):
        data.labelled_subset(torch.cat([labels, torch.zeros(100, dtype=torch.long)]), 600, 0)


def test_supervised_runs_see_only_the_drawn_labels_and_pretraining_sees_every_image(fmnist_available):
    params = shrink(load_profile(PROFILE), images=256, batch=64)
    assert params["data"]["labels"] == 70
    student = config.stage_config(params, "students", "scratch", "runs-unused", seed=0)
    pre = config.stage_config(params, "pretrain", "mae_student", "runs-unused")
    labelled, unlabelled = training_loader(student), training_loader(pre)
    assert len(labelled.images) == 70 and len(unlabelled.images) == 256
    assert torch.bincount(labelled.labels, minlength=10).tolist() == [7] * 10
    draw = label_draw(params["data"])
    assert draw["labels"] == 70 and draw["per_class"] == 7 and len(draw["sha256"]) == 64
    assert label_draw({**params["data"], "labels": None}) is None
    # what every claim names: students see epochs x labels, pretraining epochs x every image
    full = validate_params(load_profile(PROFILE), source=PROFILE)
    b = config.budget(full)
    epochs = full["students"]["common"]["train"]["epochs"], full["pretrain"]["common"]["train"]["epochs"]
    assert b["labels"] == 1000 and b["students"]["g2sd"]["images_seen"] == epochs[0] * 1000
    assert b["pretrain"]["gd"]["images_seen"] == epochs[1] * 55_000


def test_the_finetune_teacher_mode_fine_tunes_the_bundled_mae_on_the_labels(fmnist_available, tmp_path):
    from g2sd_lib import checkpoints
    from g2sd_lib.pipeline.teacher import obtain_teacher
    params = shrink(load_profile(PROFILE), images=256, batch=64, progress=False)
    params["teacher"]["mode"] = "finetune"  # how the profile's bundled classifier was made
    summary = obtain_teacher(params, tmp_path)
    assert summary["mode"] == "finetune" and len(summary["histories"]["finetune"]) == 1
    assert summary["label_draw"] == label_draw(params["data"])
    mae = checkpoints.load_saved_model(params["teacher"]["bundled"]["mae"])
    assert summary["gd"]["sha256"] == checkpoints.read_state_dict(tmp_path / "teacher" / "mae.safetensors")[1]["sha256"]
    classifier = checkpoints.load_saved_model(tmp_path / "teacher" / "classifier.safetensors")
    # initialised from the MAE's encoder, then one step of fine-tuning: close to it, not equal
    w0, w1 = mae.blocks[0].attn.qkv.weight, classifier.blocks[0].attn.qkv.weight
    assert w0.shape == w1.shape and 0 < (w0 - w1).abs().max() < 0.05


def _classification(**means_stds):
    return {"teacher": {"top1": 0.80}, "students": {
        name: {"top1_mean": m, "top1_std": s, "seeds": [0, 1, 2]} for name, (m, s) in means_stds.items()}}


def _valid(**passes):
    return {f"V{i}": {"pass": passes.get(f"V{i}", True)} for i in range(1, 6)}


def test_claims_hold_fail_or_are_untestable_by_the_criteria():
    cls = _classification(g2sd=(0.76, 0.004), gd_only=(0.75, 0.004), mae=(0.74, 0.004), sd_only=(0.758, 0.01),
                          kd=(0.77, 0.004), scratch=(0.70, 0.004))
    claims = {c["a"] + ">" + c["b"]: c for c in results.paper_claims(cls, _valid())}
    assert {k: c["verdict"] for k, c in claims.items()} == {
        "g2sd>teacher": "fails", "g2sd>mae": "holds", "g2sd>gd_only": "holds", "gd_only>mae": "holds",
        "g2sd>sd_only": "fails", "g2sd>kd": "fails", "g2sd>scratch": "holds"}
    assert "within the seed spread" in claims["g2sd>sd_only"]["reason"] and "reversed" in claims["g2sd>kd"]["reason"]
    assert claims["g2sd>mae"]["difference"] == pytest.approx(0.02)
    assert claims["g2sd>teacher"]["ratio"] == pytest.approx(0.95)
    no_v4 = {c["a"] + ">" + c["b"]: c["verdict"] for c in results.paper_claims(cls, _valid(V4=False))}
    assert no_v4["g2sd>gd_only"] == "untestable" and no_v4["g2sd>mae"] == "holds"
    for valid in (None, _valid(V1=False), _valid(V2=None)):
        assert {c["verdict"] for c in results.paper_claims(cls, valid)} == {"untestable"}
    close = _classification(g2sd=(0.79, 0.002))
    assert results.paper_claims(close, _valid())[0]["verdict"] == "holds"  # 0.792 >= 0.987 x 0.80


def _plant(job, top1):
    path = Path(job["cfg"]["out_dir"])
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(b"")
    epochs = job["cfg"]["train"]["epochs"]
    (path / "history.json").write_text(json.dumps([{"epoch": epochs, "val_top1": top1, "seconds": 1.0}]))


def test_the_calibration_computes_each_criterion_from_its_runs(tmp_path):
    cal = load_benchmark("label_scarce")
    params = validate_params(load_profile(PROFILE), source=PROFILE)
    params["pretrain"]["common"]["train"]["epochs"] = 16  # the budget under test, as --pretrain-epochs sets it
    params["students"]["common"]["train"]["epochs"] = 100  # and --final-epochs
    jobs = cal.plan(params, tmp_path, [0, 1, 2])
    names = [j["name"] for j in jobs]
    assert names[:3] == ["teacher_d0", "gd_e16", "mae_student_e16"] and len(names) == len(set(names))
    g2sd = next(j for j in jobs if j["name"] == "g2sd_p16_e100_d0_seed0")
    assert g2sd["needs"] == ["gd_e16", "teacher_d0"] and g2sd["cfg"]["data"]["labels"] == 1000
    assert next(j for j in jobs if j["name"] == "teacher_d1")["cfg"]["data"]["labels_seed"] == 1
    base = {"g2sd": 0.76, "gd_only": 0.75, "mae": 0.74, "sd_only": 0.73, "scratch": 0.72, "kd": 0.73}
    for job in jobs:
        name = job["name"]
        if name.startswith("teacher"):
            top1 = 0.81
        elif "_e100_" in name or "_e200_" in name:
            run = name.split("_p")[0] if "_p" in name else name.split("_e")[0]
            seed = int(name[-1])
            top1 = base[run] + 0.002 * (seed - 1) + (0.001 if "_e200_" in name else 0) + (0.002 if "_p32_" in name else 0)
            if "_d1_" in name:
                top1 -= 0.005
        else:
            continue  # pretraining runs have no validation top-1; the report needs none
        _plant(job, top1)
    out = cal.report(params, jobs, [0, 1, 2], v4=18.0)
    c = out["criteria"]
    assert c["V1"]["value"] == pytest.approx(81 - 74) and c["V1"]["pass"] is True
    assert c["V2"]["value"]["final_stage"]["kd"] == pytest.approx(0.1) and c["V2"]["pass"] is True
    assert c["V2"]["value"]["pretraining"]["mae"] == pytest.approx(0.2)
    assert c["V3"]["value"]["g2sd"] == pytest.approx(0.2) and c["V3"]["pass"] is True
    assert c["V4"]["pass"] is True and c["V5"]["pass"] is True
    # the criteria fail when their numbers say so
    _plant(next(j for j in jobs if j["name"] == "teacher_d0"), 0.76)
    out = cal.report(params, jobs, [0, 1, 2], v4=1.0)
    assert out["criteria"]["V1"]["pass"] is False and out["criteria"]["V4"]["pass"] is False
    assert out["criteria"]["V5"]["pass"] is False
    # a missing run leaves its criterion untested, never passed
    shutil.rmtree(tmp_path / "kd_e200_d0_seed2")
    assert cal.report(params, jobs, [0, 1, 2], v4=None)["criteria"]["V2"]["value"]["final_stage"]["kd"] \
        == pytest.approx(0.1)
    shutil.rmtree(tmp_path / "kd_e200_d0_seed1")
    shutil.rmtree(tmp_path / "kd_e200_d0_seed0")
    assert cal.report(params, jobs, [0, 1, 2], v4=None)["criteria"]["V2"]["pass"] is None
    # ... but one complete comparison over its threshold fails V2 at once
    for seed in (0, 1, 2):
        (tmp_path / f"mae_p32_e100_d0_seed{seed}" / "history.json").write_text(
            json.dumps([{"epoch": 100, "val_top1": 0.75, "seconds": 1}]))
    v2 = cal.report(params, jobs, [0, 1, 2], v4=None)["criteria"]["V2"]
    assert v2["value"]["pretraining"]["mae"] == pytest.approx(1.0) and v2["pass"] is False


def test_each_budget_reads_its_own_calibration(tmp_path):
    params = validate_params(load_profile(PROFILE), source=PROFILE)
    pre, final = params["pretrain"]["common"]["train"]["epochs"], params["students"]["common"]["train"]["epochs"]
    teacher = params["teacher"]["finetune"]["train"]["epochs"]
    assert results.calibration_file(PROFILE, params).name == f"{PROFILE}_t{teacher}_p{pre}_f{final}.json"
    params["students"]["common"]["train"]["epochs"] = final + 1
    assert results.calibration_file(PROFILE, params).name == f"{PROFILE}_t{teacher}_p{pre}_f{final + 1}.json"
    params["teacher"]["finetune"]["train"]["epochs"] = teacher + 1
    assert results.calibration_file(PROFILE, params).name == f"{PROFILE}_t{teacher + 1}_p{pre}_f{final + 1}.json"
    cal = load_benchmark("label_scarce")
    out = tmp_path / "c.json"
    cal.main(["--report-only", "--work", str(tmp_path), "--pretrain-epochs", "3", "--final-epochs", "5",
              "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["epochs"] == {"teacher": teacher, "pretrain": 3, "final_stage": 5} and out.with_suffix(".md").exists()
    assert all(c["pass"] is None for n, c in written["criteria"].items())  # nothing trained: nothing passes
    cal.main(["--report-only", "--work", str(tmp_path), "--labels", "500", "--teacher-epochs", "7",
              "--students", "scratch", "mae", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["regime"]["labels"] == 500 and "--students scratch mae" in written["command"]
    jobs = cal.plan(validate_params(load_profile(PROFILE), source=PROFILE), tmp_path, [0])
    assert {j.get("run") for j in jobs} == {None, *cal.STUDENTS}
    with pytest.raises(InputError, match="--final-epochs must be >= 1, got 0"):
        cal.main(["--report-only", "--work", str(tmp_path), "--final-epochs", "0", "--json", str(out)])


def test_a_teacher_pretrained_longer_feeds_both_teachers_and_students_keep_only_what_they_need(tmp_path):
    cal = load_benchmark("label_scarce")
    params = validate_params(load_profile(PROFILE), source=PROFILE)
    jobs = cal.plan(params, tmp_path, [0, 1], teacher_mae_epochs=40)
    by = {j["name"]: j for j in jobs}
    mae = by["teacher_mae_e40"]
    assert jobs[0] is mae and mae["cfg"]["kind"] == "mae" and mae["cfg"]["train"]["epochs"] == 40
    assert mae["cfg"]["model"] == params["teacher"]["pretrain"]["model"]
    made = str(tmp_path / "teacher_mae_e40" / "model.safetensors")
    for name in ("teacher_d0", "teacher_d1"):  # the SD teachers are fine-tuned from it ...
        assert by[name]["needs"] == ["teacher_mae_e40"] and by[name]["cfg"]["init"] == made
    gd = next(j for n, j in by.items() if n.startswith("gd_e"))  # ... and it is the GD teacher
    assert gd["needs"] == ["teacher_mae_e40"] and gd["cfg"]["teacher"] == made
    bundled = {j["name"]: j for j in cal.plan(params, tmp_path, [0])}
    assert "teacher_mae_e40" not in bundled and bundled["teacher_d0"]["cfg"]["init"] == params["teacher"]["bundled"]["mae"]
    # --students scratch mae keeps their runs, the MAE-student pretraining and the teachers, not GD
    kept = {j["name"] for j in cal.keep_students(jobs, ["scratch", "mae"])}
    assert {"teacher_mae_e40", "teacher_d0", "teacher_d1"} <= kept
    assert not any(n.startswith(("gd_", "g2sd", "kd", "sd_only")) for n in kept)
    assert any(n.startswith("mae_student_e") for n in kept) and any(n.startswith("scratch_") for n in kept)
    # G2SD needs GD (and GD the teacher's MAE): kept with it
    kept = {j["name"] for j in cal.keep_students(jobs, ["g2sd"])}
    assert gd["name"] in kept and not any(n.startswith(("scratch", "mae_student")) for n in kept)
    with pytest.raises(InputError, match="--teacher-mae-epochs must be >= 1, got 0"):
        cal.main(["--report-only", "--work", str(tmp_path), "--teacher-mae-epochs", "0", "--json", str(tmp_path / "c.json")])


def test_validity_and_regime_blocks():
    assert results.validity(None, "x.json") is None
    cal = {"split": "validation", "criteria": {"V1": {"what": "w", "value": 7.0, "threshold": ">= 3.0", "pass": True,
                                                      "extra": 1}}}
    assert results.validity(cal, "x.json") == {"source": "x.json", "split": "validation",
                                               "V1": {"what": "w", "value": 7.0, "threshold": ">= 3.0", "pass": True}}
    params = validate_params(load_profile(PROFILE), source=PROFILE)
    draw = {"labels": 1000, "per_class": 100, "labels_seed": 0, "sha256": "ab"}
    r = results.regime(params, {"label_draw": draw})
    assert r["labels"] == 1000 and r["unlabelled_images"] == 55_000 and r["draw_sha256"] == "ab"
    assert results.regime(params, {}) is None


def test_a_finetuned_teacher_is_bundled_alone_with_a_card_naming_its_labels(fmnist_available, tmp_path):
    from g2sd_lib import checkpoints
    from g2sd_lib.pipeline.teacher import bundle_teacher, obtain_teacher
    params = shrink(load_profile(PROFILE), images=256, batch=64, progress=False)
    params["teacher"]["mode"] = "finetune"
    obtain_teacher(params, tmp_path / "runs")
    out = bundle_teacher(params, tmp_path / "runs", dest_dir=tmp_path, prefix="labels")
    assert list(out["files"]) == ["classifier"] and not (tmp_path / "labels_mae.safetensors").exists()
    sha = out["files"]["classifier"]["sha256"]
    checkpoints.load_saved_model(tmp_path / "labels_classifier.safetensors", expected_sha256=sha)
    card = (tmp_path / "labels.md").read_text()
    draw = label_draw(params["data"])
    assert f"draw sha256 `{draw['sha256']}`" in card and "70 training images (7 per class" in card
    assert f"{100 * out['test']['top1']:.2f} %" in card and "`teacher.mode: finetune`" in card
    # the profile as committed (bundled mode) rebundles its classifier from a named run (the calibration's),
    # as benchmarks/README.md says: the same file, no MAE asked for
    params["teacher"]["mode"] = "bundled"
    again = bundle_teacher(params, tmp_path / "elsewhere", dest_dir=tmp_path / "again", prefix="labels",
                           finetune_run=tmp_path / "runs" / "teacher" / "finetune")
    assert list(again["files"]) == ["classifier"] and again["files"]["classifier"]["sha256"] == sha
    assert "from the pipeline's `finetune` mode" in (tmp_path / "again" / "labels.md").read_text()


def test_a_pretrained_and_finetuned_teacher_is_bundled_from_named_runs_with_its_labels(fmnist_available, tmp_path):
    """The label-scarce teacher of a calibration (its own MAE pretraining, then fine-tuning on the labels) is
    bundled from the calibration's two run directories: both files, the card naming the MAE's epochs and the draw."""
    from g2sd_lib.pipeline.teacher import bundle_teacher, obtain_teacher
    params = shrink(load_profile(PROFILE), images=256, batch=64, progress=False)
    params["teacher"]["mode"] = "train"
    obtain_teacher(params, tmp_path / "runs")
    params["teacher"]["mode"] = "bundled"  # the profile as committed
    runs = tmp_path / "runs" / "teacher"
    out = bundle_teacher(params, tmp_path / "elsewhere", dest_dir=tmp_path / "b", prefix="labels",
                         finetune_run=runs / "finetune", pretrain_run=runs / "pretrain")
    assert list(out["files"]) == ["mae", "classifier"]
    card = (tmp_path / "b" / "labels.md").read_text()
    assert "- MAE pretraining: 1 epochs" in card and "`teacher.mode: train`" in card and "pipeline's `train` mode" in card
    assert f"draw sha256 `{label_draw(params['data'])['sha256']}`" in card


def test_the_profile_loads_its_bundled_teacher_and_records_the_draw(fmnist_available, tmp_path):
    from g2sd_lib.pipeline.teacher import obtain_teacher
    params = shrink(load_profile(PROFILE), images=256, batch=64, progress=False)
    summary = obtain_teacher(params, tmp_path)  # bundled mode: both files sha256-checked
    assert summary["mode"] == "bundled" and summary["label_draw"]["labels"] == 70
    full = load_profile(PROFILE)
    text = (Path(__file__).resolve().parents[1] / "teachers" / "fmnist_1k_labels.md").read_text()
    assert full["teacher"]["bundled"]["classifier_sha256"] in text
    assert f"draw sha256 `{label_draw(full['data'])['sha256']}`" in text  # the card names the profile's own draw


def test_the_results_table_says_whether_the_criteria_passed():
    from g2sd_lib.pipeline.compare import headline_row
    summary = {"classification": {**_classification(g2sd=(0.76, 0.004), scratch=(0.72, 0.004)),
                                  "last_epoch_gain": {"g2sd": 0.001}}}
    summary["classification"]["students"]["g2sd"]["ratio_to_teacher"] = 0.95
    summary["classification"]["students"]["scratch"]["ratio_to_teacher"] = 0.90
    for s in summary["classification"]["students"].values():
        s["top1"] = s["top1_mean"]
    valid = {f"V{i}": {"pass": True} for i in range(1, 6)}
    assert headline_row("p", {**summary, "validity": valid})["valid test?"] == "yes: V1-V5 pass"
    valid["V2"]["pass"], valid["V4"]["pass"] = None, False
    assert headline_row("p", {**summary, "validity": valid})["valid test?"] == "no: V4 failed; V2 not measured"
    assert headline_row("p", summary)["valid test?"].startswith("not ruled out")  # no criteria: as before


def test_the_profile_quotes_only_what_its_calibrations_measured():
    """The profile explains its budget with numbers from the committed calibrations (two decimals, in points);
    a number that no calibration holds is stale prose."""
    repo = Path(__file__).resolve().parents[1]
    measured = {f"{v:.2f}" for path in (repo / "benchmarks/results/calibration").glob(f"{PROFILE}_*.json")
                for v in json_floats(json.loads(path.read_text()))}
    # the comments that say what a budget changed ("200 added 3.03-5.31 points"); settings and paper values aside
    comments = [line.split("#", 1)[1] for line in
                (repo / "g2sd_lib/pipeline/profiles" / f"{PROFILE}.yaml").read_text().splitlines()
                if "#" in line and " added " in line]
    quoted = {n for c in comments for n in re.findall(r"(?<![\d.])\d+\.\d\d(?![\d.])", c)}
    assert quoted, "the profile no longer explains its budget with the calibration's numbers"
    assert quoted <= measured, f"the profile quotes {sorted(quoted - measured)}, which no calibration measured"
