"""Training throughput of processes side by side on the CPU: one process on every core against N
processes on ``cores // N`` threads each, which is how ``python -m g2sd_lib.pipeline.repro`` runs a profile's
``concurrent_stages`` (and a stage its ``concurrent_runs``): :func:`g2sd_lib.device.cpu_threads`.

For each measurement (config x kind x precision x teacher precision) it runs
``benchmarks/throughput.py`` once alone (torch's default threads), then, for each N of
``--procs``, N copies started together with ``OMP_NUM_THREADS = cores // N``, and adds up their
img/s. One measurement per launch keeps the copies in step: each times the same step over the
same seconds (copies that ran several measurements in a row drifted apart, one timing SD while
another timed GD, and their sum meant nothing)::

    python benchmarks/cpu_share.py --configs fmnist --kinds gd sd finetune --teacher-amp same bf16 \
        --procs 2 3 --json benchmarks/results/throughput_cpu_share.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib.device import cpu_threads, usable_cores  # noqa: E402

THROUGHPUT = Path(__file__).with_name("throughput.py")
KEY = ("config", "kind", "precision", "teacher_amp", "compile", "batch")


def side_by_side(n: int, args: list[str], cores: int) -> tuple[float, dict, dict]:
    """The img/s of one measurement summed over ``n`` copies started together, its row and environment."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if n > 1:  # each copy's threads as the pipeline sets them for n processes at once
        env["OMP_NUM_THREADS"] = str(cpu_threads({}, n, cores))
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(n)]
        procs = [subprocess.Popen([sys.executable, str(THROUGHPUT), *args, "--json", str(out)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for out in outs]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"throughput.py failed (exit {proc.returncode}):\n{err[-2000:]}")
        results = [json.loads(out.read_text()) for out in outs]
    rows = [r["results"] for r in results]
    if any(len(r) != 1 for r in rows):
        raise SystemExit(f"expected one measurement per copy, got {[len(r) for r in rows]}")
    return sum(r[0]["img_per_s"] for r in rows), rows[0][0], results[0]["environment"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["fmnist"], help="throughput.py configs (default fmnist)")
    p.add_argument("--kinds", nargs="+", default=["gd", "sd", "finetune"], help="step kinds (default gd sd finetune)")
    p.add_argument("--precisions", nargs="+", default=["fp32"], help="the step's precision (default fp32)")
    p.add_argument("--teacher-amp", nargs="+", default=["same"], help="the teacher's (default same)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--batch", type=int, help="batch size (default: throughput.py's)")
    p.add_argument("--procs", nargs="+", type=int, default=[2], help="copies side by side (default 2)")
    p.add_argument("--json", type=Path, help="write the measurements here")
    args = p.parse_args(argv)
    if any(n < 2 for n in args.procs):
        p.error("--procs: each count must be >= 2 (1 is the 'alone' column, always measured)")
    cores = usable_cores()
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--peak-n", "256",
              *(["--batch", str(args.batch)] if args.batch else [])]
    head = " | ".join(f"{n} x {cpu_threads({}, n, cores)} thread(s): img/s in all (gain)" for n in args.procs)
    rule = "---|" * (len(KEY) + 1 + len(args.procs))
    print(f"{cores} cores\n| {' | '.join(KEY)} | alone: img/s | {head} |\n|{rule}", flush=True)
    rows, env = [], None
    for config in args.configs:
        for kind in args.kinds:
            amps = args.teacher_amp if kind in ("gd", "sd") else ["same"]  # only those steps have a teacher
            for precision in args.precisions:
                for amp in amps:
                    one = ["--configs", config, "--kinds", kind, "--precisions", precision, "--teacher-amp", amp,
                           *common]
                    alone, row, env = side_by_side(1, one, cores)
                    shared = {n: side_by_side(n, one, cores)[0] for n in args.procs}
                    cells = [f"{shared[n]:.0f} ({100 * (shared[n] / alone - 1):+.0f} %)" for n in args.procs]
                    key = {k: row.get(k) for k in KEY}
                    print(f"| {' | '.join(str(v) for v in key.values())} | {alone:.0f} | {' | '.join(cells)} |",
                          flush=True)
                    rows.append({**key, "alone_img_per_s": alone,
                                 "side_by_side_img_per_s": {str(n): v for n, v in shared.items()}})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        command = sys.argv[1:] if argv is None else argv
        args.json.write_text(json.dumps({"cores": cores, "procs": args.procs, "command": command, "environment": env,
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
