"""The report's summary, tables and metric files, on small hand-made evaluations."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from g2sd_lib.history import write_history
from g2sd_lib.pipeline import report, results

EVALUATION = {"teacher": {"top1": 0.8, "top5": 0.99, "params": 1000, "flops": 2e6},
              "students": {"g2sd": {"seeds": {"0": {"top1": 0.7, "top5": 0.98, "agreement": 0.9},
                                              "1": {"top1": 0.72, "top5": 0.97, "agreement": 0.8}},
                                    "params": 500, "flops": 1e6},
                           "kd": {"seeds": {"0": {"top1": 0.6, "top5": 0.9, "agreement": 0.7},
                                            "1": {"top1": 0.62, "top5": 0.92, "agreement": 0.75}},
                                  "params": 400, "flops": 1e6}}}
DENSE = {"tasks": {"segmentation": {"metric": "miou", "teacher": {"miou": 0.5, "aacc": 0.9, "params": 10},
                                    "students": {"g2sd": {"seeds": {"0": {"miou": 0.45, "aacc": 0.85}}, "params": 5}}}},
         "status": "trained"}


def test_one_summary_algorithm_for_classification_and_dense_tasks():
    summary = results.summarize(EVALUATION, DENSE)
    cls = summary["classification"]
    assert cls["teacher"] == {"top1": 0.8, "top5": 0.99}  # scores only, no parameter counts
    g2sd = cls["students"]["g2sd"]
    assert g2sd["top1"] == g2sd["top1_mean"] == pytest.approx(0.71)
    assert g2sd["top1_std"] == pytest.approx(0.0141421, abs=1e-6) and g2sd["seeds"] == [0, 1]
    assert g2sd["ratio_to_teacher"] == pytest.approx(0.71 / 0.8)
    assert g2sd["agreement"] == pytest.approx(0.85) and g2sd["top5"] == pytest.approx(0.975)
    seg = summary["segmentation"]
    assert seg["metric"] == "miou" and seg["teacher"] == {"miou": 0.5, "aacc": 0.9}
    assert seg["students"]["g2sd"]["miou_std"] == 0.0 and seg["students"]["g2sd"]["ratio_to_teacher"] == 0.9
    assert summary["detection"] == {"metric": "box_ap", "status": "trained"}  # not in this evaluation


def test_metrics_per_model_are_a_few_flat_numbers():
    files = results.metrics_per_model(results.summarize(EVALUATION)["classification"])
    assert files["teacher"] == {"top1": 0.8}
    assert set(files["g2sd"]) == {"top1", "top1_std", "of_teacher"}
    assert all(isinstance(v, float) for f in files.values() for v in f.values())


def test_claims_take_the_paper_numbers_from_paper():
    summary = results.summarize(EVALUATION)
    rows = report.claims_rows(summary)
    paper = report.PAPER["g2sd_ratio"][0]
    assert rows[0]["claim"] == f"the ViT-S student reaches {paper} % of its ViT-B teacher"
    assert rows[0]["paper"] == f"{paper} %" and rows[0]["holds at this budget"] == "no"  # 88.75 %
    kd = next(r for r in rows if "single-stage KD" in r["claim"])
    assert kd["holds at this budget"] == "yes" and kd["ours"].startswith("+10.00 points")


def test_a_teacher_that_scores_0_gives_no_share_and_the_report_still_renders():
    """A dense teacher at 0 box AP (a shrunk dry run, a broken recipe) leaves its students' share of it
    undefined: the tables and claims say n/a instead of failing the report stage."""
    dense = {"tasks": {"detection": {"metric": "box_ap", "teacher": {"box_ap": 0.0, "params": 10},
                                     "students": {"g2sd": {"seeds": {"0": {"box_ap": 0.0}}, "params": 5}}}},
             "status": "trained"}
    summary = results.summarize(EVALUATION, dense)
    assert summary["detection"]["students"]["g2sd"]["ratio_to_teacher"] is None
    rows = report.dense_rows(summary, dense)
    assert rows[-1]["% of teacher"] == "n/a" and report.share_text(None) == "n/a"
    claim = next(r for r in report.dense_claims_rows(summary) if "detection" in r["claim"].lower() or "COCO" in r["claim"])
    assert claim["holds at this budget"] == "no" and claim["ours"].startswith("n/a")


def test_write_table_markdown_csv_and_latex(tmp_path):
    rows = [{"method": "G2SD_x", "top-1 (%)": "71.00 ± 1.41", "% of teacher": "100.00"},
            {"method": "kd", "top-1 (%)": "61.00 ± 1.41", "% of teacher": "76.25"}]
    md, csv_path, tex = report.write_table(rows, tmp_path / "t", "Caption 50 %", {"commit": "abc", "seeds": "0, 1"})
    text = md.read_text()
    assert text.startswith("**Caption 50 %**") and "_Provenance: commit: abc; seeds: 0, 1_" in text
    assert "| 100.00 " in text  # formatted cells are kept as written, not re-parsed as numbers
    with open(csv_path, newline="") as f:
        assert list(csv.DictReader(f)) == rows
    latex = tex.read_text()
    assert "\\caption{Caption 50 \\%}" in latex and "G2SD\\_x" in latex and "71.00 $\\pm$ 1.41" in latex
    assert "\\% of teacher" in latex and "% Provenance: commit: abc" in latex and latex.rstrip().endswith("\\end{table}")


def test_write_history_puts_epoch_first(tmp_path):
    path = write_history([{"lr": 0.1, "epoch": 1, "train_loss": 2.0}, {"lr": 0.05, "epoch": 2, "train_loss": 1.5}],
                                tmp_path / "a" / "h.csv")
    assert path.read_text().splitlines() == ["epoch,lr,train_loss", "1,0.1,2.0", "2,0.05,1.5"]
    assert write_history([], tmp_path / "empty.csv").read_text() == "epoch,train_loss\n"


def test_comparison_shows_how_close_each_student_is_to_its_teacher():
    from g2sd_lib.pipeline.report import _closeness

    ev = {"seeds": {"0": {"top1": 0.7, "agreement": 0.8}, "1": {"top1": 0.7, "agreement": 0.9}},
          "attention_similarity": [0.2, 0.4, 0.65]}
    assert _closeness(ev) == {"agreement (%)": "85.00", "attention sim.": "0.65"}
    assert _closeness({"seeds": {"0": {"top1": 0.7}}}) == {"agreement (%)": "-", "attention sim.": "-"}


def test_profiles_side_by_side_name_their_budgets(tmp_path):
    from g2sd_lib.pipeline import compare
    from g2sd_lib.pipeline.config import budget
    from g2sd_lib.errors import UserError
    from g2sd_lib.pipeline.profiles import load_profile

    def summary(profile, teacher, g2sd, scratch):
        students = {name: {"top1_mean": m, "top1_std": 0.004, "ratio_to_teacher": m / teacher, "seeds": [0, 1, 2]}
                    for name, m in (("g2sd", g2sd), ("scratch", scratch))}
        return {"profile": profile, "budget": budget(load_profile(profile)),
                "classification": {"teacher": {"top1": teacher}, "students": students}}

    for profile, numbers in (("fmnist", (0.8644, 0.7463, 0.70)), ("gpu", (0.93, 0.91, 0.90))):
        (tmp_path / profile).mkdir()
        s = summary(profile, *numbers)
        if profile == "fmnist":  # the students' last-epoch gains, as the report stage records them
            s["classification"]["last_epoch_gain"] = {"g2sd": 0.0438, "scratch": 0.0736}
        (tmp_path / profile / "summary.json").write_text(json.dumps(s))
    page = compare.write_comparison(["fmnist", "gpu"], tmp_path).read_text()
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| fmnist") or line.startswith("| gpu")}
    assert "| +4.38 to +7.36 points " in rows["fmnist"] and "| not recorded " in rows["gpu"]
    assert "GD 4 epochs (220 000 images), SD / fine-tuning 2 epochs (110 000 images), 3 seed(s)" in page
    assert "GD 100 epochs (5 500 000 images)" in page  # the gpu profile's budget, in the same table
    assert "| gpu " in page and "91.00 ± 0.40" in page and "97.85 %" in page and "[gpu](gpu/README.md)" in page
    with pytest.raises(UserError, match="paper/summary.json is missing: run the paper profile first"):
        compare.write_comparison(["paper"], tmp_path)


def test_the_committed_profiles_page_is_what_the_committed_summaries_give(tmp_path, monkeypatch):
    """reports/README.md is generated (make repro runs g2sd_lib.pipeline.compare after dvc repro): regenerated
    from the committed summaries of the profiles params.yaml lists, it must not differ. Run from the
    repository root with the relative ``reports``, as make repro does: the page names its sources by
    that path (an absolute one would be LaTeX-escaped in the .tex, e.g. a checkout path with a ``_``)."""
    from g2sd_lib.pipeline import compare
    from g2sd_lib.pipeline.profiles import enabled_profiles

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    page = compare.write_comparison(enabled_profiles("params.yaml"), "reports", tmp_path / "README.md")
    assert (root / "reports/README.md").read_text() == page.read_text(), "stale: run python -m g2sd_lib.pipeline.compare"
    for ext in (".md", ".csv", ".tex"):
        committed = (root / "reports/tables/profiles").with_suffix(ext).read_text()
        assert committed == (tmp_path / "tables/profiles").with_suffix(ext).read_text()


def test_the_budget_counts_a_runs_own_training_subset():
    from g2sd_lib.pipeline.config import budget, budget_text
    from g2sd_lib.pipeline.profiles import load_profile
    params = load_profile("fmnist")
    params["students"]["common"]["data"] = {"train_subset": 20000}
    b = budget(params)
    assert b["students"]["g2sd"]["images_seen"] == 2 * 20000 and b["pretrain"]["gd"]["images_seen"] == 4 * 55000
    assert "SD / fine-tuning 2 epochs (40 000 images)" in budget_text(b)


def test_the_setting_table_names_the_g2sd_students_layer_decay():
    """The paper fine-tunes with layer decay 0.75; the table says what the profile's G2SD student uses."""
    from g2sd_lib.pipeline.profiles import load_profile
    for profile, expected in (("fmnist", "no layer decay"), ("paper", "layer decay 0.75")):
        params = load_profile(profile)
        sd = next(r for r in report.setting_rows(params, EVALUATION) if r[""] == "specific distillation")
        assert sd["paper"].endswith("layer decay 0.75") and sd["here"].endswith(expected), sd
    params["students"]["g2sd"]["task"]["layer_decay"] = 0.6  # the G2SD run's own value wins over common's
    sd = next(r for r in report.setting_rows(params, EVALUATION) if r[""] == "specific distillation")
    assert sd["here"].endswith("layer decay 0.6")


