"""Wall time per stage and peak memory of a whole `dvc repro`.

Runs `dvc repro` (extra arguments are passed on, e.g. `--force`) in the current repository, notes
when each stage starts from DVC's "Running stage" lines, and samples the resident memory of the
whole process tree (dvc, papermill, kernels, torchrun workers) every 0.2 s. Prints a Markdown
table and, with --json, writes the measurements.

    python benchmarks/pipeline_time.py --json benchmarks/results/pipeline_fmnist.json   # every listed profile

``--profile P`` without target stages measures what ``make repro P=P`` reproduces: ``report@P
explore@P entry``.

With ``--jobs N`` (N > 1) it runs the stages as ``make repro`` does for a profile whose
``concurrent_stages`` is N: ``python -m g2sd_lib.pipeline.repro PROFILE --jobs N --targets ...``, N
independent stages at once (``--force`` reruns them all), in the order of a first run (no earlier
record of durations) or, with ``--record runs/P/repro_times.json``, in the order the last run's
record gives, as a second ``make repro`` does. Each stage's start and end then come from that
command's own record, the stages overlap (their minutes add up to more than the total), and the
memory is the peak of the whole tree only.

    python benchmarks/pipeline_time.py --jobs 2 --profile fmnist --json benchmarks/results/pipeline_fmnist.json \
        report@fmnist explore@fmnist entry
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from g2sd_lib.device import hardware
from g2sd_lib.pipeline.profiles import PROFILES, enabled_profiles
from g2sd_lib.pipeline.repro import profile_targets

STAGE = re.compile(r"Running stage '([^']+)'")


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], record: Path | None = None) -> dict:
    """Run ``cmd`` and time its stages: from consecutive "Running stage" lines, or from ``record``
    (the ``--json`` that ``python -m g2sd_lib.pipeline.repro`` writes) when given."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = {"total": 0, "stage": {}}
    current = {"stage": None}
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss = _tree_rss(ps)
            peak["total"] = max(peak["total"], rss)
            if current["stage"] and record is None:
                peak["stage"][current["stage"]] = max(peak["stage"].get(current["stage"], 0), rss)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    starts = []
    for line in proc.stdout:
        sys.stdout.write(line)
        m = STAGE.search(line)
        if m:
            starts.append((m.group(1), time.time()))
            current["stage"] = m.group(1)
    proc.wait()
    end = time.time()
    done.set()
    stages = []
    if record is not None:
        ran = json.loads(record.read_text())["stages"] if record.exists() else {}
        for name, _ in starts:  # the stages that ran, in the order they started
            t = ran.get(name, {})
            stages.append({"stage": name, "start_seconds": t.get("start"), "seconds": t.get("seconds"),
                           "peak_rss_mb": None})
    else:
        for i, (name, t0) in enumerate(starts):
            t1 = starts[i + 1][1] if i + 1 < len(starts) else end
            stages.append({"stage": name, "seconds": t1 - t0, "peak_rss_mb": peak["stage"].get(name, 0) / 2**20})
    return {"returncode": proc.returncode, "total_seconds": end - start, "peak_rss_mb": peak["total"] / 2**20,
            "stages": stages}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stages at once, through g2sd_lib.pipeline.repro (default 1: dvc repro)")
    parser.add_argument("--profile", choices=PROFILES,
                        help="the profile to measure, one params.yaml lists: without target stages, its report, "
                        "its explorer and the entry notebook, as make repro (needed with --jobs > 1)")
    parser.add_argument("--record", type=Path, help="with --jobs > 1: g2sd_lib.pipeline.repro's record of stage durations, "
                        "read to order the stages and rewritten, as make repro's runs/<P>/repro_times.json (default: "
                        "a new one, the order of a first run)")
    args, dvc_args = parser.parse_known_args(argv)
    if args.profile and args.profile not in enabled_profiles():
        parser.error(f"params.yaml does not list the profile {args.profile!r}, so dvc.yaml has no stage of it: "
                     f"run `python -m g2sd_lib.pipeline.profiles enable {args.profile}` first")
    if args.profile and not [a for a in dvc_args if not a.startswith("-")]:
        dvc_args += profile_targets(args.profile)  # what make repro reproduces
    if args.jobs > 1:
        if not args.profile:
            parser.error("--jobs > 1 needs --profile (g2sd_lib.pipeline.repro reads its concurrent stages and threads)")
        record = args.record or Path(tempfile.mkdtemp()) / "repro.json"  # none: the stages' order of a first run
        force = ["--force"] if "--force" in dvc_args else []
        targets = [a for a in dvc_args if a != "--force"]
        repro_args = [args.profile, "--jobs", str(args.jobs), *force, "--targets", *targets]
        cmd = [sys.executable, "-m", "g2sd_lib.pipeline.repro", *repro_args, "--json", str(record)]
        shown = " ".join(["python -m g2sd_lib.pipeline.repro", *repro_args])
    else:
        record, cmd = None, [str(Path(sys.executable).with_name("dvc")), "repro", *dvc_args]
        shown = " ".join(["dvc repro", *dvc_args])
    result = measure(cmd, record)
    result.update(profile=args.profile or ", ".join(enabled_profiles()), jobs=args.jobs,
                  machine=f"{hardware()}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
                  date=time.strftime("%Y-%m-%d"), command=shown)
    print("\n| stage | wall time | peak RSS (process tree) |\n|---|---|---|")
    for s in result["stages"]:
        rss = "-" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f} MB"
        minutes = "-" if s["seconds"] is None else f"{s['seconds'] / 60:.1f} min"
        print(f"| {s['stage']} | {minutes} | {rss} |")
    print(f"| **total** | **{result['total_seconds'] / 60:.1f} min** | **{result['peak_rss_mb']:.0f} MB** |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(result["returncode"])


if __name__ == "__main__":
    main()
