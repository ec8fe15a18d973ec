"""The GPU session's ``bench`` step: ``benchmarks/throughput.py --device cuda`` on the ``gpu``
configuration (bf16; gd, sd, finetune and augment; eager and compiled) and the ``paper`` GD / SD steps
(eager), the numbers the README and the calibration notes quote; a dry run measures the ``smoke``
configuration in fp32 on the CPU."""

import subprocess
import sys
from pathlib import Path

from gpu_common import REPO, log


def bench(out: Path, dry: bool) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks/throughput.py"), "--json", str(out / "throughput.json")]
    if dry:
        cmd += ["--configs", "smoke", "--precisions", "fp32", "--kinds", "gd", "sd", "augment",
                "--compile", "none", "default", "--steps", "1", "--warmup", "1", "--peak-n", "256"]
    else:
        cmd += ["--device", "cuda", "--configs", "gpu", "--precisions", "bf16", "--kinds", "gd", "sd", "finetune",
                "augment", "--compile", "none", "default", "--steps", "20", "--warmup", "5"]
    log("bench: " + " ".join(cmd[1:]))
    with open(out / "throughput.md", "w") as f:
        subprocess.run(cmd, check=True, stdout=f)
    if not dry:  # paper scale, eager: the GD / SD steps against the official code's 3 211 img/s
        cmd = [sys.executable, str(REPO / "benchmarks/throughput.py"), "--device", "cuda", "--configs", "paper",
               "--precisions", "bf16", "--kinds", "gd", "sd", "--steps", "10", "--warmup", "3",
               "--json", str(out / "throughput_paper.json")]
        with open(out / "throughput_paper.md", "w") as f:
            subprocess.run(cmd, check=True, stdout=f)
