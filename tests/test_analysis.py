"""Analysis and figure helpers on tiny models."""

import torch

from g2sd_lib import analysis, figures
from g2sd_lib.models import create_classifier, create_mae


def test_linear_cka_properties():
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert abs(analysis.linear_cka(x, x) - 1) < 1e-9
    assert abs(analysis.linear_cka(x, 3 * x @ q + 1) - 1) < 1e-9  # invariant to rotation, scale, shift
    assert analysis.linear_cka(x, torch.randn(200, 16)) < 0.2


def test_cls_attention_is_a_distribution_over_tokens_and_restores_fused_attention():
    model = create_classifier("vit_smokesmall_patch7", "distilled", 10)
    fused = [blk.attn.fused_attn for blk in model.blocks]
    att = figures.cls_attention(model, torch.randn(3, 1, 28, 28))
    assert att.shape == (2, 3, 2, 4, 4)  # depth, batch, heads, grid
    assert (att >= 0).all() and (att.sum(dim=(-1, -2)) <= 1 + 1e-5).all()  # cls and dist tokens take the rest
    assert [blk.attn.fused_attn for blk in model.blocks] == fused


def test_pca_rgb_and_block_features_shapes():
    model = create_classifier("vit_smokebase_patch7", "avg", 10)
    feats = analysis.block_features(model, torch.randn(5, 1, 28, 28))
    assert len(feats) == 2 and feats[-1].shape == (5, 17, 32)
    rgb = analysis.pca_rgb(analysis.patch_tokens(model, feats[-1]), (4, 4))
    assert rgb.shape == (5, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(analysis.cka_matrix(feats, feats).diagonal(), torch.ones(2))


def test_mae_reconstruction_keeps_visible_patches():
    model = create_mae("mae_vit_smokebase_patch7_dec32d2b", norm_pix_loss=True)
    x = torch.randn(2, 1, 28, 28)
    rec = analysis.mae_reconstruction(model, x, 0.75, torch.rand(2, 16))
    visible = (1 - rec["mask"]).bool()
    torch.testing.assert_close(model.patchify(rec["pasted"])[visible], model.patchify(x)[visible])
    assert rec["recon"].shape == x.shape
