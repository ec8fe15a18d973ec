"""Exercise 2: give GD an encoder-only MAE checkpoint as its teacher.

MAE publishes two pre-training files: ``mae_pretrain_vit_base.pth`` (encoder only) and
``mae_pretrain_vit_base_full.pth`` (with the decoder). GD needs the decoder: its target is the
decoder's hidden states. This saves only the encoder of the bundled teacher, the way the
encoder-only file is made, and asks ``checkpoints.load_model`` for a GD teacher.

What to expect: a ``CheckpointError`` naming the missing decoder keys and the file that has them.
The official code loads teachers with ``strict=False``: the same file then "loads" with the
missing keys reported in a list nobody reads and a randomly initialised decoder, whose features
the student would learn to imitate (G2SD issue #7: a GD loss stuck near 0.2). The second half
shows that silent load. Its targets are not even noise that would give the mistake away: they
correlate with the real teacher's (about 0.6 here), because both carry the same fixed sin-cos
position embeddings and the same encoder output through the residual stream. What a random
decoder lacks is precisely what GD is for: the teacher's learnt guesses about the removed patches.
"""

import tempfile
from pathlib import Path

import torch
from common import arguments, repo_root

from g2sd_lib import checkpoints, data, fmnist, losses
from g2sd_lib.models import create_mae


def main():
    arguments(__doc__.splitlines()[0])
    teacher, info = checkpoints.load_model(repo_root() / "teachers" / "fmnist_mae.safetensors", "gd-teacher")
    path = Path(tempfile.mkdtemp()) / "mae_pretrain_encoder_only.pth"
    torch.save({"model": teacher.encoder_state_dict()}, path)  # the official file's layout

    try:
        checkpoints.load_model(path, "gd-teacher")
    except checkpoints.CheckpointError as err:
        print(f"load_model refuses it:\n  {err}\n")
        message = str(err)
    else:
        raise AssertionError("an encoder-only checkpoint must not load as the GD teacher")
    assert "decoder_embed" in message and "mask_token" in message and "_full.pth" in message

    # What the official code does instead: strict=False into an MAE with a decoder.
    torch.manual_seed(0)
    silent = create_mae(info.arch["name"])
    result = silent.load_state_dict(torch.load(path)["model"], strict=False)
    print(f"strict=False loads it, leaving {len(result.missing_keys)} tensors at random initialisation, e.g. "
          f"{', '.join(result.missing_keys[:3])}")
    images = fmnist.load_fashion_mnist("test", repo_root() / "data" / "fashion-mnist")[0][:256]
    x = data.Normalize(data.FMNIST_MEAN, data.FMNIST_STD)(images.float() / 255)
    noise = teacher.random_noise(len(x), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = []
        for model in (teacher.eval(), silent.eval()):
            latent, _, ids_restore = model.forward_encoder(x, 0.75, noise)
            targets.append(losses.feature_target(model.forward_decoder(latent, ids_restore, stop_after=2)))
    real, fake = targets
    corr = torch.corrcoef(torch.stack([real.flatten(), fake.flatten()]))[0, 1].item()
    print(f"correlation of its GD targets with the real teacher's: {corr:.3f} (same encoder, random decoder)")
    print(f"smooth-L1 distance between the two targets: {losses.gd_loss(fake, real):.4f} "
          f"(an untrained student starts near 0.25)")


if __name__ == "__main__":
    main()
