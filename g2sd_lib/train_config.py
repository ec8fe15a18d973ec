"""A training run's configuration (:class:`TrainConfig`) and what a resumed run must share with the
run that saved its ``last.pt`` (:func:`config_changes`); :mod:`g2sd_lib.engine` trains with them."""

import json
from dataclasses import dataclass, field

from .device import AMP_MODES, COMPILE_MODES, TEACHER_AMP_MODES


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; ``validate`` rejects bad values before any work."""

    epochs: int
    batch_size: int  # per process, as the official ``--batch_size`` (per GPU)
    blr: float  # base lr; lr = blr * batch_size * accum_steps * world_size / 256
    out_dir: str
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    accum_steps: int = 1
    amp: str = "auto"
    teacher_amp: str = "same"  # the frozen teacher's forward: same (the run's amp) | auto | bf16 | fp16 | none
    device: str = "auto"
    seed: int = 0
    save_every: int = 1
    eval_every: int = 1
    progress: bool | str = "auto"  # per-iteration bar: auto = on a terminal only (see show_progress)
    compile: str = "none"  # torch.compile of the step's forward + loss: none | default | reduce-overhead
    extra: dict = field(default_factory=dict)  # recorded in the model sidecar (e.g. the stage name)
    run_config: dict = field(default_factory=dict)  # the stage configuration; a resumed run must match it

    def validate(self):
        errors = []
        for name in ("epochs", "batch_size", "accum_steps", "save_every", "eval_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                errors.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.blr > 0:
            errors.append(f"blr must be > 0, got {self.blr!r}")
        if not 0 <= self.min_lr:
            errors.append(f"min_lr must be >= 0, got {self.min_lr!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            errors.append(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        if self.weight_decay < 0:
            errors.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            errors.append(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.amp not in AMP_MODES:
            errors.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.teacher_amp not in TEACHER_AMP_MODES:
            errors.append(f"teacher_amp must be one of {TEACHER_AMP_MODES}, got {self.teacher_amp!r}")
        if self.compile not in COMPILE_MODES:
            errors.append(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if errors:
            raise ValueError("invalid training configuration: " + "; ".join(errors))
        return self


# TrainConfig fields that change how a run is watched or saved, never what it computes.
_UNCHECKED_ON_RESUME = ("device", "save_every", "eval_every", "progress", "out_dir", "extra", "run_config")


def config_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``key.path old -> new`` for every value that differs between two nested configurations."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        if key in _UNCHECKED_ON_RESUME and prefix == "train.":
            continue
        a, b, path = saved.get(key), now.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{path}.")
        elif a != b:
            out.append(f"{path} {a!r} -> {b!r}")
    return out


def plain(obj):
    """JSON-able copy of a config (tuples -> lists) for sidecars and training states."""
    return json.loads(json.dumps(obj, default=str))
