"""g2sd_lib.pipeline.repro: independent stages of a real DVC pipeline reproduced at once, in graph order, with
failures reported and the finished stages recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from g2sd_lib.pipeline import repro
from g2sd_lib.errors import UserError, run_main

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

PIPELINE = """
stages:
  first:
    cmd: echo base > base.txt
    outs: [base.txt]
  work:
    matrix:
      it: ${items}
    cmd: sleep 2 && cat base.txt > w_${item.it}.txt && echo ${item.it} >> w_${item.it}.txt
    deps: [base.txt]
    outs:
      - w_${item.it}.txt
  final:
    cmd: cat w_a.txt w_b.txt w_c.txt > final.txt
    deps: [w_a.txt, w_b.txt, w_c.txt]
    outs: [final.txt]
"""


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("items: [a, b, c]\n")
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    return tmp_path


def test_independent_stages_run_at_once_after_their_upstream_and_are_all_recorded(dvc_repo, capsys):
    assert repro.upstream_graph(["final"], dvc_repo) == {
        "first": set(), "work@a": {"first"}, "work@b": {"first"}, "work@c": {"first"},
        "final": {"work@a", "work@b", "work@c"}}
    result = repro.run(["final"], jobs=3, cwd=dvc_repo, json_path=dvc_repo / "t.json")
    t = result["stages"]
    assert all(t[s]["ran"] for s in t) and set(t) == {"first", "final", "work@a", "work@b", "work@c"}
    works = [t[f"work@{i}"] for i in "abc"]
    assert all(w["start"] >= t["first"]["end"] - 0.5 for w in works)  # after their upstream stage
    assert max(w["start"] for w in works) < min(w["end"] for w in works)  # the three at once
    assert t["final"]["start"] >= max(w["end"] for w in works) - 0.5
    assert "[work@b] Running stage 'work@b'" in capsys.readouterr().out  # lines prefixed by the stage
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(t)
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=dvc_repo, capture_output=True, text=True)
    assert "up to date" in status.stdout
    assert repro.run(["final"], jobs=2, cwd=dvc_repo)["stages"]["final"]["ran"] is False  # nothing to do


def test_a_data_source_is_verified_and_cached_as_plain_dvc_repro_does(dvc_repo):
    """A fresh clone: the pinned directory (data.dvc there, src.dvc here) is in the workspace but not in
    DVC's cache. Plain `dvc repro` stores it; the stages run one by one must too, so that `dvc status`
    reads up to date afterwards."""
    (dvc_repo / "src").mkdir()
    (dvc_repo / "src" / "a.txt").write_text("source\n")
    subprocess.run([str(BIN / "dvc"), "add", "-q", "src"], cwd=dvc_repo, check=True)
    (dvc_repo / "dvc.yaml").write_text(PIPELINE.replace("cmd: echo base > base.txt", "cmd: cat src/a.txt > base.txt\n"
                                                        "    deps: [src]"))
    subprocess.run(["rm", "-rf", ".dvc/cache"], cwd=dvc_repo, check=True)
    dvc_status = [str(BIN / "dvc"), "status"]
    assert "not in cache" in subprocess.run(dvc_status, cwd=dvc_repo, capture_output=True, text=True).stdout
    assert repro.pipeline_stages(["final"], dvc_repo)[1] == ["src.dvc"]
    repro.run(["final"], jobs=2, cwd=dvc_repo)
    assert (dvc_repo / "final.txt").read_text().split()[:2] == ["source", "a"]
    assert "up to date" in subprocess.run(dvc_status, cwd=dvc_repo, capture_output=True, text=True).stdout


def test_a_failed_stage_is_named_and_the_others_are_kept(dvc_repo):
    (dvc_repo / "dvc.yaml").write_text(PIPELINE.replace("echo ${item.it} >>", "test ${item.it} != b && echo ${item.it} >>"))
    with pytest.raises(UserError, match=r"(?s)stage work@b failed \(exit \d+\).*exited with 1.*run the same command again"):
        repro.run(["final"], jobs=3, cwd=dvc_repo)
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert {"first", "work@a", "work@c"} <= set(lock["stages"]) and "final" not in lock["stages"]


def test_one_job_is_plain_dvc_repro_and_a_bad_count_is_refused(dvc_repo):
    assert repro.run(["final"], jobs=1, cwd=dvc_repo)["jobs"] == 1
    assert (dvc_repo / "final.txt").read_text().split() == ["base", "a", "base", "b", "base", "c"]
    with pytest.raises(UserError, match="--jobs must be >= 1"):
        repro.run(["final"], jobs=0, cwd=dvc_repo)


def test_the_command_refuses_an_unlisted_profile_an_unknown_stage_and_zero_jobs(dvc_repo, monkeypatch, capsys):
    """Each mistake stops before any stage runs, with the fix; none reaches DVC's traceback."""
    monkeypatch.chdir(dvc_repo)
    monkeypatch.setattr(repro.signal, "signal", lambda *args: None)  # main's SIGTERM handler: not in pytest
    (dvc_repo / "params.yaml").write_text("items: [a, b, c]\nprofiles: [fmnist]\n")
    with pytest.raises(SystemExit) as e:
        run_main(repro.main, ["gpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert ("profile 'gpu' is not listed in params.yaml (profiles: [fmnist]): run `python -m g2sd_lib.pipeline.profiles "
            "enable gpu` or `make repro P=gpu`") in err
    with pytest.raises(UserError, match=r"no stage 'nosuch@fmnist' in dvc.yaml; `dvc stage list` lists them"):
        repro.main(["fmnist", "--jobs", "2", "--targets", "nosuch@fmnist"])
    with pytest.raises(UserError, match="--jobs must be >= 1, got 0"):  # not the profile's default
        repro.main(["fmnist", "--jobs", "0", "--targets", "final"])
    assert not (dvc_repo / "base.txt").exists()


def test_a_gpu_profile_with_stages_to_run_stops_on_a_machine_without_a_gpu(dvc_repo, monkeypatch):
    """`make repro P=gpu` on a laptop would train for hours: refused, naming the stages and --allow-cpu;
    with --allow-cpu it runs, and once everything is up to date there is nothing to refuse."""
    monkeypatch.chdir(dvc_repo)
    monkeypatch.setattr(repro.signal, "signal", lambda *args: None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    (dvc_repo / "params.yaml").write_text("items: [a, b, c]\nprofiles: [gpu]\n")
    with pytest.raises(UserError) as e:
        repro.main(["gpu", "--targets", "final"])
    assert ("the 'gpu' profile is sized for GPUs and no CUDA GPU is visible here: its 5 stages to run (final, first, "
            "work@a, work@b and 1 more) would train on this CPU for hours") in str(e.value)
    assert "--allow-cpu" in str(e.value) and not (dvc_repo / "base.txt").exists()
    with pytest.raises(UserError, match="no stage 'nosuch@gpu' in dvc.yaml"):
        repro.main(["gpu", "--targets", "nosuch@gpu"])
    assert repro.main(["gpu", "--targets", "final", "--allow-cpu"]) == 0 and (dvc_repo / "final.txt").exists()
    assert repro.stages_to_run(["final"]) == []
    assert repro.main(["gpu", "--targets", "final"]) == 0  # up to date: nothing trains, nothing to refuse
    with pytest.raises(UserError, match="its 5 stages to run"):
        repro.main(["gpu", "--targets", "final", "--force"])
    assert repro.main(["fmnist", "--targets", "final", "--force"]) == 0  # a CPU profile is never stopped
    # the profile-free stages (the library stamp, the entry notebook) are sized for a CPU
    monkeypatch.setattr(repro, "stages_to_run", lambda *args, **kwargs: ["entry", "library"])
    repro.refuse_a_gpu_profile_on_cpu("gpu", ["report@gpu"])
    monkeypatch.setattr(repro, "stages_to_run", lambda *args, **kwargs: ["entry", "students@gpu-kd"])
    with pytest.raises(UserError, match=r"its 1 stage to run \(students@gpu-kd\) would train"):
        repro.refuse_a_gpu_profile_on_cpu("gpu", ["report@gpu"])


def test_the_pipelines_graph_orders_every_profile_stage_after_its_inputs():
    """The graph g2sd_lib.pipeline.repro schedules from, on this repository's dvc.yaml (fmnist, listed in
    params.yaml): every stage of the profile, data.dvc left out, each after the stages it reads."""
    root = Path(__file__).resolve().parents[1]
    graph = repro.upstream_graph(repro.profile_targets("fmnist"), root)
    assert "data.dvc" not in graph and graph["library"] == set()
    assert graph["students@fmnist-g2sd"] >= {"library", "teacher@fmnist", "pretrain@fmnist-gd"}
    assert graph["dense_students@fmnist-detection-g2sd"] >= {"dense_teacher@fmnist-detection", "pretrain@fmnist-gd"}
    assert {f"students@fmnist-{s}" for s in ("g2sd", "gd_only", "sd_only", "mae", "scratch", "kd")} <= graph["evaluate@fmnist"]
    assert graph["report@fmnist"] >= {"evaluate@fmnist", "dense_evaluate@fmnist"}
    independent = [s for s in graph if s.startswith("students@fmnist-")]
    assert all(not (graph[a] & {b}) for a in independent for b in independent)  # the six can run at once


def test_the_longest_chains_of_work_start_first(tmp_path):
    """Critical-path order: by depth without a record, by the last run's durations with one; a record
    that cannot be read counts as none."""
    upstream = {"teacher": set(), "gd": {"teacher"}, "student": {"gd"}, "report": {"student"}, "entry": set()}
    depth = repro.start_priority(upstream)
    assert depth == {"teacher": 4, "gd": 3, "student": 2, "report": 1, "entry": 1}
    timed = repro.start_priority(upstream, {"teacher": 10, "gd": 100, "student": 300, "report": 5, "entry": 600})
    assert timed["entry"] == 600 and timed["teacher"] == 415 and timed["gd"] == 405
    assert repro.start_priority(upstream, {"gd": 100, "student": 300})["teacher"] == 200 + 100 + 300 + 200
    record = tmp_path / "t.json"
    record.write_text(json.dumps({"stages": {"gd": {"seconds": 90.0, "ran": True},
                                             "report": {"seconds": 0.5, "ran": False}}}))
    assert repro.previous_seconds(record) == {"gd": 90.0}  # a stage that was up to date says nothing
    record.write_text("{not json")
    assert repro.previous_seconds(record) == {} and repro.previous_seconds(tmp_path / "none.json") == {}


def test_a_first_run_is_ordered_by_the_committed_measurement(tmp_path):
    """A fresh clone has no record of its own: the committed pipeline_<profile>.json orders it, so the
    longest student stages (those with a teacher forward) start before the short ones."""
    seconds = repro.committed_seconds("fmnist", REPO)
    assert seconds["students@fmnist-sd_only"] > seconds["students@fmnist-scratch"] > 0
    assert repro.committed_seconds("fmnist", tmp_path) == {}  # no measurement: the order by depth
    upstream, _ = repro.pipeline_stages(["report@fmnist"], REPO)
    priority = repro.start_priority(upstream, seconds)
    students = sorted((s for s in upstream if s.startswith("students@")), key=lambda s: -priority[s])
    assert students.index("students@fmnist-sd_only") < students.index("students@fmnist-scratch")


def test_force_reruns_stages_that_are_up_to_date(dvc_repo):
    repro.run(["final"], jobs=2, cwd=dvc_repo)
    again = repro.run(["final"], jobs=2, cwd=dvc_repo, force=True)["stages"]
    assert all(t["ran"] for t in again.values()) and len(again) == 5


def _ended(pid: int, within: float) -> bool:
    """Whether process ``pid`` ends within ``within`` seconds (a zombie has ended: only its parent's
    reaping is left, which under load, or with a container's init, can take a while)."""
    import time

    deadline = time.time() + within
    while True:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state == "Z":
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.2)


def test_a_stopped_run_ends_its_stages_processes_and_keeps_the_record(dvc_repo):
    """SIGTERM (a time limit) stops every running stage with its child processes, and the record
    written each time a stage ends keeps the stages that finished."""
    import signal
    import time

    (dvc_repo / "dvc.yaml").write_text("""
stages:
  fast:
    cmd: echo done > fast.txt
    outs: [fast.txt]
  slow:
    cmd: sh -c 'echo $$ > slow.pid; exec sleep 60' && touch slow.txt
    outs: [slow.txt]
""")
    record = dvc_repo / "t.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "g2sd_lib.pipeline.repro", "smoke", "--jobs", "2", "--targets", "fast",
                             "slow", "--json", str(record)], cwd=dvc_repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (record.exists() and (dvc_repo / "slow.pid").exists()):
        time.sleep(0.2)
    assert record.exists(), proc.communicate(timeout=30)[0]
    sleeper = int((dvc_repo / "slow.pid").read_text())
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 143 and "Traceback" not in out, out  # as a shell reports SIGTERM
    assert out.splitlines()[-1].startswith("stopped by SIGTERM: ") and out.splitlines()[-1].endswith(
        "run the same command again to resume from there"), out
    kept = json.loads(record.read_text())
    assert set(kept["stages"]) == {"fast"} and kept["stopped"] == ["slow"] and kept["complete"] is False
    # the stage's own child, not only dvc, was stopped: gone, or a zombie its new parent has not reaped yet
    assert _ended(sleeper, within=15), f"process {sleeper} of the stopped stage still runs"
