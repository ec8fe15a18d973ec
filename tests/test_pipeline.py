"""The whole pipeline on the smoke profile through real `dvc repro` and papermill, in a fresh copy
of the repository (new git repo, no DVC cache), then the notebooks under nbval in that copy."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ENTRY_TINY, shrink_parameters

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ["library", "teacher@smoke", "pretrain@smoke-gd", "pretrain@smoke-mae_student"] + [
    f"students@smoke-{s}" for s in ("g2sd", "gd_only", "sd_only", "mae", "scratch", "kd")] + [
    "evaluate@smoke", "report@smoke", "dense_data@smoke", "dense_teacher@smoke-segmentation",
    "dense_teacher@smoke-detection"] + [
    f"dense_students@smoke-{t}-{r}" for t in ("segmentation", "detection") for r in ("g2sd", "gd_only")] + [
    "dense_evaluate@smoke", "entry", "explore@smoke"]
PARAMS = "g2sd_lib/pipeline/profiles/smoke.yaml"  # the smoke profile's configuration, which its stages read
OUT = "reports/smoke"  # where they write

pytestmark = pytest.mark.slow


def _env(**extra):
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com", **extra}


def _sh(cmd, cwd, timeout=900, **env):
    p = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory, fmnist_available):
    """A fresh clone-like copy: the files git would clone, the materialised data, the pipeline
    running the smoke profile only (params.yaml `profiles: [smoke]`)."""
    dest = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    for generated in ("dvc.lock", "reports"):  # the committed results of the committed profiles
        p = dest / generated
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    _sh([sys.executable, "-m", "g2sd_lib.data", "fetch", "--dest", "data/fashion-mnist", "--source",
         str(fmnist_available)], dest)
    # the entry stage runs notebook 00 as stored, minutes of training: here at test_entry_notebook's tiny sizes
    shrink_parameters(dest / "notebooks/00_g2sd_in_10_minutes.ipynb", ENTRY_TINY)
    _sh(["git", "init", "-q"], dest)
    _sh([sys.executable, "-c", "from g2sd_lib.pipeline.profiles import set_profiles; set_profiles(['smoke'])"], dest)
    _sh(["git", "add", "-A"], dest)
    _sh(["git", "commit", "-qm", "fresh clone"], dest)
    # the command `make repro` runs; the smoke profile's concurrent_stages is 1: plain dvc repro (its stages are
    # mostly process start-up, which two at once on two cores only slows; tests/test_repro.py covers stages at once)
    log = _sh([sys.executable, "-m", "g2sd_lib.pipeline.repro", "smoke", "--json", "repro_times.json"], dest)
    return dest, log


def test_dvc_repro_runs_every_stage_and_writes_sane_reports(smoke_repo):
    repo, log = smoke_repo
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log, stage
    # the stages' logs are free of papermill's and ipykernel's noise (the runner: declared sections, encrypted kernel)
    assert "unknown parameter" not in log and "without encryption" not in log
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(STAGES) <= set(lock["stages"])
    assert json.loads((repo / "repro_times.json").read_text())["jobs"] == 1  # g2sd_lib.pipeline.repro's record
    # DVC records each run's section from both files: the profile's own lines and the base's values under them
    tracked = lock["stages"]["students@smoke-g2sd"]["params"]
    assert tracked["g2sd_lib/pipeline/profiles/base.yaml"]["students.g2sd"]["kind"] == "sd"
    assert tracked[PARAMS]["students.g2sd"] == yaml.safe_load((repo / PARAMS).read_text())["students"]["g2sd"]

    summary = json.loads((repo / OUT / "summary.json").read_text())["classification"]
    assert 0.0 <= summary["teacher"]["top1"] <= 1.0
    assert set(summary["students"]) == {"g2sd", "gd_only", "sd_only", "mae", "scratch", "kd"}
    for s in summary["students"].values():
        assert 0.0 <= s["top1"] <= 1.0 and s["top1"] == s["top1_mean"] and s["seeds"] == [0]
    # the smoke teacher is trained for one epoch on 1024 images: better than chance is all we ask
    assert summary["teacher"]["top1"] > 0.12

    for table in ("comparison", "ablation"):
        for ext in ("md", "csv", "tex"):
            assert (repo / OUT / f"tables/{table}.{ext}").stat().st_size > 100
    comparison = (repo / OUT / "tables/comparison.md").read_text()
    assert "98.7 % of teacher" in comparison and "unavailable" in comparison and "commit:" in comparison
    for fig in ("teacher/reconstructions.png", "pretrain/gd/feature_alignment.png", "pretrain/gd/curves.png",
                "pretrain/mae_student/reconstructions.png", "students/g2sd/curves.png",
                "attention/comparison.png", "attention/teacher.png", "attention/g2sd.png"):
        assert (repo / OUT / "figures" / fig).stat().st_size > 5000, fig
    for nb in ("01_teacher", "02_pretrain_gd", "03_student_kd", "04_evaluation", "05_report", "06_dense_data",
               "07_dense_detection_g2sd", "08_dense_evaluation"):
        assert (repo / OUT / f"notebooks/{nb}.ipynb").exists()
    assert (repo / "reports/notebooks/00_g2sd_in_10_minutes.ipynb").exists()
    budget = json.loads((repo / OUT / "summary.json").read_text())["budget"]  # every claim names its budget
    assert budget["students"]["g2sd"] == {"epochs": 1, "images_seen": 1024} and budget["seeds"] == [0]
    assert "1 epochs (1 024 images)" in (repo / OUT / "README.md").read_text()


def test_dense_stages_write_summary_tables_and_figures(smoke_repo):
    repo, _ = smoke_repo
    summary = json.loads((repo / OUT / "summary.json").read_text())
    for task, metric in (("segmentation", "miou"), ("detection", "box_ap")):
        sec = summary[task]
        assert summary["profile"] == "smoke"
        assert sec["metric"] == metric and 0.0 <= sec["teacher"][metric] <= 1.0
        assert set(sec["students"]) == {"g2sd", "gd_only"}
        for s in sec["students"].values():
            assert 0.0 <= s[metric] <= 1.0 and s["seeds"] == [0]
    dense = (repo / OUT / "tables/dense.md").read_text()
    assert "98.1 % of teacher" in dense and "99.3 % of teacher" in dense and "51.6 box AP" in dense
    assert "dense specific distillation helps after GD" in (repo / OUT / "tables/claims.md").read_text()
    for fig in ("canvases/examples.png", "predictions/segmentation.png", "predictions/detection.png",
                "segmentation/g2sd/curves.png", "detection/teacher/curves.png"):
        assert (repo / OUT / "figures/dense" / fig).stat().st_size > 5000, fig
    assert "## Dense tasks" in (repo / OUT / "README.md").read_text()


def test_second_repro_is_up_to_date(smoke_repo):
    repo, _ = smoke_repo
    log = _sh([str(BIN / "dvc"), "repro"], repo)
    assert "Running stage" not in log
    assert "up to date" in _sh([str(BIN / "dvc"), "status"], repo)


def test_changing_a_student_parameter_reruns_only_that_student(smoke_repo):
    repo, _ = smoke_repo
    params = repo / PARAMS
    original = params.read_text()
    try:
        params.write_text(original.replace("temperature: 4.0", "temperature: 2.0"))
        log = _sh([str(BIN / "dvc"), "repro", "--dry"], repo)
        assert "Running stage 'students@smoke-kd'" in log
        assert "Running stage 'students@smoke-g2sd'" not in log and "Running stage 'teacher@smoke'" not in log
        assert "Running stage 'dense_teacher@smoke-detection'" not in log
    finally:
        params.write_text(original)


def test_executed_notebooks_show_their_figures(smoke_repo):
    """Every cell that saves a figure also displays it: the executed notebooks are readable reports."""
    repo, _ = smoke_repo
    executed = sorted((repo / OUT / "notebooks").glob("*.ipynb")) + sorted((repo / "reports/notebooks").glob("*.ipynb"))
    assert len(executed) == 21  # 19 stage runs and the explorer of the profile, the (profile-free) entry notebook
    for path in executed:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code" and ".savefig(" in "".join(cell["source"]):
                shown = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
                assert shown, f"{path.name}: a cell saves a figure but shows none:\n{''.join(cell['source'])[:300]}"


def test_metrics_are_short_and_plots_cover_every_training_run(smoke_repo, tmp_path):
    repo, _ = smoke_repo
    dvc = str(BIN / "dvc")
    metrics = next(iter(json.loads(_sh([dvc, "metrics", "show", "--json"], repo)).values()))["data"]  # the workspace
    files = {path: m["data"] for path, m in metrics.items()}
    assert all(not isinstance(v, (dict, list)) for m in files.values() for v in m.values()), "flat files only"
    columns = {k for m in files.values() for k in m}
    assert len(columns) <= 10, sorted(columns)
    for run in ("teacher", "pretrain/gd", "students/kd", "test/g2sd", "dense/detection/g2sd",
                "dense/test/segmentation/teacher"):
        assert f"{OUT}/metrics/{run}.json" in files, run
    assert files[f"{OUT}/metrics/test/g2sd.json"]["of_teacher"] > 0
    widest = max(len(line) for line in _sh([dvc, "metrics", "show"], repo).splitlines())
    assert widest < 200, widest

    csvs = sorted(p.relative_to(repo).as_posix() for p in (repo / OUT / "plots").rglob("*.csv"))
    expected = [f"{OUT}/plots/{p}" for p in ("teacher/finetune.csv", "pretrain/gd.csv", "students/kd/seed0.csv",
                                              "dense/segmentation/teacher/seed0.csv", "dense/detection/gd_only/seed0.csv")]
    assert set(expected) <= set(csvs) and len(csvs) == 2 + 2 + 6 + 2 * 3
    plots = json.loads(_sh([dvc, "plots", "show", "--json"], repo))
    assert "errors" not in plots, plots.get("errors")
    rendered = {key.split("::")[-1] for key, items in plots["data"].items() for item in items
                if item["content"]["data"]["values"]}
    assert set(csvs) <= rendered, set(csvs) - rendered  # every run and seed has its curves
    _sh([dvc, "plots", "show", "-o", str(tmp_path / "plots")], repo)
    assert (tmp_path / "plots/index.html").stat().st_size > 10000


def test_dvc_exp_run_with_a_changed_parameter(smoke_repo):
    """`dvc exp run -S` on a parameter of the evaluation stage, on top of the committed results: only
    that stage and the report rerun, and `dvc exp show` lists the experiment, its parameter and metrics."""
    repo, _ = smoke_repo
    dvc = str(BIN / "dvc")
    _sh(["git", "add", "-A"], repo)
    _sh(["git", "commit", "-qm", "smoke results"], repo)
    log = _sh([dvc, "exp", "run", "-n", "attn2", "-S", f"{PARAMS}:evaluate.attention_images=2"], repo)
    assert set(re.findall(r"Running stage '([^']+)'", log)) == {"evaluate@smoke", "report@smoke"}, log[-2000:]
    exps = json.loads(_sh([dvc, "exp", "show", "--json"], repo))
    exp = next(e["revs"][0]["data"] for baseline in exps for e in baseline.get("experiments") or []
               if e["revs"][0].get("name") == "attn2")
    assert exp["params"][PARAMS]["data"]["evaluate"]["attention_images"] == 2
    assert 0 <= exp["metrics"][f"{OUT}/metrics/test/g2sd.json"]["data"]["top1"] <= 1
    changed = _sh([dvc, "exp", "show", "--only-changed", "--csv"], repo)
    assert "attn2" in changed and "evaluate.attention_images" in changed
    assert len(changed.splitlines()[0].split(",")) < 15  # only what the experiment changed


def test_notebooks_under_nbval_with_smoke_defaults(smoke_repo):
    """The committed notebooks, run as stored (no parameter injection: smoke defaults), in the
    pipeline copy's directory so that the evaluation notebook finds every student."""
    repo, _ = smoke_repo
    # the entry notebook 00 trains for minutes as stored: tests/test_entry_notebook.py runs it shrunk
    notebooks = [str(p) for p in sorted((REPO / "notebooks").glob("*.ipynb")) if not p.name.startswith("00_")]
    out = _sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
               "--nbval-current-env", *notebooks], repo, G2SD_WORKDIR=str(repo))
    assert "passed" in out and "failed" not in out


