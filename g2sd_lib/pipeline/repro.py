"""``dvc repro`` with independent stages at once: ``python -m g2sd_lib.pipeline.repro PROFILE [--jobs N]``.

DVC runs a pipeline's stages one after the other. That leaves a GPU mostly idle (each of the `gpu`
profile's small runs is bound by launching kernels, not by the GPU) and a 2-core CPU partly so (one
small run does not use two cores fully), while the six student stages (and the dense branch) do not
depend on each other. DVC's documentation allows several ``dvc repro`` processes on independent
stages of one repository at once (its locks keep them apart), so this runs ``dvc repro --single-item
STAGE`` for up to ``jobs`` stages whose upstream stages are done, the longest chains of work first
(:func:`start_priority`), each stage's processes on their share of the CPU cores
(:func:`g2sd_lib.device.cpu_threads`). Each stage's lines are echoed prefixed by its name. When a
stage fails, no new stage starts, the running ones finish (their results are recorded), and the
failure is reported with the end of its output; Ctrl-C or SIGTERM stops every stage with all its
processes (training runs resume from their ``last.pt``). ``--json`` writes when each stage started and
ended, and whether it ran, each time a stage ends, so a run that is stopped keeps its record. Without
such a record (a first run, a fresh clone) the stages are ordered by the durations of the profile's
committed whole-pipeline measurement (:data:`COMMITTED_TIMES`) when there is one.

``--jobs`` defaults to the profile's ``concurrent_stages`` (4 for `gpu`, 2 for `fmnist`, else 1); with 1 this is
plain ``dvc repro`` of the same targets. The targets are the profile's report and explorer stages
and the entry notebook (everything ``make repro P=...`` regenerates), or those named with
``--targets``.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import UserError

LOCK_BUSY = "Unable to acquire lock"  # DVC's message when another process holds the repository lock
# profiles sized for GPUs: on a CPU, their stages would train for hours (gpu) or days (paper)
GPU_PROFILES = ("gpu", "paper")


def profile_targets(profile: str) -> list[str]:
    return [f"report@{profile}", f"explore@{profile}", "entry"]


def upstream_graph(targets: list[str], repo_dir=".") -> dict[str, set[str]]:
    """``{stage: the stages it depends on}`` for the targets and everything upstream of them; stages
    without a command (``data.dvc``) are left out, as they have nothing to run."""
    return pipeline_stages(targets, repo_dir)[0]


def pipeline_stages(targets: list[str], repo_dir=".") -> tuple[dict[str, set[str]], list[str]]:
    """:func:`upstream_graph`, and the data sources upstream of the targets: the stages without a
    command (``data.dvc``), which plain ``dvc repro`` verifies and stores in the DVC cache."""
    import networkx as nx
    from dvc.exceptions import NoOutputOrStageError
    from dvc.repo import Repo
    from dvc.stage.exceptions import StageNotFound

    with contextlib.chdir(repo_dir), Repo(".") as repo:  # targets resolve against the working directory
        graph = repo.index.graph  # edges point from a stage to the stages whose outputs it reads
        wanted = set()
        for target in targets:
            try:
                stages = repo.stage.collect(target)
            except (StageNotFound, NoOutputOrStageError) as e:
                raise UserError(f"no stage {target!r} in dvc.yaml; `dvc stage list` lists them") from e
            for stage in stages:
                wanted |= {stage, *nx.descendants(graph, stage)}
        runnable = {s for s in wanted if getattr(s, "cmd", None)}
        return ({s.addressing: {d.addressing for d in graph.successors(s) if d in runnable} for s in runnable},
                sorted(s.addressing for s in wanted - runnable))


def start_priority(upstream: dict[str, set[str]], seconds: dict[str, float] | None = None) -> dict[str, float]:
    """Each stage's priority among the ready ones: the longest chain of work from its start to the end
    of the pipeline, its own seconds plus the longest of its downstream stages' chains (list
    scheduling by critical path). ``seconds`` are the stages' durations in the last run (its
    ``--json`` record); without one every stage counts 1, so the deepest chains start first. A short
    stage that nothing waits for (the entry notebook) starts only when no longer chain is ready; the
    choice is greedy, so it still takes a slot that would otherwise wait for an upstream stage."""
    seconds = seconds or {}
    default = sum(seconds.values()) / len(seconds) if seconds else 1.0
    downstream = {name: set() for name in upstream}
    for name, ups in upstream.items():
        for up in ups:
            downstream[up].add(name)
    chain = {}

    def length(name):
        if name not in chain:
            chain[name] = seconds.get(name, default) + max((length(d) for d in downstream[name]), default=0.0)
        return chain[name]

    return {name: length(name) for name in upstream}


COMMITTED_TIMES = "benchmarks/results/pipeline_{profile}.json"  # benchmarks/pipeline_time.py --json, committed


def stages_to_run(targets: list[str], repo_dir=".", force: bool = False) -> list[str]:
    """The stages a reproduction of ``targets`` would run: every one upstream of them with ``force``,
    else those ``dvc status`` finds changed (their commands, dependencies or outputs)."""
    from dvc.repo import Repo

    stages = upstream_graph(targets, repo_dir)  # an unknown target is refused here, with the fix
    if force:
        return sorted(stages)
    with contextlib.chdir(repo_dir), Repo(".") as repo:
        changed = repo.status(targets=targets, with_deps=True)
    return sorted(name.split(":")[-1] for name in changed if not name.endswith(".dvc"))


def refuse_a_gpu_profile_on_cpu(profile: str, targets: list[str], force: bool = False) -> None:
    """Stop before a `gpu` or `paper` profile's stages start training on a machine without a CUDA GPU,
    naming the stages and the way to go ahead anyway; nothing to run is no reason to stop."""
    import torch

    if profile not in GPU_PROFILES or torch.cuda.is_available():
        return
    # the profile-free stages are sized for a CPU: the library stamp (instant) and the entry notebook (minutes)
    stale = [name for name in stages_to_run(targets, force=force) if name not in ("library", "entry")]
    if stale:
        shown = ", ".join(stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
        raise UserError(f"the {profile!r} profile is sized for GPUs and no CUDA GPU is visible here: its "
                        f"{len(stale)} stage{'s' * (len(stale) > 1)} to run ({shown}) would train on this CPU for "
                        "hours. Run it on a machine "
                        f"with a GPU, or add --allow-cpu (`python -m g2sd_lib.pipeline.repro {profile} --allow-cpu`) to train "
                        "here anyway")


def committed_seconds(profile: str, repo_dir=".") -> dict[str, float]:
    """The stage durations of the profile's committed whole-pipeline measurement
    (:data:`COMMITTED_TIMES`; empty when it is missing or unreadable): a first run's order."""
    try:
        stages = json.loads((Path(repo_dir) / COMMITTED_TIMES.format(profile=profile)).read_text())["stages"]
        return {t["stage"]: float(t["seconds"]) for t in stages}
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        return {}


