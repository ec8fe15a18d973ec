"""Training throughput of every G2SD step kind, against the machine's measured matmul peak.

For each configuration (``fmnist``, ``gpu``, ``paper``) and precision (fp32, bf16 autocast) this times
full training steps (forward + backward + AdamW step on ``task.param_groups(0.05)``) on random input,
on the CPU or (``--device cuda``) a GPU, eager or through ``torch.compile`` (``--compile``, the
engine's own ``g2sd_lib.device.compiled_loss``; fused AdamW on CUDA, as the engine):

* ``mae``: MAE pretraining of the teacher (``MAEPretraining``);
* ``gd``: generic distillation, frozen teacher MAE up to decoder block ``target_block`` + student;
* ``sd``: specific distillation, frozen teacher classifier + distilled student, no mixup;
* ``finetune``: supervised training of the student's plain avg-pool classifier;
* ``augment``: the batched augmentation of the Fashion-MNIST loader alone (crop + flip + normalise +
  random erasing), on the same device (no model, no FLOPs).

Training FLOPs per image are an estimate, not a count: 3 x the forward FLOPs of the trained model
(forward + backward ~ 2 x forward) + 1 x the forward FLOPs of the frozen teacher where there is one,
each forward counted by ``FlopCounterMode`` at mask ratio 0.75. See benchmarks/README.md.

    python benchmarks/throughput.py [--configs fmnist gpu paper] [--precisions fp32 bf16] [--json OUT]
    python benchmarks/throughput.py --device cuda --configs gpu paper --precisions bf16 --compile none default
"""

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch

from g2sd_lib import data
from g2sd_lib.device import COMPILE_MODES, TEACHER_AMP_MODES, autocast_dtype, compiled_loss
from g2sd_lib.evaluate import flops_per_image
from g2sd_lib.models import create_classifier, create_mae, create_student, mae_kwargs
from g2sd_lib.pipeline.profiles import load_profile
from g2sd_lib.tasks import Finetuning, GenericDistillation, MAEPretraining, SpecificDistillation

STEP_KINDS = ("mae", "gd", "sd", "finetune", "augment")
PRECISIONS = {"fp32": "none", "bf16": "bf16"}  # -> the ``amp`` mode of ``autocast_dtype``
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MASK_RATIO = 0.75  # MAE pretraining and GD, as the paper
WEIGHT_DECAY = 0.05  # the official value of every stage; only decides the param groups here
FLOPS_NOTE = ("train GFLOP/img = 3 x forward FLOPs of the trained model + 1 x forward FLOPs of the frozen "
              "teacher (if any), forwards counted by torch FlopCounterMode at mask ratio 0.75; an estimate")


@dataclass(frozen=True)
class Config:
    """One rung of the scale ladder: input shape, batch, the four models and the step counts."""

    input_shape: tuple  # (C, H, W)
    batch: int
    num_classes: int
    teacher_mae: str
    student_mae: str
    target_block: int  # teacher decoder block whose output GD regresses (official: 4 of 8)
    teacher_classifier: str
    student_classifier: str
    warmup: int  # untimed steps first (allocator, oneDNN kernel selection)
    steps: int  # timed steps; the median is reported


def _from_profile(name: str, input_shape, batch: int, num_classes: int, warmup: int, steps: int) -> Config:
    """The models a profile of params.yaml trains, so the benchmark measures what the pipeline runs."""
    p = load_profile(name)
    return Config(input_shape, batch, num_classes, p["teacher"]["pretrain"]["model"], p["pretrain"]["gd"]["model"],
                  p["pretrain"]["gd"]["task"]["target_block"], p["teacher"]["finetune"]["model"],
                  p["students"]["common"]["model"], warmup=warmup, steps=steps)


CONFIGS = {
    "fmnist": _from_profile("fmnist", (1, 28, 28), 256, 10, warmup=2, steps=5),
    "gpu": _from_profile("gpu", (1, 28, 28), 1024, 10, warmup=2, steps=5),  # patch 4, batch 1024 as the profile
    # a ViT-B step is seconds on a 2-core CPU: small batch, few steps
    "paper": Config((3, 224, 224), 8, 1000, "mae_vit_base_patch16_dec512d8b", "mae_vit_small_patch16_dec256d4b",
                    4, "vit_base_patch16", "vit_small_patch16", warmup=2, steps=3),
    # hidden from --help: the tests' tiny models
    "smoke": Config((1, 28, 28), 8, 10, "mae_vit_smokebase_patch7_dec32d2b", "mae_vit_smokesmall_patch7_dec16d1b",
                    1, "vit_smokebase_patch7", "vit_smokesmall_patch7", warmup=1, steps=1),
}
PUBLIC_CONFIGS = ("fmnist", "gpu", "paper")
# On a GPU the batch is the profile's / the paper's (the CPU defaults above are sized for 2 cores).
CUDA_BATCH = {"fmnist": 1024, "gpu": 1024, "paper": 256, "smoke": 64}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 1, device="cpu") -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls (on CUDA each
    call is closed by a synchronisation, so the time is the GPU's, not the launch's)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn, repeats: int, warmup: int = 1, device="cpu") -> float:
    return statistics.median(timed(fn, repeats, warmup, device))


