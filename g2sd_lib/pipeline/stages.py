"""Run one training stage, classification or dense, from a plain configuration dict.

The configurations come from a profile (``g2sd_lib/pipeline/profiles/<name>.yaml``) through :mod:`g2sd_lib.pipeline.config`. The same function
serves the notebooks (in-process, one device) and ``torchrun`` (several processes):
``torchrun --standalone --nproc-per-node N -m g2sd_lib.pipeline.stages CONFIG.json``.

Configuration keys (``kind`` selects the stage; the dense kinds ``segmentation`` / ``detection``
take the keys of :func:`g2sd_lib.pipeline.config.dense_stage_config`)::

    kind: mae | gd | sd | finetune | kd | segmentation | detection
    model: model name (mae_vit_* for mae/gd, mae_vit_* or vit_* for classifiers)
    teacher: checkpoint path (gd: full MAE with decoder; sd/kd: fine-tuned classifier)
    init: checkpoint whose encoder initialises the classifier (sd/finetune/kd), or null
    out_dir: where the run writes last.pt, history.{json,csv}, model.safetensors
    data: {dataset: fmnist|imagenet, root, val_size, split_seed, train_subset, val_subset,
           labels, labels_seed (supervised kinds train on a stratified draw of ``labels`` images), eval_batch_size; imagenet only: input_size (224), num_workers (8)}
    augment: {crop_scale: [lo, hi], flip, reprob, mixup, cutmix, smoothing}
    task: stage options (mae: mask_ratio, norm_pix_loss; gd: mask_ratio, target_block,
          supervise_all, smooth_l1_beta, encoder_loss_weight; sd: loss_type, layer_decay;
          finetune: layer_decay; kd: alpha, temperature, layer_decay)
    model_kwargs: extra constructor arguments (e.g. drop_path_rate)
    train: TrainConfig fields (epochs, batch_size, blr, min_lr, warmup_epochs, weight_decay, betas,
           accum_steps, amp, teacher_amp, device, seed, save_every, eval_every, progress, compile)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from .. import checkpoints, data, fmnist, tasks
from ..device import cpu_threads, init_distributed, resolve_device, world_info
from ..engine import train
from ..errors import InputError, MissingInputError, UserError, run_main
from ..evaluate import classification_report
from ..models import create_classifier, create_mae, create_student
from ..runlock import check_free
from ..train_config import TrainConfig
from . import schema
from .config import load_yaml
from .schema import NUM_CLASSES, Stage


def _datasets(stage: Stage, rank: int, world: int, train_batch: int):
    """(train loader, validation loader) for the stage's dataset.

    Fashion-MNIST: in memory on the training device (batches augmented there); the validation split is carved from the training set
    (``val_size`` images, seeded by ``split_seed``) so that no choice ever looks at the test set.
    ImageNet: ImageFolder ``train`` with the official transform and ``val`` for validation.
    """
    d, aug, seed = stage.data, stage.augment, stage.train.seed
    labelled = stage.kind not in ("mae", "gd")
    if d.dataset == "imagenet":
        from torch.utils.data import DataLoader, DistributedSampler
        tr = data.build_imagenet(d.root, "train", "sd" if labelled else "gd", d.input_size)
        va = data.build_imagenet(d.root, "val", "eval", d.input_size)
        sampler = DistributedSampler(tr, world, rank, shuffle=True, seed=seed)
        return (DataLoader(tr, train_batch, sampler=sampler, num_workers=d.num_workers, drop_last=True,
                           pin_memory=torch.cuda.is_available()),
                DataLoader(va, d.eval_batch_size, shuffle=False, num_workers=d.num_workers))
    images, labels = fmnist.load_fashion_mnist("train", d.root)
    tr_idx, va_idx = data.train_val_split(len(images), d.val_size, d.split_seed)
    if d.train_subset:
        tr_idx = tr_idx[: d.train_subset]
    if d.val_subset:
        va_idx = va_idx[: d.val_subset]
    if labelled and d.labels:  # label-scarce: supervised stages see only the drawn labelled images
        tr_idx = tr_idx[data.labelled_subset(labels[tr_idx], d.labels, d.labels_seed)]
    size = images.shape[-1]
    device = resolve_device(stage.train.device, int(os.environ.get("LOCAL_RANK", 0)))
    steps = [data.RandomResizedCropFlip(size, tuple(aug.crop_scale), flip=aug.flip),
             data.Normalize(data.FMNIST_MEAN, data.FMNIST_STD)]
    if aug.reprob > 0:
        steps.append(data.RandomErasing(aug.reprob))
    train_loader = data.TensorLoader(images[tr_idx], labels[tr_idx], train_batch, shuffle=True, drop_last=True,
                                     seed=seed, rank=rank, world_size=world, transform=data.Compose(steps),
                                     device=device)
    val_loader = data.TensorLoader(images[va_idx], labels[va_idx], d.eval_batch_size, shuffle=False, drop_last=False,
                                   transform=data.Normalize(data.FMNIST_MEAN, data.FMNIST_STD), device=device)
    return train_loader, val_loader


def training_loader(cfg: dict | Stage):
    """The training loader a one-process run of ``cfg`` draws its batches from (its images, labels and
    augmentation), for analyses of what a stage sees."""
    stage = schema.typed_stage(cfg)
    return _datasets(stage, 0, 1, stage.train.batch_size)[0]


def _upstream(path) -> str:
    """``path``, a checkpoint an earlier stage writes; refused, naming what restores it (``dvc checkout``,
    or the stage to run), when it or its sidecar (the sha256 and architecture every load checks) is missing."""
    p = Path(path)
    parts = p.parts
    if len(parts) >= 3 and parts[-2] == "teacher":
        how = f"the teacher stage writes it: `dvc repro teacher@{parts[-3]}` (or notebook 01)"
    elif len(parts) >= 4 and parts[-3] == "pretrain":
        how = f"the pretrain run {parts[-2]} writes it: `dvc repro pretrain@{parts[-4]}-{parts[-2]}` (or notebook 02)"
    else:
        how = "the stage that writes it has not run; run it first"
    sidecar = p.with_suffix(".json")
    if p.exists() and p.suffix == ".safetensors" and not sidecar.exists():
        raise MissingInputError(f"{path} has no sidecar {sidecar} (its sha256 and architecture, which a stage "
                                f"checks before loading): `dvc checkout {sidecar}` restores it; else {how}")
    if p.exists():
        return str(path)
    raise MissingInputError(f"{path} does not exist: `dvc checkout {path}` restores it if its stage ran here "
                            f"before; else {how}")


def build_task(cfg: dict | Stage):
    """The stage's task (models built, teacher and init checkpoints loaded strictly) from its configuration
    (a dict, validated here, or the typed :class:`~g2sd_lib.pipeline.schema.Stage`)."""
    stage = schema.typed_stage(cfg)
    kind, opts, aug = stage.kind, stage.task.model_dump(), stage.augment
    mkw = stage.model_kwargs.model_dump(exclude_unset=True)  # the model's own defaults for the rest
    num_classes = NUM_CLASSES[stage.data.dataset]
    if kind == "mae":
        model = create_mae(stage.model, norm_pix_loss=opts.pop("norm_pix_loss"), **mkw)
        return tasks.MAEPretraining(model, **opts)
    if kind == "gd":
        teacher, _ = checkpoints.load_model(_upstream(stage.teacher), "gd-teacher")
        student = create_student(stage.model, teacher_decoder_dim=teacher.decoder_embed.out_features,
                                 teacher_embed_dim=teacher.cls_token.shape[-1],
                                 encoder_branch=bool(opts["encoder_loss_weight"]), **mkw)
        return tasks.GenericDistillation(teacher, student, **opts)
    model = create_classifier(stage.model, "distilled" if kind == "sd" else "avg", num_classes, **mkw)
    if stage.init:
        checkpoints.load_encoder(model, _upstream(stage.init))
    mixup = data.build_mixup(num_classes, aug.mixup, aug.cutmix, aug.smoothing)
    if kind == "finetune":
        return tasks.Finetuning(model, mixup=mixup, smoothing=aug.smoothing, **opts)
    teacher, _ = checkpoints.load_model(_upstream(stage.teacher), "sd-teacher")
    schema.check_num_classes(teacher.num_classes, num_classes, stage.data.dataset, stage.teacher)
    if kind == "sd":
        return tasks.SpecificDistillation(teacher, model, mixup=mixup, **opts)
    return tasks.KnowledgeDistillation(teacher, model, mixup=mixup, smoothing=aug.smoothing, **opts)


def _classification_run(stage: Stage, batch_size: int, rank: int, world: int):
    """``(task, train loader, evaluate)`` of a classification kind (evaluate: None for pretraining)."""
    task = build_task(stage)
    train_loader, val_loader = _datasets(stage, rank, world, batch_size)
    if stage.kind not in ("sd", "finetune", "kd"):
        return task, train_loader, None

    def evaluate(model):
        return {f"val_{k}": v for k, v in classification_report(model, val_loader).items()}
    return task, train_loader, evaluate


def run_stage(cfg: dict) -> list[dict]:
    """Validate ``cfg``, build data, models and task from it and train; returns the per-epoch history.

    The whole configuration but ``out_dir`` and ``train`` travels into ``last.pt``, so a resumed
    run that was started with other settings is refused (``engine._resume``).
    """
    stage = schema.typed_stage(cfg)
    run_config = {k: v for k, v in cfg.items() if k not in ("out_dir", "train")}
    train_cfg = TrainConfig(out_dir=cfg["out_dir"], run_config=run_config, **cfg["train"])  # engine.train checks it
    init_distributed()
    rank, world = world_info()
    torch.manual_seed(train_cfg.seed)  # model initialisation
    if isinstance(stage, schema.DenseStage):
        from .dense_stages import dense_run
        task, loader, evaluate = dense_run(stage, train_cfg.batch_size, train_cfg.seed, rank, world)
    else:
        task, loader, evaluate = _classification_run(stage, train_cfg.batch_size, rank, world)
    return train(task, loader, train_cfg, evaluate)


def launch(cfg: dict, nproc: int = 1) -> list[dict]:
    """Run a stage in this process (``nproc`` 1) or under ``torchrun`` with ``nproc`` processes.

    torchrun cannot start workers from a notebook kernel (functions defined there do not pickle), so
    several processes run ``python -m g2sd_lib.pipeline.stages`` as a subprocess on a JSON copy of the
    configuration; the history is then read back from the run directory.
    """
    if nproc <= 1:
        return run_stage(cfg)
    schema.validate_stage(cfg)  # a configuration mistake is reported here, not under torchrun's traceback
    cfg_path = _write_config(cfg)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "-m", "g2sd_lib.pipeline.stages", str(cfg_path)]
    if (code := subprocess.run(cmd).returncode) != 0:
        raise UserError(f"torchrun of the run {cfg['out_dir']} failed (exit status {code}); its workers' "
                        "error is printed above")
    return json.loads((cfg_path.parent / "history.json").read_text())


def _write_config(cfg: dict) -> Path:
    """``<out_dir>/config.json``: the configuration a ``python -m g2sd_lib.pipeline.stages`` process runs."""
    out_dir = Path(cfg["out_dir"])
    check_free(out_dir)  # a run training there keeps its config.json and log.txt
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def launch_all(cfgs: list[dict], nproc: int = 1, concurrent: int = 1, names=None) -> list[list[dict]]:
    """Run several stage configurations (a stage's seeds); returns their histories in order.

    ``concurrent`` 1: one after the other through :func:`launch`. More: up to ``concurrent`` runs at
    once, each a ``python -m g2sd_lib.pipeline.stages`` process (several small runs share one GPU better
    than one run uses it alone). Each process writes its output to ``<out_dir>/log.txt``; their
    lines are echoed here, prefixed by the run's name. A failed run stops the others (they resume
    from their ``last.pt`` next time) and its log's last lines are shown.
    """
    names = list(names or (Path(c["out_dir"]).name for c in cfgs))
    if concurrent <= 1 or len(cfgs) <= 1:
        return [launch(c, nproc) for c in cfgs]
    if nproc > 1:
        raise UserError(f"concurrent_runs {concurrent} with nproc {nproc}: run several processes per run "
                        "(nproc) or several runs at once (concurrent_runs), not both; set one of them to 1")
    todo, running, done = list(zip(names, cfgs)), {}, {}
    try:
        while todo or running:
            while todo and len(running) < concurrent:
                name, cfg = todo.pop(0)
                running[name] = start_run(cfg, _run_env(concurrent))
            time.sleep(0.5)
            for name, (proc, log, pos) in list(running.items()):
                running[name] = (proc, log, _echo(log, pos, name))
                if proc.poll() is not None:
                    _echo(log, running.pop(name)[2], name, final=True)
                    if proc.returncode != 0:
                        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                        raise UserError(f"run {name} failed (exit {proc.returncode}); the end of {log}:\n{tail}")
                    done[name] = json.loads((log.parent / "history.json").read_text())
    finally:
        for proc, _, _ in running.values():
            proc.terminate()
    return [done[name] for name in names]


def _run_env(concurrent: int) -> dict:
    """The environment of a run trained next to ``concurrent - 1`` others: its CPU threads
    (``OMP_NUM_THREADS``) are its share of the cores among every run at once, these and, under
    ``python -m g2sd_lib.pipeline.repro``, those of the other stages (:func:`g2sd_lib.device.cpu_threads`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    threads = cpu_threads(env, concurrent)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def start_run(cfg: dict, env: dict):
    """``(process, log path, 0)``: a ``python -m g2sd_lib.pipeline.stages`` process of one configuration
    started with ``env``, its output going to ``<out_dir>/log.txt``."""
    cfg_path = _write_config(cfg)
    log = cfg_path.parent / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "g2sd_lib.pipeline.stages", str(cfg_path)], stdout=f,
                                stderr=subprocess.STDOUT, env=env)
    return proc, log, 0


def _echo(log: Path, pos: int, name: str, final: bool = False) -> int:
    """Print the complete lines ``log`` gained since byte ``pos`` (all of it when ``final``), prefixed."""
    with open(log, "rb") as f:
        f.seek(pos)
        chunk = f.read()
    end = len(chunk) if final else chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode(errors="replace").splitlines():
        print(f"[{name}] {line}", flush=True)
    return pos + end


def load_config(path) -> dict:
    """A stage configuration from a JSON or YAML file (what :func:`g2sd_lib.pipeline.config.stage_config` returns)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such file; give a stage configuration (JSON or YAML), such as the "
                                "config.json a run directory holds or g2sd_lib.pipeline.config.stage_config returns") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory; give a stage configuration file (JSON or YAML)") from None
    try:
        return json.loads(text) if str(path).endswith(".json") else load_yaml(text, path)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{path} is not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: "
                         f"{' '.join(str(e).split())}") from None

USAGE = ("usage: python -m g2sd_lib.pipeline.stages [--debug] CONFIG.{json,yaml}\n"
         "Train one stage (run) from its configuration file, as the pipeline's notebooks and torchrun do.")


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(argv) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        run_stage(load_config(argv[0]))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0

if __name__ == "__main__":
    run_main(main)
