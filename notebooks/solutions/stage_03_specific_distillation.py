"""Notebook 03, exercises 1-3: the teacher's argmax, soft and normalised KD, the distillation token.

1. Why the teacher's argmax rather than soft KD: a student that copies the teacher's logits exactly
   has zero soft-KD loss but a positive hard loss, which keeps pushing it to be *more* confident
   than the teacher, towards the teacher's decision; and on a mixup batch (images mixed 60/40) the
   teacher's argmax is, for most pairs, its class for the dominant image.
2. ``loss_type: nkd`` (normalised KD): with the teacher's own logits as student, NKD is
   ``-mean(p_y log p_y)`` (p_y the teacher's target-class confidence) plus the entropy of its
   renormalised non-target classes, not 0: it weighs the target class by the teacher's confidence,
   and matches the non-target classes separately.
3. The distillation token of the trained G2SD student (``stage_runs``): appended *last*, after the
   position embeddings (which cover cls + L patches only); the features have 1 + L + 1 tokens, the
   training forward returns two logits, the eval forward their average.
"""

import torch
import torch.nn.functional as F
from stage_common import teacher, test_images
from stage_runs import student as trained_student

from g2sd_lib import losses


def main():
    clf = teacher("sd-teacher")
    x, y = test_images(256)
    with torch.no_grad():
        z = clf(x)
    soft = losses.soft_kd_loss(z, z).item()
    _, parts = losses.sd_classification_loss(z, z, y, z)
    print(f"1. student = teacher: soft KD {soft:.4f}, hard (argmax) distillation term {parts['distill'].item():.4f}")
    assert abs(soft) < 1e-5 and parts["distill"] > 0.01
    with torch.no_grad():
        mixed = clf(0.6 * x + 0.4 * x.flip(0))  # what timm's Mixup does at lambda 0.6
    dominant = (mixed.argmax(1) == z.argmax(1)).float().mean().item()
    print(f"   on a 60/40 mix of images, the teacher's argmax is its class for the dominant image in "
          f"{100 * dominant:.0f} % of the pairs")
    assert dominant > 0.5

    nkd = losses.nkd_loss(z, z, y).item()
    conf = F.softmax(z, -1).gather(1, y[:, None]).squeeze(1)
    p = F.softmax(z, -1)
    others = p.masked_fill(F.one_hot(y, 10).bool(), 0.0)
    others = others / others.sum(1, keepdim=True)  # the non-target classes, renormalised
    entropy = -(others * others.clamp_min(1e-30).log()).sum(1).mean()
    expected = -(conf * conf.log()).mean() + entropy  # gamma = tau = 1
    print(f"2. NKD of the teacher with itself: {nkd:.4f} = its target-class term {-(conf * conf.log()).mean():.4f} "
          f"+ the entropy of its non-target classes {entropy:.4f}; mean target-class confidence {conf.mean():.3f}")
    assert nkd > 0.1 and abs(nkd - expected.item()) < 1e-3

    student = trained_student("g2sd")
    with torch.no_grad():
        tokens = student.forward_features(x[:4])
    n_patches = student.patch_embed.num_patches
    print(f"3. trained G2SD student: features {tuple(tokens.shape)} = (B, 1 + L + 1, D), L = {n_patches}; "
          f"position embeddings {tuple(student.pos_embed.shape)} = (1, 1 + L, D): none for the last token")
    assert tokens.shape[1] == 1 + n_patches + 1 and student.pos_embed.shape[1] == 1 + n_patches
    student.train()
    cls, dist = student(x[:4])
    student.eval()
    with torch.no_grad():
        assert torch.allclose(student(x[:4]), (cls + dist).detach() / 2, atol=1e-5)
    print("stage 03 solutions: OK")


if __name__ == "__main__":
    main()
