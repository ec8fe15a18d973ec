"""Notebook 02, exercises 1-3: the GD target, the shared mask and which tokens to supervise.

1. ``target_block`` from 1 to the last decoder block: an untrained student (prediction 0) starts at
   the same loss, about 0.25, for every block (the target is LayerNormed: unit variance per token),
   but the targets themselves drift apart with depth; outside 1..depth the decoder refuses.
2. Two independent masks instead of one: about a quarter of the patches the student must predict
   were *visible* to the teacher, so the "generic knowledge about removed patches" becomes a copy of
   seen ones for them; one shared noise tensor makes the two masks identical.
3. Masked patches only vs all tokens (``supervise_all``), on the trained GD student of the pipeline
   (``stage_runs``) against its own teacher: the loss on the masked patches is about that on all
   tokens, and *lower* than on the visible patches. The masked patches are not the hard half: a
   masked token's target is the shared mask token and its position, mixed with the context by the
   first decoder blocks, while a visible token's target carries that patch's detail from the
   teacher's wide encoder. Masked-only supervision would drop the tokens the student predicts worst.
"""

import torch
from stage_common import teacher, test_images
from stage_runs import gd_student, runs_dir
from stage_runs import teacher as run_teacher

from g2sd_lib import analysis, checkpoints, losses


def main():
    mae = teacher("gd-teacher")
    x, _ = test_images(128)
    noise = mae.random_noise(len(x), generator=torch.Generator().manual_seed(0))
    depth = len(mae.decoder_blocks)
    with torch.no_grad():
        latent, mask, ids_restore = mae.forward_encoder(x, 0.75, noise)
        hidden = [mae.forward_decoder(latent, ids_restore, stop_after=k) for k in range(1, depth + 1)]
    first = losses.feature_target(hidden[0]).flatten()
    for k, h in enumerate(hidden, 1):
        start = losses.gd_loss(torch.zeros_like(h), h).item()
        corr = torch.corrcoef(torch.stack([first, losses.feature_target(h).flatten()]))[0, 1].item()
        print(f"1. target_block {k}: untrained-student loss {start:.3f}, correlation with block 1's target {corr:.2f}")
        assert 0.2 < start < 0.3
    assert corr < 0.8
    for bad in (0, depth + 1):
        try:
            mae.forward_decoder(latent, ids_restore, stop_after=bad)
        except ValueError as err:
            print(f"   target_block {bad}: {err}")
        else:
            raise AssertionError("the decoder must refuse a block outside 1..depth")

    other = mae.random_noise(len(x), generator=torch.Generator().manual_seed(1))
    _, student_mask, _ = mae.forward_encoder(x, 0.75, other)
    seen = ((student_mask == 1) & (mask == 0)).sum() / (student_mask == 1).sum()
    _, same_mask, _ = mae.forward_encoder(x, 0.75, noise)
    print(f"2. two masks: {100 * seen:.1f} % of the student's removed patches were visible to the teacher; "
          f"one shared noise tensor: {int((same_mask != mask).sum())} patches differ")
    assert 0.2 < seen < 0.3 and torch.equal(same_mask, mask)

    root = runs_dir()
    sidecar = checkpoints.read_state_dict(root / "pretrain" / "gd" / "model.safetensors")[1]
    task = sidecar["train_config"]["run_config"]["task"]  # the run's own target block and mask ratio
    gd_teacher, student = run_teacher("gd-teacher"), gd_student()
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
