"""The GPU work of the `gpu` profile, as one prepared command for a lent GPU (or a CPU dry run).

A GPU session has minutes of device time in all, start-up included, so everything it must do is
here, tried on the CPU first with ``--dry`` (the same code, a few images and one epoch). Each step is
a module of its own, in the order a session runs them:

* ``sweep`` (``gpu_sweep.py``): the teacher's recipe and the students' schedule, chosen on the
  validation split only; the chosen teacher bundled on the spot, and the ``fmnist`` profile's teacher
  architecture by the long recipe alongside. ``dense`` (optional, same module): one epoch of each
  dense teacher from the sweep's MAE, to size the dense schedules;
* ``adopt`` (``gpu_adopt.py``): the chosen bundle becomes the `gpu` profile's, so that ``repro`` can
  follow in the same call; after a session, it adopts from the extracted archives;
* ``repro`` (``gpu_repro.py``): the `gpu` profile through DVC, its independent stages at once;
* ``layer_decay`` and ``kd`` (``gpu_choose.py``, after ``repro``): the pretrained students' layer
  decay and the KD baseline's ``alpha`` and temperature, chosen on the validation split;
* ``bench`` (``gpu_bench.py``): ``benchmarks/throughput.py --device cuda``.

Everything it writes goes under ``--out`` (a working directory), and ``--pack-to`` (``$OUT`` on the
device, which returns at most 8 files of 16 MiB, no more than 2 folders down) keeps archives there:
``gpu_session.tar.gz`` and one ``teachers_<prefix>.tar.gz`` per bundled teacher, renewed every minute
and after each step, so a call cut off at its time limit still returns what was done. ``--deadline-min`` stops
the work (and packs) before the device's own limit kills it. ``cpu_util.csv`` samples the CPU load
every 5 s and, on a GPU, ``gpu_util.csv`` ``nvidia-smi`` every 2 s::

    python benchmarks/gpu_session.py --dry --out /tmp/gs sweep adopt repro bench   # CPU dry run, minutes
    python benchmarks/gpu_session.py --out /tmp/gs --pack-to "$OUT" --deadline-min 8 sweep adopt repro bench   # GPU

``benchmarks/gpu_session.sh`` prepares the device (wheels, data) and calls this.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import wait
from pathlib import Path

from gpu_adopt import adopt  # gpu_common, imported first by each, puts the repository on the path
from gpu_bench import bench
from gpu_choose import CHOICES, choose
from gpu_common import bundles, children, helpers, log, stopping, track_children
from gpu_repro import repro
from gpu_sweep import dense, sweep


MIB16 = 16 * 1024 * 1024  # the device returns files from $OUT up to 16 MiB each, at most 8 of them


def pack(out: Path, dest: Path) -> list[Path]:
    """``out`` into archives in ``dest`` ($OUT on the device, which returns at most 8 files of 16 MiB,
    no more than 2 folders down; so the work itself lives elsewhere): ``gpu_session.tar.gz`` with the
    histories, metrics, logs and reports (no training checkpoints, no bundles) and one
    ``teachers_<prefix>.tar.gz`` per bundled teacher (9 MB for ``gpu``). Each is replaced atomically,
    so a call cut off at its limit keeps the last ones."""
    bundled = bundles(out / "teachers")
    in_bundle = {f for files in bundled.values() for f in files}
    groups = {"gpu_session": [f for f in sorted(out.rglob("*")) if f.is_file() and f not in in_bundle
                              and f.suffix not in (".pt", ".safetensors", ".partial")
                              and not f.name.endswith(".tar.gz")]}
    groups.update({f"teachers_{prefix}": [f for f in files if f.exists()] for prefix, files in bundled.items()})
    dest.mkdir(parents=True, exist_ok=True)
    archives = []
    for name, files in groups.items():
        archive, partial = dest / f"{name}.tar.gz", dest / f"{name}.partial"
        with tarfile.open(partial, "w:gz") as tar:
            for path in files:
                try:
                    tar.add(path, arcname=str(path.relative_to(out)))
                except OSError:  # a file a run replaced meanwhile: the next pack has it
                    pass
        os.replace(partial, archive)
        if archive.stat().st_size > MIB16:
            log(f"WARNING: {archive.name} is {archive.stat().st_size / 2**20:.1f} MiB, over the 16 MiB the device "
                "returns: it will not come back")
        archives.append(archive)
    return archives


def _every(seconds: float, fn, stop: threading.Event) -> threading.Thread:
    def loop():
        while not stop.wait(seconds):
            fn()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _cpu_sampler(path: Path, t0: float):
    """A function appending ``seconds, cpu %, load average, training processes`` to ``path``."""
    import psutil
    path.write_text("seconds,cpu_percent,load_1min,training_processes\n")
    psutil.cpu_percent()

    def sample():
        runs = sum(p.poll() is None for p in children)
        with open(path, "a") as f:
            f.write(f"{time.perf_counter() - t0:.0f},{psutil.cpu_percent():.0f},{os.getloadavg()[0]:.1f},{runs}\n")
    return sample


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("steps", nargs="+", choices=["sweep", "dense", "adopt", "bench", "repro", *CHOICES])
    p.add_argument("--out", type=Path, required=True, help="working directory (runs, histories, bundles)")
    p.add_argument("--dry", action="store_true", help="shrunk, for a CPU dry run of the exact steps")
    p.add_argument("--concurrent", type=int, default=6, help="runs trained at once in the sweep, layer_decay and kd (default 6)")
    p.add_argument("--pack-to", type=Path, help="keep --out packed in archives there ($OUT on the device)")
    p.add_argument("--deadline-min", type=float, help="stop (and pack) after this many minutes")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repro").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    # a timeout's SIGTERM (and the deadline) unwinds through the finally below: the runs stop, all is packed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM after {(time.perf_counter() - t0) / 60:.1f} min"))
    deadline = threading.Timer(60 * (args.deadline_min or 0), lambda: os.kill(os.getpid(), signal.SIGTERM))
    deadline.daemon = True
    if args.deadline_min:
        deadline.start()
    track_children()
    stop = threading.Event()
    if args.pack_to:
        _every(60, lambda: pack(args.out, args.pack_to), stop)
    smi = None
    if shutil.which("nvidia-smi"):
        with open(args.out / "gpu_util.csv", "w") as f:
            smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
                                    "--format=csv", "-l", "2"], stdout=f, stderr=subprocess.DEVNULL)
    _every(5, _cpu_sampler(args.out / "cpu_util.csv", t0), stop)  # are the launch-bound runs short of cores?
    try:
        for step in args.steps:
            s0 = time.perf_counter()
            {"bench": lambda: bench(args.out, args.dry), "sweep": lambda: sweep(args.out, args.dry, args.concurrent),
             "dense": lambda: dense(args.out, args.dry), "adopt": lambda: adopt(args.out, args.dry),
             "repro": lambda: repro(args.out, args.dry),
             **{c: lambda c=c: choose(args.out, args.dry, args.concurrent, c) for c in CHOICES}}[step]()
            log(f"{step}: {(time.perf_counter() - s0) / 60:.1f} min")
            if args.pack_to:
                pack(args.out, args.pack_to)
    finally:
        deadline.cancel()
        stop.set()
        stopping.set()
        for proc in children:  # runs a thread started (the sweep's scratch runs), when it was cut short
            if proc.poll() is None:
                proc.terminate()
        if smi is not None:
            smi.terminate()
        wait(helpers, timeout=30)  # e.g. a bundle being written in a helper thread
        log(f"total {(time.perf_counter() - t0) / 60:.1f} min")
        if args.pack_to:
            for archive in pack(args.out, args.pack_to):
                log(f"packed {archive} ({archive.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