def previous_seconds(json_path) -> dict[str, float]:
    """The seconds of the stages that ran in the run recorded at ``json_path`` (none: empty)."""
    try:
        stages = json.loads(Path(json_path).read_text())["stages"]
        return {name: float(t["seconds"]) for name, t in stages.items() if t.get("ran")}
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        return {}


def _dvc() -> str:
    here = Path(sys.executable).with_name("dvc")
    return str(here) if here.exists() else (shutil.which("dvc") or "dvc")


class _Stage:
    """One ``dvc repro -s`` process, its output echoed with a prefix and kept for the failure message."""

    def __init__(self, name: str, dvc: str, cwd, jobs: int, flags: list[str]):
        self.name, self.lines, self.start = name, [], time.time()
        # each stage's processes take their share of the CPU cores (g2sd_lib.device.cpu_threads)
        env = {**os.environ, "G2SD_CONCURRENT_STAGES": str(jobs)}
        cmd = [dvc, "repro", "--single-item", *flags, name]
        # its own process group, so that stopping it reaches the notebook kernel and the training processes
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, env=env, start_new_session=True)
        self.reader = threading.Thread(target=self._echo, daemon=True)
        self.reader.start()

    def _echo(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            print(f"[{self.name}] {line}", end="", flush=True)

    def finished(self) -> bool:
        if self.proc.poll() is None:
            return False
        self.reader.join()
        return True

    def stop(self, sig=signal.SIGTERM) -> None:
        """Send ``sig`` to the stage's whole process group (dvc, papermill, the kernel, its training runs)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def end_group(self, timeout: float = 10.0) -> None:
        """Once ``dvc`` has exited, give what is left of its group ``timeout`` seconds to end, then SIGKILL."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)
        self.stop(signal.SIGKILL)

    def lock_busy(self) -> bool:
        return self.proc.returncode != 0 and any(LOCK_BUSY in line for line in self.lines)


def run(targets: list[str], jobs: int, cwd=".", json_path=None, lock_retries: int = 10, force: bool = False,
        fallback_seconds: dict[str, float] | None = None) -> dict:
    """Reproduce ``targets`` with up to ``jobs`` stages at once, the longest chains first (by the
    durations ``json_path`` recorded last time or, without that record, ``fallback_seconds``:
    :func:`start_priority`); returns (and writes there) the timings."""
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    dvc, t0, flags = _dvc(), time.time(), ["--force"] if force else []
    if jobs == 1:
        code = subprocess.run([dvc, "repro", *flags, *targets], cwd=cwd).returncode
        result = {"targets": targets, "jobs": 1, "seconds": time.time() - t0, "stages": {}, "failed": code != 0}
        _write(json_path, result)
        if code != 0:
            raise UserError(f"dvc repro {' '.join(targets)} failed (exit {code}); its output is above")
        return result
    upstream, sources = pipeline_stages(targets, cwd)
    # `dvc repro --single-item STAGE` skips the data sources that plain `dvc repro` verifies and caches
    # (data.dvc would stay "not in cache" in `dvc status`): they go first, at once (they run nothing)
    if sources and subprocess.run([dvc, "repro", "--single-item", *sources], cwd=cwd).returncode != 0:
        raise UserError(f"dvc repro of the data source(s) {', '.join(sources)} failed; its output is above")
    priority = start_priority(upstream, (previous_seconds(json_path) if json_path else {}) or fallback_seconds)
    todo, running, done, failed, timings, retries = set(upstream), {}, set(), None, {}, {}

    def record(complete: bool) -> dict:
        return {"targets": targets, "jobs": jobs, "seconds": time.time() - t0, "stages": timings,
                "failed": failed[0] if failed else None, "complete": complete}

    print(f"g2sd_lib.pipeline.repro: {len(upstream)} stages, up to {jobs} at once", flush=True)
    try:
        while running or (todo and failed is None):
            ready = sorted((s for s in todo if upstream[s] <= done), key=lambda s: (-priority[s], s))
            while failed is None and ready and len(running) < jobs:
                name = ready.pop(0)
                todo.discard(name)
                running[name] = _Stage(name, dvc, cwd, jobs, flags)
            if not running:
                break
            time.sleep(0.2)
            for name, stage in list(running.items()):
                if not stage.finished():
                    continue
                del running[name]
                if stage.lock_busy() and retries.get(name, 0) < lock_retries:  # a moment of contention: again
                    retries[name] = retries.get(name, 0) + 1
                    todo.add(name)
                    time.sleep(1.0)
                    continue
                ran = any(line.startswith(f"Running stage '{name}'") for line in stage.lines)
                timings[name] = {"start": stage.start - t0, "end": time.time() - t0,
                                 "seconds": time.time() - stage.start, "ran": ran}
                if stage.proc.returncode == 0:
                    done.add(name)
                elif failed is None:
                    failed = (name, stage.proc.returncode, stage.lines[-20:])
                _write(json_path, record(complete=False))  # kept if the run is stopped
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through g2sd_lib.errors.run_main
        for stage in running.values():
            stage.stop()
        for stage in running.values():
            try:
                stage.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stage.stop(signal.SIGKILL)
            stage.end_group()  # the kernel and training runs below dvc, not only dvc itself
        _write(json_path, {**record(complete=False), "stopped": sorted(running)})
        raise
    result = record(complete=True)
    _write(json_path, result)
    if failed:
        name, code, tail = failed
        raise UserError(f"stage {name} failed (exit {code}); the end of its output:\n" + "\n".join(tail)
                        + "\nthe stages that finished are recorded; fix the cause and run the same command again")
    if todo:
        raise UserError(f"stages never became ready (a cycle?): {', '.join(sorted(todo))}")
    print(f"g2sd_lib.pipeline.repro: {len(done)} stages up to date in {result['seconds'] / 60:.1f} min "
          f"({sum(t['ran'] for t in timings.values())} ran)", flush=True)
    return result


def _write(path, result):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))