def matmul_peak(sizes=(1024, 2048), repeats: int = 5, device="cpu") -> dict:
    """Best ``2 n^3 / median time`` of square ``torch.mm`` over ``sizes``, per dtype (FLOP/s)."""
    peak = {}
    for name, dtype in PEAK_DTYPES.items():
        best = {"flops": 0.0, "n": None}
        for n in sizes:
            a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
            flops = 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats, device=device)
            log(f"matmul {name} n={n}: {flops / 1e9:.1f} GFLOP/s")
            if flops > best["flops"]:
                best = {"flops": flops, "n": n}
        peak[name] = best
    return peak


def _mae_forward(model, x):
    return model(x, MASK_RATIO, torch.rand(1, model.num_patches, device=x.device))


def build_task(kind: str, cfg: Config):
    """The library task of one step kind and the forward FLOPs per image of its trained and frozen
    models (frozen 0 without a teacher)."""
    shape = cfg.input_shape
    if kind == "mae":
        task = MAEPretraining(create_mae(cfg.teacher_mae), MASK_RATIO)
        return task, flops_per_image(task.model, shape, _mae_forward), 0
    if kind == "gd":
        t = mae_kwargs(cfg.teacher_mae)
        student = create_student(cfg.student_mae, teacher_decoder_dim=t["decoder_embed_dim"],
                                 teacher_embed_dim=t["embed_dim"])
        task = GenericDistillation(create_mae(cfg.teacher_mae), student, mask_ratio=MASK_RATIO,
                                   target_block=cfg.target_block)
        frozen = flops_per_image(task.teacher, shape,
                                 lambda m, x: task.teacher_targets(x, torch.rand(1, m.num_patches, device=x.device)))
        return task, flops_per_image(student, shape, _mae_forward), frozen
    if kind == "sd":
        teacher = create_classifier(cfg.teacher_classifier, kind="avg", num_classes=cfg.num_classes)
        student = create_classifier(cfg.student_classifier, kind="distilled", num_classes=cfg.num_classes)
        task = SpecificDistillation(teacher, student, mixup=None)
        return task, flops_per_image(student, shape), flops_per_image(teacher, shape)
    if kind == "finetune":
        model = create_classifier(cfg.student_classifier, kind="avg", num_classes=cfg.num_classes)
        return Finetuning(model, mixup=None, smoothing=0.1), flops_per_image(model, shape), 0
    if kind == "augment":
        return None, 0, 0
    raise ValueError(f"unknown step kind {kind!r}; known: {', '.join(STEP_KINDS)}")


def time_training_steps(task, batch, amp_dtype, warmup: int, steps: int, device="cpu",
                        compile_mode: str = "none", teacher_amp: str = "same") -> list[float]:
    """Seconds of each timed step: autocast forward + loss, backward, AdamW step, zero_grad, as the
    engine runs it on ``device`` (fused AdamW on CUDA; ``compile_mode`` through ``compiled_loss``;
    the teacher's forward at ``teacher_amp``, the engine's ``TrainConfig.teacher_amp``)."""
    device = torch.device(device)
    model = task.model.to(device)
    if getattr(task, "teacher", None) is not None:
        task.teacher.to(device)
        task.set_teacher_precision(teacher_amp, device)
    model.train()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(task.param_groups(WEIGHT_DECAY), lr=1e-4, **fused)
    loss_fn = compiled_loss(task.loss, compile_mode, device)
    graphed = compile_mode == "reduce-overhead" and device.type == "cuda"

    def step():
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, steps, warmup, device)


def time_augmentation(cfg: "Config", warmup: int, steps: int, device="cpu") -> list[float]:
    """Seconds per batch of the Fashion-MNIST loader's training augmentation, built on ``device``."""
    transform = data.Compose([data.RandomResizedCropFlip(cfg.input_shape[-1], (0.2, 1.0)),
                              data.Normalize(data.FMNIST_MEAN, data.FMNIST_STD), data.RandomErasing(0.25)])
    images = torch.randint(0, 256, (cfg.batch * 4, *cfg.input_shape), dtype=torch.uint8)
    loader = data.TensorLoader(images, torch.zeros(len(images), dtype=torch.long), cfg.batch, True, True,
                               transform=transform, device=device)
    batches = iter(())

    def step():
        nonlocal batches
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            next(batches)

    return timed(step, steps, warmup, device)


