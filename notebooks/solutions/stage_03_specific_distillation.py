"""Notebook 03, exercises 1-3: the teacher's argmax, soft and normalised KD, the distillation token.

1. Why the teacher's argmax rather than soft KD: a student that copies the teacher's logits exactly
   has zero soft-KD loss but a positive hard loss, which keeps pushing it to be *more* confident
   than the teacher, towards the teacher's decision; and on a mixup batch the argmax is one class.
2. ``loss_type: nkd`` (normalised KD): with the teacher's own logits as student, NKD is the
   teacher's (negative) target-class confidence plus the entropy of its non-target classes, not 0:
   it weighs the target class by the teacher's confidence, and the non-target classes separately.
3. The distillation token: appended *last*, after the position embeddings; the features have
   1 + L + 1 tokens, the training forward returns two logits, the eval forward their average.
"""

import torch
import torch.nn.functional as F
from stage_common import teacher, test_images

from g2sd_lib import losses
from g2sd_lib.models import create_classifier


def main():
    clf = teacher("sd-teacher")
    x, y = test_images(256)
    with torch.no_grad():
        z = clf(x)
    soft = losses.soft_kd_loss(z, z).item()
    _, parts = losses.sd_classification_loss(z, z, y, z)
    print(f"1. student = teacher: soft KD {soft:.4f}, hard (argmax) distillation term {parts['distill'].item():.4f}")
    assert abs(soft) < 1e-5 and parts["distill"] > 0.01
    lam = 0.6
    mixed_logits = lam * z + (1 - lam) * z.flip(0)  # a stand-in for the teacher on a mixed batch
    print(f"   on a 60/40 mix, the argmax is the dominant image's class for "
          f"{100 * (mixed_logits.argmax(1) == z.argmax(1)).float().mean():.0f} % of the pairs")

    nkd = losses.nkd_loss(z, z, y).item()
    conf = F.softmax(z, -1).gather(1, y[:, None]).squeeze(1)
    print(f"2. NKD of the teacher with itself: {nkd:.4f}; its mean target-class confidence {conf.mean():.3f}")
    assert nkd != 0.0

    student = create_classifier("vit_fmsmall_patch7", kind="distilled", num_classes=10)
    tokens = student.forward_features(x[:4])
    print(f"3. distilled student features {tuple(tokens.shape)} = (B, 1 + L + 1, D), "
          f"L = {student.patch_embed.num_patches}")
    assert tokens.shape[1] == 1 + student.patch_embed.num_patches + 1
    student.train()
    cls, dist = student(x[:4])
    student.eval()
    with torch.no_grad():
        assert torch.allclose(student(x[:4]), (cls + dist).detach() / 2, atol=1e-5)
    print("stage 03 solutions: OK")


if __name__ == "__main__":
    main()
