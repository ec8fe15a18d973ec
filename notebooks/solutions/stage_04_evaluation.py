"""Notebook 04, exercises 1-3: agreement is not accuracy; what the attention maps are.

1. A student that copies the teacher, mistakes included, agrees 100 % with it and has the teacher's
   top-1; a student that is always right has top-1 100 % but agrees only as often as the teacher is
   right. Agreement measures imitation, accuracy measures the task.
2. The attention maps: ``figures.cls_attention`` gives (depth, B, heads, gh, gw); per head the CLS
   token's attention over the patches sums to *less* than 1, because the rest goes to the CLS token
   itself (and, in a distilled student, to the distillation token).
3. Why the two heads' logits are averaged at test time: two heads whose errors are independent
   (here the teacher's logits plus independent noise) are each worse than their average, which
   cancels part of the noise; heads that make the same mistakes gain nothing from it.
"""

import torch
import torch.nn.functional as F
from stage_common import teacher, test_images

from g2sd_lib import figures
from g2sd_lib.evaluate import agreement, topk_accuracy


def main():
    clf = teacher("sd-teacher")
    x, y = test_images(256)
    with torch.no_grad():
        z = clf(x)
    teacher_top1 = topk_accuracy(z, y)["top1"]
    copy, oracle = z.clone(), F.one_hot(y, 10).float()
    print(f"1. teacher top-1 {teacher_top1:.3f}; copying student: top-1 {topk_accuracy(copy, y)['top1']:.3f}, "
          f"agreement {agreement(copy, z):.3f}; always-right student: top-1 {topk_accuracy(oracle, y)['top1']:.3f}, "
          f"agreement {agreement(oracle, z):.3f}")
    assert agreement(copy, z) == 1.0 and abs(agreement(oracle, z) - teacher_top1) < 1e-6

    att = figures.cls_attention(clf, x[:2])
    mass = att.flatten(-2).sum(-1)
    print(f"2. attention maps {tuple(att.shape)} = (depth, B, heads, gh, gw); attention mass on the patches "
          f"per head: {mass.min():.2f} to {mass.max():.2f}")
    assert att.shape[:3] == (len(clf.blocks), 2, clf.blocks[0].attn.num_heads) and (mass <= 1 + 1e-5).all()

    g = torch.Generator().manual_seed(0)
    heads = [z + 3 * torch.randn(z.shape, generator=g) for _ in range(2)]
    accs = [topk_accuracy(h, y)["top1"] for h in heads]
    avg = topk_accuracy(sum(heads) / 2, y)["top1"]
    print(f"3. two noisy heads: top-1 {accs[0]:.3f} and {accs[1]:.3f}; their average {avg:.3f}")
    assert avg > max(accs)
    print("stage 04 solutions: OK")


if __name__ == "__main__":
    main()
