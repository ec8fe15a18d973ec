"""Notebook 02, exercises 1-3: the GD target, the shared mask and which tokens to supervise.

1. ``target_block`` from 1 to the last decoder block: an untrained student (prediction 0) starts at
   the same loss, about 0.25, for every block (the target is LayerNormed: unit variance per token),
   but the targets themselves drift apart with depth; outside 1..depth the decoder refuses.
2. Two independent masks instead of one: about a quarter of the patches the student must predict
   were *visible* to the teacher, so the "generic knowledge about removed patches" becomes a copy of
   seen ones for them; one shared noise tensor makes the two masks identical.
3. Masked patches only vs all tokens (``supervise_all``): a predictor that knows block 1 (the
   encoder side) does worse on the masked patches than on all tokens: they are the hard half.
"""

import torch
from stage_common import teacher, test_images

from g2sd_lib import losses


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

    guess = losses.feature_target(hidden[0])  # a predictor that knows the encoder side only
    on_masked = losses.gd_loss(guess, hidden[-1], mask).item()
    on_all = losses.gd_loss(guess, hidden[-1]).item()
    print(f"3. loss of block 1's features against block {depth}'s target: masked patches {on_masked:.3f}, "
          f"all tokens {on_all:.3f}")
    assert on_masked > on_all
    print("stage 02 solutions: OK")


if __name__ == "__main__":
    main()
