"""What the solutions of ``00_g2sd_in_10_minutes.ipynb`` share: data, teachers and the two stages,
with the notebook's recipe. Run a solution from anywhere inside the repository, e.g.
``.venv/bin/python notebooks/solutions/ex1_target_block.py --help``.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from g2sd_lib import checkpoints, data, tasks
from g2sd_lib.engine import train
from g2sd_lib.evaluate import classification_report
from g2sd_lib.fmnist import load_fashion_mnist
from g2sd_lib.models import create_classifier, create_student
from g2sd_lib.train_config import TrainConfig

STUDENT = "mae_vit_fmsmall_patch7_dec48d2b"
CLASSIFIER = "vit_fmsmall_patch7"


def repo_root(start: Path | None = None) -> Path:
    """The repository holding ``teachers/`` at or above ``start`` (default: this file, then the cwd)."""
    for begin in ([start] if start else [Path(__file__).resolve().parent, Path.cwd()]):
        for p in (begin, *begin.parents):
            if (p / "teachers" / "fmnist_mae.safetensors").exists():
                return p
    raise FileNotFoundError("run this inside the G2SD repository: no teachers/fmnist_mae.safetensors found")


def arguments(description: str) -> argparse.Namespace:
    """The notebook's size parameters, with its defaults, as command-line options (``--train-images`` ...)."""
    sizes = {"train_images": 30000, "gd_epochs": 3, "sd_epochs": 1, "test_images": 10000, "batch_size": 256, "seed": 0}
    parser = argparse.ArgumentParser(description=description)
    for name, value in sizes.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    return parser.parse_args()


class Setup:
    """Training images, test loader and the two bundled teachers, as the notebook loads them."""

    def __init__(self, args):
        self.args, self.root = args, repo_root()
        self.runs = Path(tempfile.mkdtemp(prefix="g2sd_solution_"))
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        fmnist = self.root / "data" / "fashion-mnist"
        images, labels = load_fashion_mnist("train", fmnist)
        test_x, test_y = load_fashion_mnist("test", fmnist)
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:args.train_images]
        self.train_x, self.train_y = images[pick], labels[pick]
        self.normalize = data.Normalize(data.FMNIST_MEAN, data.FMNIST_STD)
        self.test_loader = data.TensorLoader(test_x[:args.test_images], test_y[:args.test_images], 1000,
                                             shuffle=False, drop_last=False, transform=self.normalize)
        teachers = self.root / "teachers"
        self.gd_teacher, _ = checkpoints.load_model(teachers / "fmnist_mae.safetensors", "gd-teacher")
        self.sd_teacher, _ = checkpoints.load_model(teachers / "fmnist_classifier.safetensors", "sd-teacher")

    def loader(self, transform):
        a = self.args
        return data.TensorLoader(self.train_x, self.train_y, a.batch_size, shuffle=True, drop_last=True,
                                 seed=a.seed, transform=transform)

    def generic_distillation(self, name: str, target_block: int = 2, task_class=tasks.GenericDistillation):
        """A fresh student distilled for ``gd_epochs``; returns (student, history)."""
        a = self.args
        torch.manual_seed(a.seed)
        student = create_student(STUDENT, teacher_decoder_dim=self.gd_teacher.decoder_embed.out_features)
        task = task_class(self.gd_teacher, student, target_block=target_block)
        transform = data.Compose([data.RandomResizedCropFlip(28, scale=(0.5, 1.0)), self.normalize])
        history = train(task, self.loader(transform), TrainConfig(
            epochs=a.gd_epochs, batch_size=a.batch_size, blr=1e-3, min_lr=1e-5, warmup_epochs=min(0.5, a.gd_epochs),
            betas=(0.9, 0.95), weight_decay=0.05, amp="none", seed=a.seed, progress=False,
            out_dir=str(self.runs / f"gd_{name}")))
        return student, history

    def specific_distillation(self, name: str, student) -> float:
        """SD of a GD student's encoder for ``sd_epochs``; returns its test top-1."""
        a = self.args
        torch.manual_seed(a.seed)
        model = create_classifier(CLASSIFIER, "distilled", num_classes=10)
        checkpoints.load_encoder(model, student.state_dict())
        mixup = data.build_mixup(10, mixup=0.2, cutmix=0.0, smoothing=0.1)
        task = tasks.SpecificDistillation(self.sd_teacher, model, mixup=mixup, layer_decay=None)  # as the notebook
        transform = data.Compose([data.RandomResizedCropFlip(28, scale=(0.6, 1.0)), self.normalize,
                                  data.RandomErasing(0.1)])
        train(task, self.loader(transform), TrainConfig(
            epochs=a.sd_epochs, batch_size=a.batch_size, blr=1e-3, min_lr=1e-6, warmup_epochs=min(0.5, a.sd_epochs),
            weight_decay=0.05, amp="none", seed=a.seed, progress=False, out_dir=str(self.runs / f"sd_{name}")))
        return classification_report(model, self.test_loader)["top1"]
