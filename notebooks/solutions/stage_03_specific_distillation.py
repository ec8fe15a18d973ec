"""Notebook 03, exercises 1-3: the teacher's argmax, soft and normalised KD, the distillation token.

1. Why the teacher's argmax rather than soft KD: a student that copies the teacher's logits exactly
   has zero soft-KD loss but a positive hard loss, which keeps pushing it to be *more* confident
   than the teacher. Fit a fresh linear head on the teacher's own features for 200 equal steps with
   each: the soft-KD head copies the teacher (same decisions, its confidence within 0.02), the
   hard-distilled head (the library's SD loss) takes the teacher's decisions (agreement > 95 %) with
   far more confidence (mean top probability > the teacher's + 0.1). And on a mixup batch (images
   mixed 60/40) the teacher's argmax is, for most pairs, its class for the dominant image.
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


def distilled_head(features, labels, teacher_logits, kind: str, steps: int = 200) -> torch.nn.Linear:
    """A fresh linear head (D -> C) fitted on ``features`` (N, D) to the teacher: ``hard`` = the
    distillation head of the library's SD loss (its cls head learns ``labels``), ``soft`` = soft KD."""
    torch.manual_seed(0)
    cls, dist = torch.nn.Linear(features.shape[1], 10), torch.nn.Linear(features.shape[1], 10)
    opt = torch.optim.Adam([*cls.parameters(), *dist.parameters()], lr=1e-2)
    for _ in range(steps):
        if kind == "hard":
            loss = losses.sd_classification_loss(cls(features), dist(features), labels, teacher_logits)[0]
        else:
            loss = losses.soft_kd_loss(dist(features), teacher_logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dist


def main():
    clf = teacher("sd-teacher")
    x_all, y_all = test_images(1024)
    with torch.no_grad():
        features = clf.forward_head(clf.forward_features(x_all), pre_logits=True)  # (N, D): the head's input
        z_all = clf.head(features)                                                  # (N, C): the teacher's logits
    x, y, z = x_all[:256], y_all[:256], z_all[:256]
    soft = losses.soft_kd_loss(z, z).item()
    _, parts = losses.sd_classification_loss(z, z, y, z)
    print(f"1. student = teacher: soft KD {soft:.4f}, hard (argmax) distillation term {parts['distill'].item():.4f}")
    fit, held_out = slice(0, 768), slice(768, None)
    z_t = z_all[held_out]
    confidence, agree = {"teacher": F.softmax(z_t, -1).amax(1).mean().item()}, {}
    for kind in ("soft", "hard"):
        head = distilled_head(features[fit], y_all[fit], z_all[fit], kind)
        with torch.no_grad():
            z_s = head(features[held_out])
        confidence[kind] = F.softmax(z_s, -1).amax(1).mean().item()
        agree[kind] = (z_s.argmax(1) == z_t.argmax(1)).float().mean().item()
    print(f"   a linear head on the teacher's features, 200 steps, held-out images: soft KD agrees with the "
          f"teacher on {agree['soft']:.1%}, mean top probability {confidence['soft']:.3f} (teacher "
          f"{confidence['teacher']:.3f}); hard distillation agrees on {agree['hard']:.1%}, mean top probability "
          f"{confidence['hard']:.3f}")
    assert agree["soft"] > 0.95 and abs(confidence["soft"] - confidence["teacher"]) < 0.02, \
        "soft KD must copy the teacher's probabilities"
    assert agree["hard"] > 0.95 and confidence["hard"] > confidence["teacher"] + 0.1, \
        "hard distillation must take the teacher's decisions with more than its confidence"
    with torch.no_grad():
        mixed = clf(0.6 * x + 0.4 * x.flip(0))  # what timm's Mixup does at lambda 0.6
    dominant = (mixed.argmax(1) == z.argmax(1)).float().mean().item()
    print(f"   on a 60/40 mix of images, the teacher's argmax is its class for the dominant image in "
          f"{100 * dominant:.0f} % of the pairs")
    assert dominant > 0.5, "the dominant image must decide the teacher's argmax"

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
