"""What the worked solutions of the stage notebooks' exercises share: the bundled teachers and a few
Fashion-MNIST test images, found from anywhere inside the repository. Each ``stage_*.py`` runs in
seconds on a CPU and asserts the outcome its exercise states."""

from pathlib import Path

import torch

from g2sd_lib import checkpoints, data, fmnist


def repo_root() -> Path:
    """The repository holding ``teachers/`` at or above this file or the working directory."""
    for begin in (Path(__file__).resolve().parent, Path.cwd()):
        for p in (begin, *begin.parents):
            if (p / "teachers" / "fmnist_mae.safetensors").exists():
                return p
    raise FileNotFoundError("run this inside the G2SD repository: no teachers/fmnist_mae.safetensors found")


def teacher_path(role: str) -> Path:
    """The bundled Fashion-MNIST teacher for ``role`` (``gd-teacher`` or ``sd-teacher``)."""
    name = {"gd-teacher": "fmnist_mae", "sd-teacher": "fmnist_classifier"}[role]
    return repo_root() / "teachers" / f"{name}.safetensors"


def teacher(role: str):
    """The bundled teacher for ``role``, strictly loaded, in eval mode."""
    return checkpoints.load_model(teacher_path(role), role)[0].eval()


def test_images(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Fashion-MNIST test images, normalised (n, 1, 28, 28), and their labels (n,)."""
    images, labels = fmnist.load_fashion_mnist("test", repo_root() / "data" / "fashion-mnist")
    x = data.Normalize(data.FMNIST_MEAN, data.FMNIST_STD)(images[:n].float() / 255)
    return x, labels[:n]