def test_last_epoch_gains_say_whether_the_runs_were_still_learning(tmp_path):
    """The gain between a run's last two validations, averaged over seeds, from the histories the training
    stages write to plots/; a gain of 0.3 points or more reads as not converged, a smaller one as no evidence."""
    from g2sd_lib.pipeline.results import last_epoch_gains, summarize

    def history(run, seed, values, metric="val_top1"):
        rows = [{"epoch": e + 1, "train_loss": 1.0, metric: v} for e, v in enumerate(values)]
        write_history(rows, tmp_path / "plots" / "students" / run / f"seed{seed}.csv")

    history("g2sd", 0, [0.70, 0.74]); history("g2sd", 1, [0.71, 0.77])
    history("scratch", 0, [0.86, 0.8610]); history("scratch", 1, [0.86, 0.8604])
    history("once", 0, [0.5])
    gains = last_epoch_gains(tmp_path / "plots" / "students", "val_top1")
    assert gains["g2sd"] == pytest.approx(0.05) and gains["scratch"] == pytest.approx(0.0007) and gains["once"] is None
    text = results.learning_text(gains, "students", "validation top-1")
    assert "changed by +0.07 to +5.00 points" in text and "g2sd still learning" in text and "not converged" in text
    flat = results.learning_text({"scratch": gains["scratch"]}, "students", "validation top-1")
    assert "+0.07 points" in flat and "only doubling the schedule would show convergence" in flat
    assert "all still learning" in results.learning_text({"g2sd": 0.05, "kd": 0.01}, "students", "validation top-1")
    assert "none shows" in results.learning_text({"once": None}, "students", "validation top-1")
    assert results.gain_span({}) is None

    # summarize() records them per section, from reports/<profile>/plots
    ev = {"teacher": {"top1": 0.9}, "students": {"g2sd": {"seeds": {"0": {"top1": 0.8}}}}}
    s = summarize(ev, plots=tmp_path / "plots")
    assert s["classification"]["last_epoch_gain"] == gains
    assert "last_epoch_gain" not in summarize(ev)["classification"]


