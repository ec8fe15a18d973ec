"""Notebook 02, exercises 1-3: the GD target, the shared mask and which tokens to supervise.

1. ``target_block`` from 1 to the last decoder block: an untrained (randomly initialised) student
   starts at the same loss for every block, ``(1 + mean(y_hat^2)) / (2 beta)`` within 5 %, because
   the target is LayerNormed (zero mean, unit variance per token) and the prediction is unrelated to
   it; against the raw hidden states, whose scale grows with depth, the same prediction's loss
   varies several-fold. The targets themselves drift apart with depth; outside 1..depth the decoder
   refuses.
2. Two independent masks instead of one: about a quarter of the patches the student must predict
   were *visible* to the teacher, so for them the target is the teacher's copy of a patch the
   student did not see. Trained for the same 30 steps from the same initialisation, the student
   with the shared mask ends with a clearly lower GD loss (held-out images, fresh masks) than the
   one with independent masks.
3. Masked patches only vs all tokens (``supervise_all``), on the trained GD student of the pipeline
   (``stage_runs``) against its own teacher: the loss on the masked patches is about that on all
   tokens, and *lower* than on the visible patches. The masked patches are not the hard half: a
   masked token's target is the shared mask token and its position, mixed with the context by the
   first decoder blocks, while a visible token's target carries that patch's detail from the
   teacher's wide encoder. Masked-only supervision would drop the tokens the student predicts worst.
"""

import torch
import torch.nn.functional as F
from stage_common import teacher, test_images
from stage_runs import gd_student, runs_dir
from stage_runs import teacher as run_teacher

from g2sd_lib import analysis, checkpoints, losses
from g2sd_lib.models import create_student

STUDENT = "mae_vit_fmsmall_patch7_dec48d2b"  # the fmnist profile's GD student
BETA = 2.0                                   # the GD loss's smooth-L1 threshold (official 2.0)


def untrained_student(mae):
    torch.manual_seed(0)
    return create_student(STUDENT, teacher_decoder_dim=mae.decoder_embed.out_features)


def student_noise(teacher_noise, shared: bool, generator):
    """The noise the student's mask is drawn from: the teacher's own, or a second, independent draw."""
    return teacher_noise if shared else torch.rand(teacher_noise.shape, generator=generator)


def gd_run(mae, images, shared: bool, steps: int = 30, batch: int = 64) -> float:
    """A fresh student distilled for ``steps`` AdamW steps (block 2, mask ratio 0.75) with a shared or
    two independent masks; returns its GD loss on held-out images under the same kind of masks."""
    student = untrained_student(mae)
    g, g_student = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)  # same batches for both
    train, held_out = images[:-256], images[-256:]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)

    def loss_of(x):
        noise = mae.random_noise(len(x), generator=g)
        with torch.no_grad():
            latent, _, ids_restore = mae.forward_encoder(x, 0.75, noise)
            h = mae.forward_decoder(latent, ids_restore, stop_after=2)
        return losses.gd_loss(student(x, 0.75, student_noise(noise, shared, g_student))["decoder"], h, beta=BETA)

    for _ in range(steps):
        loss = loss_of(train[torch.randint(0, len(train), (batch,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return loss_of(held_out).item()


def main():
    mae = teacher("gd-teacher")
    x, _ = test_images(1024)
    noise = mae.random_noise(256, generator=torch.Generator().manual_seed(0))
    depth = len(mae.decoder_blocks)
    with torch.no_grad():
        latent, mask, ids_restore = mae.forward_encoder(x[:256], 0.75, noise)
        hidden = [mae.forward_decoder(latent, ids_restore, stop_after=k) for k in range(1, depth + 1)]
        pred = untrained_student(mae)(x[:256], 0.75, noise)["decoder"]  # (B, 1 + L, D_T), unrelated to h
    expected = (1 + pred.pow(2).mean().item()) / (2 * BETA)  # E[(y_hat - t)^2] / (2 beta), t ~ (0, 1)
    first = losses.feature_target(hidden[0]).flatten()
    start, raw = [], []
    for k, h in enumerate(hidden, 1):
        start.append(losses.gd_loss(pred, h, beta=BETA).item())
        raw.append(F.smooth_l1_loss(pred, h, beta=BETA).item())  # the same loss, target not LayerNormed
        corr = torch.corrcoef(torch.stack([first, losses.feature_target(h).flatten()]))[0, 1].item()
        print(f"1. target_block {k}: untrained-student loss {start[-1]:.3f} (expected {expected:.3f}; "
              f"{raw[-1]:.3f} against the raw hidden states), correlation with block 1's target {corr:.2f}")
    assert all(abs(v - expected) < 0.05 * expected for v in start), "the LayerNormed target has unit variance"
    assert max(raw) / min(raw) > 2 > 1.1 > max(start) / min(start)
    assert corr < 0.8
    for bad in (0, depth + 1):
        try:
            mae.forward_decoder(latent, ids_restore, stop_after=bad)
        except ValueError as err:
            print(f"   target_block {bad}: {err}")
        else:
            raise AssertionError("the decoder must refuse a block outside 1..depth")

    other = student_noise(noise, False, torch.Generator().manual_seed(1))
    _, student_mask, _ = mae.forward_encoder(x[:256], 0.75, other)
    seen = ((student_mask == 1) & (mask == 0)).sum() / (student_mask == 1).sum()
    shared, independent = gd_run(mae, x, shared=True), gd_run(mae, x, shared=False)
    print(f"2. two masks: {100 * seen:.1f} % of the student's removed patches were visible to the teacher; "
          f"after 30 GD steps, held-out GD loss {shared:.3f} with one shared mask, {independent:.3f} with two")
    assert shared < 0.95 * independent, "the shared mask must be the easier, consistent target"

    root = runs_dir()
    sidecar = checkpoints.read_state_dict(root / "pretrain" / "gd" / "model.safetensors")[1]
    task = sidecar["train_config"]["run_config"]["task"]  # the run's own target block and mask ratio
    gd_teacher, student, x = run_teacher("gd-teacher"), gd_student(), x[:128]
    noise = gd_teacher.random_noise(len(x), generator=torch.Generator().manual_seed(0))
    al = analysis.gd_alignment(gd_teacher, student, x, task["target_block"], task["mask_ratio"], noise)
    with torch.no_grad():
        latent, mask, ids_restore = gd_teacher.forward_encoder(x, task["mask_ratio"], noise)
        h_t = gd_teacher.forward_decoder(latent, ids_restore, stop_after=task["target_block"])
    assert torch.equal(mask, al["mask"]) and torch.allclose(losses.feature_target(h_t), al["target"])
    beta = task["smooth_l1_beta"]
    loss = {"masked": losses.gd_loss(al["pred"], h_t, mask, beta).item(),
            "visible": losses.gd_loss(al["pred"], h_t, 1 - mask, beta).item(),
            "all": losses.gd_loss(al["pred"], h_t, beta=beta).item()}
    r = analysis.alignment_correlation(al["pred"], al["target"], mask)
    print(f"3. trained GD student ({root}), loss on the masked patches {loss['masked']:.3f}, visible patches "
          f"{loss['visible']:.3f}, all tokens {loss['all']:.3f}; r masked {r['masked']:.3f}, "
          f"visible {r['visible']:.3f}")
    assert loss["masked"] < loss["visible"]
    print("stage 02 solutions: OK")


if __name__ == "__main__":
    main()
