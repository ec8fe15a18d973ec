"""Notebook 01, exercises 1-3: which checkpoint can fill which teacher role, and why.

1. The encoder-only MAE checkpoint as GD teacher: refused, naming the missing decoder keys and the
   ``_full`` file that has them (GD's target is a state of the decoder).
2. The two bundled teachers swapped: each is refused, and the message says what the role needs
   (a decoder for GD, a classification head for SD).
3. The mask ratio: the teacher reconstructs best near the ratio it was pretrained with (0.75);
   with few patches removed its loss is *higher*, not lower, because it never learnt that regime.
"""

import torch
from stage_common import teacher, teacher_path, test_images

from g2sd_lib import checkpoints


def refusal(state_or_path, role: str) -> str:
    """The CheckpointError message when ``state_or_path`` is offered for ``role``."""
    try:
        if isinstance(state_or_path, dict):
            checkpoints.check_role(state_or_path, role, source="an encoder-only checkpoint")
        else:
            checkpoints.load_model(state_or_path, role)
    except checkpoints.CheckpointError as err:
        return str(err)
    raise AssertionError(f"{role} must refuse this checkpoint")


def main():
    mae = teacher("gd-teacher")
    message = refusal(mae.encoder_state_dict(), "gd-teacher")
    print("1. encoder-only as GD teacher:", message[:200], "...")
    assert "decoder_embed" in message and "decoder_blocks" in message and "_full.pth" in message

    as_gd = refusal(teacher_path("sd-teacher"), "gd-teacher")
    as_sd = refusal(teacher_path("gd-teacher"), "sd-teacher")
    print("2. classifier as GD teacher:", as_gd[:160], "...")
    print("   MAE as SD teacher:", as_sd[:160], "...")
    assert "decoder" in as_gd and "head" in as_sd

    x, _ = test_images(256)
    noise = mae.random_noise(len(x), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = {r: mae(x, r, noise)[0].item() for r in (0.25, 0.5, 0.75, 0.9)}
    print("3. reconstruction loss on the removed patches per mask ratio:",
          {r: round(v, 3) for r, v in loss.items()})
    assert min(loss, key=loss.get) in (0.5, 0.75) and loss[0.25] > loss[0.75]
    print("stage 01 solutions: OK")


if __name__ == "__main__":
    main()
