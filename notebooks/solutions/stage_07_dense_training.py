"""Notebook 07, exercises 1-2: the channel-wise distillation (CWD) loss of dense SD, on real
segmenters and canvases: the trained segmentation teacher of the pipeline where it has one
(``runs/<profile>/dense/segmentation/teacher``, ``--profile``, default ``fmnist``), else a segmenter on
the bundled teacher's encoder; the student is the ``fmnist`` profile's, at its initialisation.

1. The CWD weight set to 0: the task's loss on a batch is exactly the labels' loss that the
   ``gd_only`` run trains on (same draws, same number), so the ``g2sd`` segmentation run becomes the
   ``gd_only`` ablation; the CWD term is linear in the weight.
2. A student that copies the teacher's logits does *not* reach 0: CWD is the official cross-entropy
   form, whose minimum over students is the teacher's own spatial entropy (weight x tau^2 x mean
   entropy per channel). The real student scores higher. The curves of a ``g2sd`` run therefore
   level off above 0; compare runs by their differences, not by the value alone.
"""

import argparse

import torch
import torch.nn.functional as F
from stage_common import repo_root, teacher_path

from g2sd_lib import data, losses
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fmnist", help="whose trained segmentation teacher to use, if any")
    teacher, student, source = segmenters(parser.parse_args().profile)
    print(f"teacher: {source}")
    images, labels = data.load_fashion_mnist("test", repo_root() / "data" / "fashion-mnist")
    canvases = make_canvases(images[:1000], labels[:1000], 8, size=teacher.arch["img_size"])
    batch = next(iter(DenseLoader(canvases, "segmentation", 8, shuffle=False)))

    labels_only = same_draws(SegmentationTraining(student).loss, student, batch)[0]
    weighted = {w: same_draws(SegmentationDistillation(teacher, student, weight=w).loss, student, batch)
                for w in (0.0, 1.0, 3.0)}
    cwd = {w: parts["cwd"].item() for w, (_, parts) in weighted.items()}
    print(f"1. labels only (gd_only) {labels_only:.6f}; g2sd with CWD weight 0: {weighted[0.0][0]:.6f} "
          f"(CWD {cwd[0.0]}); CWD at weight 1 {cwd[1.0]:.4f}, at weight 3 {cwd[3.0]:.4f}")
    assert torch.equal(weighted[0.0][0], labels_only) and cwd[0.0] == 0.0
    assert abs(cwd[3.0] - 3 * cwd[1.0]) < 1e-4 * cwd[3.0]

    x = batch[0]
    with torch.no_grad():
        z_t, z_s = teacher(x)["logits"], same_draws(student, x)["logits"]
    p = F.softmax(z_t.flatten(2), dim=-1)
    floor = 3.0 * float(-(p * p.log()).sum(-1).mean())
    copy, real = losses.cwd_loss(z_t, z_t).item(), losses.cwd_loss(z_s, z_t).item()
    print(f"2. CWD of a copying student {copy:.4f} = 3 x the teacher's mean spatial entropy {floor:.4f}; "
          f"the untrained student {real:.4f}")
    assert abs(copy - floor) < 1e-3 and copy > 0 and real > copy
    print("stage 07 solutions: OK")


if __name__ == "__main__":
    main()
