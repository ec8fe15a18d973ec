"""Notebook 07, exercises 1-2: the channel-wise distillation (CWD) loss of dense SD, on real
segmenters and canvases: the trained segmentation teacher of the pipeline where it has one
(``runs/<profile>/dense/segmentation/teacher``, ``--profile``, default ``fmnist``), else a segmenter on
the bundled teacher's encoder; the student is the ``fmnist`` profile's, at its initialisation.

1. The CWD weight set to 0: the task's loss on a batch is exactly the labels' loss that the
   ``gd_only`` run trains on (same draws, same number), and three training steps of each from the
   same student leave identical weights: the ``g2sd`` segmentation run becomes the ``gd_only``
   ablation.
2. A student that copies the teacher's logits does *not* reach 0: CWD is the official cross-entropy
   form, whose minimum over students is the teacher's own spatial entropy (weight x tau^2 x mean
   entropy per channel of softmax(z_T / tau) over the positions, at tau 1 and 2); the copy *is* the
   minimum, its gradient vanishes there. The curves of a ``g2sd`` run therefore level off above 0;
   compare runs by their differences, not by the value alone.
"""

import argparse
import copy

import torch
import torch.nn.functional as F
from stage_common import repo_root, teacher_path

from g2sd_lib import fmnist, losses
from g2sd_lib.pipeline import profiles
from g2sd_lib.pipeline.config import run_dir
from g2sd_lib.dense import (DenseLoader, SegmentationDistillation, SegmentationTraining, ViTSegmenter, load_backbone,
                            load_dense_model, make_canvases)


def segmenters(profile: str):
    """(teacher, student, where the teacher comes from): the segmenters of the ``fmnist`` profile."""
    section = profiles.load_profile("fmnist")["dense"]["segmentation"]
    trained = repo_root() / run_dir(f"runs/{profile}", "dense/segmentation", "teacher") / "model.safetensors"
    torch.manual_seed(0)
    if trained.exists():
        teacher, source = load_dense_model(trained), str(trained)
    else:
        teacher = ViTSegmenter(section["teacher_model"], img_size=56, **section["head"])
        load_backbone(teacher.vit, teacher_path("gd-teacher"))
        source = "the bundled teacher's encoder (no trained dense teacher under runs/)"
    student = ViTSegmenter(section["student_model"], img_size=teacher.arch["img_size"], **section["head"])
    return teacher.eval(), student.train(), source


def same_draws(fn, *args):
    """``fn(*args)`` with the same dropout draws on every call."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return fn(*args)


def trained_weights(task, student, batch, steps: int = 3) -> torch.Tensor:
    """``student``'s parameters, flattened, after ``steps`` SGD steps of ``task`` on ``batch`` (same draws)."""
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(steps):
        loss = same_draws(task.loss, student, batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in student.parameters()])


def spatial_entropy(logits, tau: float) -> float:
    """Mean over (n, c) of the entropy of softmax(z / tau) over the H * W positions."""
    p = F.softmax(logits.flatten(2) / tau, dim=-1)
    return float(-(p * p.log()).sum(-1).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fmnist", help="whose trained segmentation teacher to use, if any")
    teacher, student, source = segmenters(parser.parse_args().profile)
    print(f"teacher: {source}")
    images, labels = fmnist.load_fashion_mnist("test", repo_root() / "data" / "fashion-mnist")
    canvases = make_canvases(images[:1000], labels[:1000], 8, size=teacher.arch["img_size"])
    batch = next(iter(DenseLoader(canvases, "segmentation", 8, shuffle=False)))

    labels_only = same_draws(SegmentationTraining(student).loss, student, batch)[0]
    zero_cwd = same_draws(SegmentationDistillation(teacher, student, weight=0.0).loss, student, batch)
    cwd_3 = same_draws(SegmentationDistillation(teacher, student, weight=3.0).loss, student, batch)[1]["cwd"]
    print(f"1. labels only (gd_only) {labels_only:.6f}; g2sd with CWD weight 0: {zero_cwd[0]:.6f} "
          f"(CWD {zero_cwd[1]['cwd'].item()}); CWD at weight 3 {cwd_3.item():.4f}")
    assert torch.equal(zero_cwd[0], labels_only), "weight 0 must leave the labels' loss alone"
    gd_only = trained_weights(SegmentationTraining(student), copy.deepcopy(student), batch)
    g2sd_0 = trained_weights(SegmentationDistillation(teacher, student, weight=0.0), copy.deepcopy(student), batch)
    g2sd_3 = trained_weights(SegmentationDistillation(teacher, student, weight=3.0), copy.deepcopy(student), batch)
    print(f"   after 3 steps: g2sd (weight 0) and gd_only weights differ by at most {(g2sd_0 - gd_only).abs().max()}, "
          f"g2sd (weight 3) by {(g2sd_3 - gd_only).abs().max():.2e}")
    assert torch.equal(g2sd_0, gd_only) and not torch.equal(g2sd_3, gd_only), "weight 0 must train as gd_only"

    x = batch[0]
    with torch.no_grad():
        z_t, z_s = teacher(x)["logits"], same_draws(student, x)["logits"]
    for tau in (1.0, 2.0):
        floor = 3.0 * tau**2 * spatial_entropy(z_t, tau)
        z = z_t.clone().requires_grad_(True)
        copied = losses.cwd_loss(z, z_t, tau=tau)
        copied.backward()
        other = z_s.clone().requires_grad_(True)
        losses.cwd_loss(other, z_t, tau=tau).backward()
        print(f"2. tau {tau:g}: CWD of a copying student {copied.item():.4f} = 3 x tau^2 x the teacher's mean spatial "
              f"entropy {floor:.4f}; its gradient {z.grad.abs().max():.1e}, the untrained student's "
              f"{other.grad.abs().max():.1e}")
        assert abs(copied.item() - floor) < 1e-3 * floor, "a copy's CWD must be the teacher's spatial entropy"
        assert z.grad.abs().max() < 1e-3 * other.grad.abs().max(), "the copy must be the minimum"
    print("stage 07 solutions: OK")


if __name__ == "__main__":
    main()
