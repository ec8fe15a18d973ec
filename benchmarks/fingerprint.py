"""A fingerprint of what the library computes, to show that an edit is behaviour-neutral.

The DVC pipeline reruns every training stage when any library module changes (the ``library``
stage's stamp hashes their bytes), so a docstring fix or a refactor would cost a full rerun. When
an edit should change nothing, prove it instead: run this before and after, compare, and record the
unchanged outputs with ``dvc repro library && dvc commit -f`` (say so in the commit message)::

    .venv/bin/python benchmarks/fingerprint.py > /tmp/before.txt     # on the commit before the edit
    .venv/bin/python benchmarks/fingerprint.py | diff /tmp/before.txt -   # after: no output = neutral

It trains every run of a profile (teacher from the profile's own mode, the pretrain runs, every student
kind, seed 0; then, on a few canvases, each dense teacher and dense student) on a few images for one
epoch, in this process, on the CPU, and prints one line per run: the sha256 of its history without the timing fields (so the losses, the
learning rates and the validation numbers, to the last bit) and of its final weights' tensors. The runs are
seeded, so the same code on the same machine prints the same lines.
"""

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from g2sd_lib.pipeline import config, stages  # noqa: E402
from g2sd_lib.errors import run_main  # noqa: E402
from g2sd_lib.pipeline.profiles import PROFILES, load_profile, shrink  # noqa: E402
from g2sd_lib.pipeline.teacher import obtain_teacher  # noqa: E402
from g2sd_lib.pipeline.dense_stages import build_canvases  # noqa: E402

TIMING = ("seconds", "img_per_s")


def digest(run_dir: Path) -> str:
    history = json.loads((run_dir / "history.json").read_text())
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in history]
    h = hashlib.sha256(json.dumps(rows, sort_keys=True).encode())
    tensors = load_file(run_dir / "model.safetensors")  # the weights only: the file's header holds timings too
    for key in sorted(tensors):
        h.update(key.encode() + tensors[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="fmnist", choices=PROFILES,
                   help="whose models and recipes (default fmnist)")
    p.add_argument("--images", type=int, default=512, help="training / validation images (default 512)")
    args = p.parse_args(argv)
    params = shrink(load_profile(args.profile), images=args.images, batch=64, canvases=(64, 16, 16), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):
            obtain_teacher(params, root)
        runs = [(f"pretrain {r}", config.stage_config(params, "pretrain", r, root)) for r in config.PRETRAIN_RUNS]
        runs += [(f"students {r}", config.stage_config(params, "students", r, root, seed=0)) for r in config.STUDENTS]
        if params["teacher"]["mode"] == "train":
            runs.insert(0, ("teacher finetune", config.teacher_stage_config(params, "finetune", root)))
        for name, cfg in runs:
            with contextlib.redirect_stdout(sys.stderr):  # the runs' epoch lines: stdout is the fingerprint
                stages.run_stage(cfg)
            print(f"{name:<20} {digest(Path(cfg['out_dir']))}", flush=True)
        if params["dense"]["dataset"] != "canvases":
            return
        with contextlib.redirect_stdout(sys.stderr):
            build_canvases(params, root)
        for task in config.DENSE_TASKS:  # the dense teacher, then each dense student (seed 0) on its canvases
            for run in ("teacher", *params["dense"]["runs"]):
                cfg = config.dense_stage_config(params, task, run, root, seed=None if run == "teacher" else 0)
                with contextlib.redirect_stdout(sys.stderr):
                    stages.run_stage(cfg)
                print(f"{'dense ' + task[:3] + ' ' + run:<20} {digest(Path(cfg['out_dir']))}", flush=True)


if __name__ == "__main__":
    run_main(main)