def main(argv=None) -> int:
    from .profiles import PIPELINE_PARAMS, PROFILES, enabled_profiles, load_profile

    p = argparse.ArgumentParser(prog="python -m g2sd_lib.pipeline.repro", description=__doc__.split("\n\n")[0])
    p.add_argument("profile", choices=PROFILES, help="whose stages (it must be listed in params.yaml)")
    p.add_argument("--jobs", type=int, help="stages at once (default: the profile's concurrent_stages)")
    p.add_argument("--targets", nargs="+", help="stages to reproduce (default: report@P explore@P entry)")
    p.add_argument("--force", action="store_true", help="rerun every stage, changed or not (dvc repro --force)")
    p.add_argument("--json", help="write each stage's start, end and whether it ran; the durations recorded "
                   "there last time order the next run's stages")
    p.add_argument("--allow-cpu", action="store_true",
                   help=f"train a GPU profile ({', '.join(GPU_PROFILES)}) on a machine without a CUDA GPU (hours)")
    args = p.parse_args(argv)
    listed = enabled_profiles() if Path(PIPELINE_PARAMS).is_file() else []
    if not args.targets and args.profile not in listed:  # dvc.yaml has its stages only when listed
        raise UserError(f"profile {args.profile!r} is not listed in {PIPELINE_PARAMS} (profiles: "
                        f"[{', '.join(listed)}]): run `python -m g2sd_lib.pipeline.profiles enable {args.profile}` or "
                        f"`make repro P={args.profile}`")
    jobs = args.jobs if args.jobs is not None else load_profile(args.profile).get("concurrent_stages") or 1
    targets = args.targets or profile_targets(args.profile)
    if not args.allow_cpu:
        refuse_a_gpu_profile_on_cpu(args.profile, targets, args.force)
    run(targets, jobs, json_path=args.json, force=args.force, fallback_seconds=committed_seconds(args.profile))
    return 0


if __name__ == "__main__":
    from ..errors import run_main
    run_main(main)