def test_dvc_repro_stops_on_modified_data_and_on_a_typo_in_plain_words(smoke_repo, tmp_path):
    """Two probes through the real pipeline, in a copy (a failed stage loses its outputs). A flipped
    byte in the training labels: DVC re-pins data.dvc (it records whatever data/ holds), then the
    first stage that reads the data stops with the file and the commands that restore it. A typo in
    params.yaml: the stage stops before any work with the key path and a did-you-mean."""
    repo = tmp_path / "probe"
    shutil.copytree(smoke_repo[0], repo, symlinks=True)
    dvc = str(BIN / "dvc")

    def repro():
        p = subprocess.run([dvc, "repro"], cwd=repo, env=_env(), capture_output=True, text=True, timeout=600)
        return p.returncode, p.stdout + p.stderr

    labels = repo / "data/fashion-mnist/train-labels-idx1-ubyte"
    original, pin = labels.read_bytes(), (repo / "data.dvc").read_text()
    labels.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
    code, out = repro()
    assert code != 0 and "is not the official Fashion-MNIST train-labels-idx1-ubyte" in out, out[-3000:]
    assert "make data" in out and "git checkout data.dvc" in out
    labels.write_bytes(original)
    (repo / "data.dvc").write_text(pin)

    params = (repo / PARAMS).read_text()
    (repo / PARAMS).write_text(params.replace("    train: {epochs:", "    train: {epcohs: 1, epochs:", 1))
    code, out = repro()
    assert code != 0 and "unknown key" in out and "did you mean 'epochs'" in out, out[-3000:]
    assert "---> " not in out and "g2sd_lib/pipeline/schema" not in out  # the message, not the notebook's traceback


