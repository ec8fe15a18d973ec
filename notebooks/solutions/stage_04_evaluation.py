"""Notebook 04, exercises 1-3, on the pipeline's trained students (``stage_runs``): agreement is not
accuracy; what the attention maps are; what averaging the two heads can and cannot do.

1. Agreement and top-1 of each trained student differ: agreement = both right + both wrong on the
   same class, which the accuracies alone only bound, ``a + t - 1 <= agreement <= 1 - |a - t|``
   (a the student's, t the teacher's top-1). The extremes: a student that copies the
   teacher agrees 100 % and has the teacher's top-1; an always-right one agrees exactly t. Which
   student copies the teacher most shows where both are wrong: the share of the teacher's mistakes a
   student repeats (imitation beyond accuracy): the G2SD student repeats more of them than the
   scratch baseline.
2. The attention maps: ``figures.cls_attention`` gives (depth, B, heads, gh, gw); per head the CLS
   token's attention over the patches sums to *less* than 1, the rest going to the CLS token itself
   and, in a distilled student, to the distillation token.
3. The two heads of the trained G2SD student: where they predict the same class, their average
   predicts it too, so averaging can only change the images on which they disagree: the average's
   top-1 is within that share of either head's. Heads making the same mistakes gain nothing; the
   gain, if any, comes from the disagreements.
"""

import torch
from stage_common import test_images
from stage_runs import runs_dir, student, teacher

from g2sd_lib import figures
from g2sd_lib.evaluate import agreement, topk_accuracy


def logits(model, x):
    with torch.no_grad():
        return model(x)


def main():
    print("trained runs:", runs_dir())
    x, y = test_images(512)
    clf = teacher("sd-teacher")
    z = logits(clf, x)
    t = topk_accuracy(z, y)["top1"]
    copy, oracle = z.clone(), torch.nn.functional.one_hot(y, 10).float()
    print(f"1. teacher top-1 {t:.3f}; a copying student agrees {agreement(copy, z):.3f}, "
          f"an always-right one {agreement(oracle, z):.3f} (= the teacher's top-1)")
    assert agreement(copy, z) == 1.0 and abs(agreement(oracle, z) - t) < 1e-6
    wrong = z.argmax(1) != y
    repeats = {}
    for name in ("g2sd", "scratch"):
        s = logits(student(name), x)
        a, agree = topk_accuracy(s, y)["top1"], agreement(s, z)
        pred = s.argmax(1)
        both_right = ((pred == y) & ~wrong).float().mean().item()
        same_mistake = ((pred == z.argmax(1)) & wrong).float().mean().item()
        repeats[name] = same_mistake / max(wrong.float().mean().item(), 1e-12)
        print(f"   {name:8s} top-1 {a:.3f}, agreement {agree:.3f} = both right {both_right:.3f} + same mistake "
              f"{same_mistake:.3f}; repeats {repeats[name]:.0%} of the teacher's mistakes")
        assert abs(agree - (both_right + same_mistake)) < 1e-6
        assert a + t - 1 - 1e-6 <= agree <= 1 - abs(a - t) + 1e-6
    distilled_copies_more = repeats["g2sd"] > repeats["scratch"]
    print(f"   the G2SD student repeats more of the teacher's mistakes than scratch: {distilled_copies_more}")
    assert distilled_copies_more

    g2sd = student("g2sd")
    att = figures.cls_attention(g2sd, x[:2])
    mass = att.flatten(-2).sum(-1)
    print(f"2. attention maps {tuple(att.shape)} = (depth, B, heads, gh, gw); attention mass on the patches "
          f"per head: {mass.min():.2f} to {mass.max():.2f}")
    assert att.shape[:3] == (len(g2sd.blocks), 2, g2sd.blocks[0].attn.num_heads) and (mass < 1).all()

    g2sd.train()
    with torch.no_grad():
        cls, dist = g2sd(x)  # the training forward returns both heads' logits
    g2sd.eval()
    avg = (cls + dist) / 2
    assert torch.allclose(avg, logits(g2sd, x), atol=1e-5), "the eval forward is the average"
    same = cls.argmax(1) == dist.argmax(1)
    acc = {k: topk_accuracy(v, y)["top1"] for k, v in (("cls", cls), ("dist", dist), ("average", avg))}
    print(f"3. G2SD heads: cls {acc['cls']:.3f}, dist {acc['dist']:.3f}, average {acc['average']:.3f}; "
          f"they disagree on {1 - same.float().mean():.1%} of the images")
    assert torch.equal(avg.argmax(1)[same], cls.argmax(1)[same])
    disagree = 1 - same.float().mean().item()
    assert all(abs(acc["average"] - acc[h]) <= disagree + 1e-6 for h in ("cls", "dist"))
    print("stage 04 solutions: OK")


if __name__ == "__main__":
    main()
