"""explore.ipynb, exercises 1-3: what linear CKA and the PCA colours can and cannot tell.

1. CKA of a representation with itself is 1, and it stays 1 under a rotation and a rescaling of the
   features: a student can match its teacher's CKA without using the same channels, or even the
   same width (CKA compares (N, D_a) with (N, D_b)).
2. CKA of unrelated random features is small but not 0 (about D / N for N samples): compare
   students with each other and with the teacher, not against 0.
3. The PCA colours are fitted per model and a principal component's sign is arbitrary: negating
   the features (the same representation) keeps or inverts each colour channel. The same colour in
   two models' panels means nothing; only patches of one model sharing a colour do.
"""

import torch
from stage_common import teacher, test_images

from g2sd_lib import analysis


def main():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 64, generator=g)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    same, rotated = analysis.linear_cka(a, a), analysis.linear_cka(a, 5 * a @ q)
    print(f"1. CKA(x, x) {same:.4f}; CKA(x, 5 x Q) for a rotation Q {rotated:.4f}")
    assert abs(same - 1) < 1e-4 and abs(rotated - 1) < 1e-4
    unrelated = analysis.linear_cka(a, torch.randn(256, 32, generator=g))
    print(f"2. CKA of unrelated random features (256 x 64 vs 256 x 32): {unrelated:.3f}")
    assert 0.1 < unrelated < 0.2  # far from 0

    clf = teacher("sd-teacher")
    x, _ = test_images(64)
    feats = analysis.block_features(clf, x)
    torch.manual_seed(0)  # torch.pca_lowrank is randomised
    rgb = analysis.pca_rgb(analysis.patch_tokens(clf, feats[-1]), clf.patch_embed.grid_size)
    torch.manual_seed(0)
    flipped = analysis.pca_rgb(-analysis.patch_tokens(clf, feats[-1]), clf.patch_embed.grid_size)
    same_or_inverted = [min(float((flipped[..., c] - rgb[..., c]).abs().max()),
                            float((flipped[..., c] - (1 - rgb[..., c])).abs().max())) for c in range(3)]
    print(f"3. PCA colours {tuple(rgb.shape)}; negated features: each channel equal or inverted "
          f"(largest deviation {max(same_or_inverted):.1e})")
    assert max(same_or_inverted) < 1e-3
    print("explore solutions: OK")


if __name__ == "__main__":
    main()