def test_bundled_teacher_mode_pins_hashes(smoke_repo):
    """Bundle the teacher the pipeline trained, switch the teacher stage to `bundled` with the printed
    hashes: it reruns from the bundle; a changed byte in a bundled file stops it."""
    repo, _ = smoke_repo
    out = _sh([sys.executable, "-m", "g2sd_lib.pipeline.teacher", "bundle", "smoke"], repo)
    hashes = {name: json.loads((repo / f"teachers/fmnist_{name}.json").read_text())["sha256"]
              for name in ("mae", "classifier")}
    assert all(h in out for h in hashes.values())
    card = (repo / "teachers/fmnist.md").read_text()
    assert "test top-1" in card and hashes["mae"] in card
    # the machine that trained the teacher (the engine's record) travels with the bundle and its card
    trained = json.loads((repo / "runs/smoke/teacher/classifier.json").read_text())["machine"]
    assert json.loads((repo / "teachers/fmnist_classifier.json").read_text())["machine"] == trained
    assert f"- trained on: {trained}; bundled and evaluated on: " in card
    params = yaml.safe_load((repo / PARAMS).read_text())
    params["teacher"]["mode"] = "bundled"
    # the pins only: the files' paths are base.yaml's (teachers/fmnist_*), where the bundle wrote them
    params["teacher"].setdefault("bundled", {}).update(mae_sha256=hashes["mae"], classifier_sha256=hashes["classifier"])
    (repo / PARAMS).write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage 'teacher@smoke'" in _sh([str(BIN / "dvc"), "repro", "teacher@smoke"], repo)
    assert json.loads((repo / OUT / "results/teacher.json").read_text())["mode"] == "bundled"
    assert json.loads((repo / "runs/smoke/teacher/classifier.json").read_text())["machine"] == trained

    bundled = repo / "teachers/fmnist_classifier.safetensors"
    data = bytearray(bundled.read_bytes())
    data[-1] ^= 0xFF
    bundled.write_bytes(bytes(data))
    p = subprocess.run([str(BIN / "dvc"), "repro", "teacher@smoke", "--force"], cwd=repo, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode != 0 and "sha256" in p.stdout + p.stderr
