"""Notebook 04, exercises 1-3, on the pipeline's trained students (``stage_runs``): agreement is not
accuracy; what the attention maps are; what averaging the two heads can and cannot do.

1. Agreement and top-1 of each trained student differ: agreement = both right + both wrong on the
   same class; the accuracies alone only bound it, ``a + t - 1 <= agreement <= 1 - |a - t|`` (a the
   student's, t the teacher's top-1). The extremes: a student that copies the teacher agrees 100 %
   and has the teacher's top-1; an always-right one agrees exactly t. What the accuracies leave
   open is imitation: the share of the teacher's mistakes a student repeats (same wrong class); the
   G2SD student repeats more of them than the scratch baseline.
2. The attention maps: ``figures.cls_attention`` gives (depth, B, heads, gh, gw); per head the CLS
   token's attention over the patches sums to *less* than 1, the rest going to the CLS token itself
   and, in a distilled student, to the distillation token.
3. The two heads of the trained G2SD student against the prediction evaluation reports (the eval
   forward): it is the average of the two heads' logits, it differs from each head alone on some
   images (it combines them: it can only change the images on which the heads disagree) and its
   top-1 is not below the worse head's. Heads making the same mistakes gain nothing; the gain, if
   any, comes from the disagreements.
"""

import torch
from stage_common import test_images
from stage_runs import runs_dir, student, teacher

from g2sd_lib import figures
from g2sd_lib.evaluate import agreement, topk_accuracy


def logits(model, x):
    with torch.no_grad():
        return model(x)


def split_agreement(s, z, y) -> tuple[float, float]:
    """(both right, same mistake): the shares of images on which the student with logits ``s`` agrees
    with the teacher's ``z`` while both are right, and while both are wrong on the same class."""
    pred, taught = s.argmax(1), z.argmax(1)
    teacher_wrong = taught != y
    return (((pred == y) & ~teacher_wrong).float().mean().item(),
            ((pred == taught) & teacher_wrong).float().mean().item())


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
    teacher_wrong = (z.argmax(1) != y).float().mean().item()
    repeats = {}
    for name in ("g2sd", "scratch"):
        s = logits(student(name), x)
        a, agree = topk_accuracy(s, y)["top1"], agreement(s, z)
        both_right, same_mistake = split_agreement(s, z, y)
        repeats[name] = same_mistake / max(teacher_wrong, 1e-12)
        print(f"   {name:8s} top-1 {a:.3f}, agreement {agree:.3f} (bounds from the accuracies: {max(0, a + t - 1):.3f} "
              f"to {1 - abs(a - t):.3f}) = both right {both_right:.3f} + same mistake {same_mistake:.3f}; "
              f"repeats {repeats[name]:.0%} of the teacher's mistakes")
        assert abs(agree - (both_right + same_mistake)) < 1e-6, "agreement = both right + same mistake"
    copies_more = repeats["g2sd"] > repeats["scratch"]
    print(f"   the G2SD student repeats more of the teacher's mistakes than scratch: {copies_more}")
    assert copies_more, "the distilled student must repeat more of the teacher's mistakes"

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
    reported = logits(g2sd, x)  # the eval forward, what evaluation scores
    acc = {k: topk_accuracy(v, y)["top1"] for k, v in (("cls", cls), ("dist", dist), ("reported", reported))}
    changed = {k: (reported.argmax(1) != v.argmax(1)).float().mean().item() for k, v in (("cls", cls), ("dist", dist))}
    disagree = (cls.argmax(1) != dist.argmax(1)).float().mean().item()
    print(f"3. G2SD heads: cls {acc['cls']:.3f}, dist {acc['dist']:.3f}; the reported prediction "
          f"{acc['reported']:.3f}, different from the cls head's on {changed['cls']:.1%} and from the dist "
          f"head's on {changed['dist']:.1%} of the images; the heads disagree on {disagree:.1%}")
    assert min(changed.values()) > 0, "the reported prediction must combine both heads, not be one of them"
    assert acc["reported"] >= min(acc["cls"], acc["dist"]), "averaging must not fall below the worse head"
    assert torch.allclose(reported, (cls + dist) / 2, atol=1e-5), "the eval forward is the average of the logits"
    print("stage 04 solutions: OK")


if __name__ == "__main__":
    main()