def test_provenance_names_the_cpus_vector_unit_and_bf16(monkeypatch):
    """On a CPU, the last digits of the results depend on them (amp / teacher_amp auto: bf16 or fp32)."""
    from g2sd_lib import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, words in ((torch.bfloat16, "native bf16"), (None, "no native bf16")):
        monkeypatch.setattr(device, "autocast_dtype", lambda amp, dev, native=native: native)
        hardware = report.provenance("no/such/profile.yaml")["hardware"]
        assert f"({torch.backends.cpu.get_cpu_capability()}, {words}), {os.cpu_count()} CPUs" in hardware


def test_provenance_names_the_machines_that_trained_the_runs(tmp_path):
    """Not the machine rendering the report: a report rerun on a CPU after a GPU run keeps the GPU's name."""
    from g2sd_lib.pipeline.results import machines_text, trained_on

    (tmp_path / "a.json").write_text(json.dumps({"machine": "NVIDIA H200, 16 CPUs, torch 2.11"}))
    (tmp_path / "old.json").write_text(json.dumps({"arch": {}}))
    assert trained_on(tmp_path / "a.safetensors") == "NVIDIA H200, 16 CPUs, torch 2.11"
    assert trained_on(tmp_path / "old.safetensors") == trained_on(tmp_path / "none.safetensors") == "unknown"
    gpu = {"trained_on": {"s0": "GPU", "s1": "GPU"}}
    assert machines_text(gpu, {"trained_on": {"d0": "GPU"}}) == "GPU"
    assert machines_text(gpu, {"trained_on": {"d0": "CPU"}}) == "GPU (2 runs), CPU (1 run)"
    assert machines_text({"students": {}}, None) is None
    prov = report.provenance("no/such/profile.yaml", [0], trained_on="GPU")
    assert prov["trained on"] == "GPU" and "hardware" not in prov