def benchmark(cfg_name: str, cfg: Config, kinds, precisions, peak: dict, device="cpu",
              compile_modes=("none",), teacher_amps=("same",)) -> list[dict]:
    rows = []
    dev = torch.device(device)
    for kind in kinds:
        torch.manual_seed(0)
        task, trained_fwd, frozen_fwd = build_task(kind, cfg)
        train_flops = 3 * trained_fwd + frozen_fwd
        batch = [t.to(dev) for t in (torch.randn(cfg.batch, *cfg.input_shape),
                                     torch.randint(cfg.num_classes, (cfg.batch,)))]
        teacher = getattr(task, "teacher", None) is not None
        for prec, mode, t_amp in itertools.product(precisions, compile_modes if task is not None else ("none",),
                                                   teacher_amps if teacher else ("same",)):
            if task is None:
                times = time_augmentation(cfg, cfg.warmup, cfg.steps, dev)
            else:
                times = time_training_steps(task, batch, autocast_dtype(PRECISIONS[prec], dev),
                                            cfg.warmup + (3 if mode != "none" else 0), cfg.steps, dev, mode,
                                            t_amp)
            img_s = cfg.batch / statistics.median(times)
            achieved = img_s * train_flops
            rows.append({"config": cfg_name, "kind": kind, "precision": prec, "batch": cfg.batch,
                         "device": dev.type, "compile": mode, "teacher_amp": t_amp,
                         "img_per_s": img_s, "train_flops_per_img": train_flops,
                         "trained_forward_flops": trained_fwd, "frozen_forward_flops": frozen_fwd,
                         "achieved_flops": achieved, "pct_of_peak": 100 * achieved / peak[prec]["flops"],
                         "step_seconds": times, "warmup": cfg.warmup,
                         "trained_model": task.model.arch["name"] if task is not None else None,
                         "teacher_model": task.teacher.arch["name"] if hasattr(task, "teacher") else None})
            log(f"[{cfg_name} {kind} {prec} {dev.type} compile={mode} teacher={t_amp}] median "
                f"{statistics.median(times):.4f} s/step over {len(times)} -> {img_s:.1f} img/s, "
                f"{achieved / 1e9:.1f} GFLOP/s")
        del task
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def environment(peak_sizes, device="cpu") -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {"torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu or "unknown", "device": dev.type, "gpu": gpu,
            "native_bf16": autocast_dtype("auto", dev) is not None, "commit": commit, "peak_sizes": list(peak_sizes)}


def markdown(result: dict) -> str:
    env, peak = result["environment"], result["peak"]
    where = f"GPU {env['gpu']}" if env.get("gpu") else f"{env['threads']} threads, CPU {env['cpu']}"
    lines = [f"torch {env['torch']}, timm {env['timm']}, {where}, native bf16: {'yes' if env['native_bf16'] else 'no'}",
             "matmul peak: " + ", ".join(f"{k} {v['flops'] / 1e9:.1f} GFLOP/s (n={v['n']})" for k, v in peak.items()),
             FLOPS_NOTE, "",
             "| config | kind | precision | teacher | compile | batch | img/s | train GFLOP/img | GFLOP/s "
             "| % of peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        lines.append(f"| {r['config']} | {r['kind']} | {r['precision']} | {r.get('teacher_amp', 'same')} | "
                     f"{r.get('compile', 'none')} | {r['batch']} | "
                     f"{r['img_per_s']:.1f} | "
                     f"{r['train_flops_per_img'] / 1e9:.3g} | {r['achieved_flops'] / 1e9:.1f} | "
                     f"{r['pct_of_peak']:.0f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(PUBLIC_CONFIGS),
                   metavar="{" + ",".join(PUBLIC_CONFIGS) + "}", help="configurations (default: all)")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS),
                   help="fp32 and/or bf16 autocast (default: both)")
    p.add_argument("--kinds", nargs="+", choices=STEP_KINDS, default=list(STEP_KINDS), help="step kinds (default: all)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default: per config, 5 / 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: per config, 2)")
    p.add_argument("--batch", type=int, help="batch size for every config (default on CPU: 256 fmnist, 1024 gpu, "
                   "8 paper; on CUDA: 1024, 1024, 256)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["none"],
                   help="torch.compile modes of the step to measure (default: none = eager)")
    p.add_argument("--teacher-amp", nargs="+", choices=TEACHER_AMP_MODES, default=["same"],
                   help="precisions of the frozen teacher's forward in gd / sd (TrainConfig.teacher_amp; default: "
                        "same = the step's own)")
    p.add_argument("--peak-n", nargs="+", type=int, help="matrix sizes of the matmul peak measurement "
                   "(default: 1024 2048 on CPU, 4096 8192 on CUDA)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); use --device cpu")
    if args.peak_n is None:
        args.peak_n = [4096, 8192] if args.device.startswith("cuda") else [1024, 2048]
    for name in ("steps", "batch", "warmup"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            p.error(f"--{name} must be {'>= 0' if name == 'warmup' else '>= 1'}, got {value}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("steps", args.steps), ("warmup", args.warmup), ("batch", args.batch))
                 if v is not None}
    env = environment(args.peak_n, args.device)
    log(f"torch {env['torch']}, {env['gpu'] or str(env['threads']) + ' threads'}; measuring the matmul peak")
    peak = matmul_peak(args.peak_n, device=args.device)
    rows = []
    cuda = args.device.startswith("cuda")
    for name in args.configs:
        batch = {"batch": CUDA_BATCH[name]} if cuda else {}
        cfg = Config(**{**asdict(CONFIGS[name]), **batch, **overrides})
        rows += benchmark(name, cfg, args.kinds, args.precisions, peak, args.device, args.compile, args.teacher_amp)
    result = {"environment": env, "peak": peak, "flops_note": FLOPS_NOTE, "results": rows}
    print(markdown(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
