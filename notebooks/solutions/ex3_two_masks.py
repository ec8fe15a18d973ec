"""Exercise 3: what if teacher and student drew their masks independently?

G2SD gives both models one noise tensor, hence one mask. Here a subclass of
``tasks.GenericDistillation`` draws a second noise tensor for the student; both students train
for the same budget and are then measured on the same held-out images, each under the masking it
was trained with, and the two-mask student also under a shared mask.

What to expect, and what it asserts: with two masks the held-out loss stays higher than with one
shared mask (the teacher's features for a removed patch come from patches the student may not have
seen: part of the target is unpredictable), and that student is also worse than the shared-mask
one when both see the same mask, since it learnt to hedge. The gap needs some training to show:
measured at 2048 images and one epoch, 0.2465 and 0.2438 against 0.2376 (about 3 % apart); after
the 8 steps of 256 images the three are equal to 0.001.
"""

import torch
from common import Setup, arguments

from g2sd_lib import losses, tasks


class TwoMasks(tasks.GenericDistillation):
    """GD with independent noise, hence independent masks, for teacher and student."""

    def loss(self, model, batch):
        x = batch[0]
        teacher_noise = torch.rand(x.shape[0], self.model.num_patches, device=x.device)
        student_noise = torch.rand(x.shape[0], self.model.num_patches, device=x.device)
        hidden, _ = self.teacher_targets(x, teacher_noise)
        loss = losses.gd_loss(model(x, self.mask_ratio, student_noise)["decoder"], hidden, beta=self.beta)
        return loss, {"decoder": loss.detach()}


@torch.no_grad()
def held_out_loss(setup, student, shared: bool) -> float:
    """GD loss on 1000 test-loader images, with one mask (shared) or two independent ones."""
    teacher = setup.gd_teacher.eval()
    student.eval()
    x = next(iter(setup.test_loader))[0]
    gen = torch.Generator().manual_seed(1)
    t_noise = teacher.random_noise(len(x), generator=gen)
    s_noise = t_noise if shared else teacher.random_noise(len(x), generator=gen)
    latent, _, ids_restore = teacher.forward_encoder(x, 0.75, t_noise)
    hidden = teacher.forward_decoder(latent, ids_restore, stop_after=2)
    return losses.gd_loss(student(x, 0.75, s_noise)["decoder"], hidden).item()


def main():
    args = arguments(__doc__.splitlines()[0])
    setup = Setup(args)
    print("--- one shared mask (G2SD)")
    shared, _ = setup.generic_distillation("shared")
    print("--- two independent masks")
    two, _ = setup.generic_distillation("two", task_class=TwoMasks)
    results = {"one shared mask, tested with one mask": held_out_loss(setup, shared, True),
               "two masks, tested with two masks": held_out_loss(setup, two, False),
               "two masks, tested with one mask": held_out_loss(setup, two, True)}
    print("\nheld-out GD loss:")
    for name, value in results.items():
        print(f"  {name:40s} {value:.4f}")
    one = results["one shared mask, tested with one mask"]
    assert results["two masks, tested with two masks"] > 1.01 * one, results
    assert results["two masks, tested with one mask"] > one, results


if __name__ == "__main__":
    main()
