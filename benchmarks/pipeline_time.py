"""Wall time per stage and peak memory of a whole `dvc repro`.

Runs `dvc repro` (extra arguments are passed on, e.g. `--force`) in the current repository, notes
when each stage starts from DVC's "Running stage" lines, and samples the resident memory of the
whole process tree (dvc, papermill, kernels, torchrun workers) every 0.2 s. Prints a Markdown
table and, with --json, writes the measurements.

    python benchmarks/pipeline_time.py --json benchmarks/results/pipeline_fmnist.json
"""

import argparse
import json
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

STAGE = re.compile(r"Running stage '([^']+)'")


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(dvc_args: list[str], dvc: str) -> dict:
    start = time.time()
    proc = subprocess.Popen([dvc, "repro", *dvc_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = {"total": 0, "stage": {}}
    current = {"stage": None}
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss = _tree_rss(ps)
            peak["total"] = max(peak["total"], rss)
            if current["stage"]:
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
    for i, (name, t0) in enumerate(starts):
        t1 = starts[i + 1][1] if i + 1 < len(starts) else end
        stages.append({"stage": name, "seconds": t1 - t0, "peak_rss_mb": peak["stage"].get(name, 0) / 2**20})
    return {"returncode": proc.returncode, "total_seconds": end - start, "peak_rss_mb": peak["total"] / 2**20,
            "stages": stages}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args, dvc_args = parser.parse_known_args(argv)
    dvc = str(Path(sys.executable).with_name("dvc"))
    result = measure(dvc_args, dvc)
    params = yaml.safe_load(Path("params.yaml").read_text())
    result.update(profile=params.get("profile"), machine=f"{platform.processor() or platform.machine()}, "
                  f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
                  date=time.strftime("%Y-%m-%d"), command=" ".join(["dvc repro", *dvc_args]))
    print("\n| stage | wall time | peak RSS (process tree) |\n|---|---|---|")
    for s in result["stages"]:
        print(f"| {s['stage']} | {s['seconds'] / 60:.1f} min | {s['peak_rss_mb']:.0f} MB |")
    print(f"| **total** | **{result['total_seconds'] / 60:.1f} min** | **{result['peak_rss_mb']:.0f} MB** |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(result["returncode"])


if __name__ == "__main__":
    main()
