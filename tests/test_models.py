"""Shape, masking and gradient checks of the models on tiny sizes."""

import pytest
import torch

from g2sd_lib.models import (ENCODER_SIZES, build_model, create_classifier, create_mae, create_student,
                             model_kwargs, random_masking)

TEACHER, STUDENT = "mae_vit_smokebase_patch7_dec32d2b", "mae_vit_smokesmall_patch7_dec16d1b"


def test_random_masking_keeps_lowest_noise_and_restores_order():
    x = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6]] * 2)
    visible, mask, ids_restore = random_masking(x, 0.75, noise)
    assert visible.shape == (2, 2, 1)
    assert visible[0, :, 0].tolist() == [1.0, 5.0]  # ascending noise: patches 1 and 5
    assert mask[0].tolist() == [1, 0, 1, 1, 1, 0, 1, 1]
    shuffled = torch.gather(x, 1, torch.argsort(noise, 1).unsqueeze(-1))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore.unsqueeze(-1)), x)


def test_random_masking_rejects_wrong_noise_shape():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(torch.zeros(2, 16, 4), 0.75, torch.rand(2, 196))


def test_mae_sized_from_num_patches_and_shapes():
    m = create_mae(TEACHER)
    assert m.num_patches == 16 and m.pos_embed.shape == (1, 17, 32)
    x = torch.randn(3, 1, 28, 28)
    noise = m.random_noise(3)
    latent, mask, ids = m.forward_encoder(x, 0.75, noise)
    assert latent.shape == (3, 1 + 4, 32) and mask.shape == (3, 16) and mask.sum(1).eq(12).all()
    hidden = m.forward_decoder(latent, ids, stop_after=1)
    assert hidden.shape == (3, 17, 32)
    pred = m.forward_decoder(latent, ids)
    assert pred.shape == (3, 16, 49)
    assert torch.allclose(m.unpatchify(m.patchify(x)), x)
    with pytest.raises(ValueError, match="stop_after"):
        m.forward_decoder(latent, ids, stop_after=3)


def test_mae_loss_backward_and_frozen_pos_embed():
    m = create_mae(TEACHER, norm_pix_loss=True)
    loss, _, _ = m(torch.randn(2, 1, 28, 28))
    loss.backward()
    assert not m.pos_embed.requires_grad and m.pos_embed.grad is None
    assert m.blocks[0].attn.qkv.weight.grad is not None


def test_student_feature_prediction_matches_teacher_width():
    s = create_student(STUDENT, teacher_decoder_dim=32, teacher_embed_dim=32, encoder_branch=True)
    out = s(torch.randn(2, 1, 28, 28), 0.75, torch.rand(2, 16))
    assert out["decoder"].shape == (2, 17, 32) and out["encoder"].shape == (2, 5, 32)
    assert "encoderfeature_pred.fc1.weight" in s.state_dict()
    plain = create_student(STUDENT, teacher_decoder_dim=32)
    assert plain.encoderfeature_pred is None and plain(torch.randn(1, 1, 28, 28), 0.75, torch.rand(1, 16))["encoder"] is None


def test_distilled_classifier_token_placement_and_modes():
    c = create_classifier("vit_smokesmall_patch7", "distilled", num_classes=10)
    x = torch.randn(4, 1, 28, 28)
    feats = c.forward_features(x)
    assert feats.shape == (4, 1 + 16 + 1, 16)
    assert c.pos_embed.shape == (1, 17, 16)  # the distillation token has no position embedding
    cls, dist = c.train()(x)
    assert cls.shape == dist.shape == (4, 10)
    c.eval()
    with torch.no_grad():
        cls, dist = c.forward_heads(c.forward_features(x))
        torch.testing.assert_close(c(x), (cls + dist) / 2)
        c.average_heads = False
        torch.testing.assert_close(c(x), cls)
    assert "dist_token" in c.no_weight_decay()


def test_avg_classifier_has_fc_norm_no_norm():
    c = create_classifier("vit_smokebase_patch7", "avg", num_classes=10)
    keys = c.state_dict().keys()
    assert "fc_norm.weight" in keys and "norm.weight" not in keys


def test_factories_parse_names_and_rebuild_from_arch():
    m = create_mae("mae_vit_base_patch16_dec512d8b")
    assert m.decoder_blocks[0].attn.num_heads == 16 and len(m.decoder_blocks) == 8 and m.num_patches == 196
    s = create_student(STUDENT, teacher_decoder_dim=32, drop_path_rate=0.1)
    rebuilt = build_model(s.arch)
    assert rebuilt.state_dict().keys() == s.state_dict().keys()
    with pytest.raises(ValueError, match="unknown encoder size"):
        create_mae("mae_vit_giant_patch16_dec512d8b")
    with pytest.raises(ValueError, match="not an MAE model name"):
        create_mae("vit_base_patch16")
    with pytest.raises(ValueError, match="kind"):
        create_classifier("vit_smokebase_patch7", "max")
    assert set(ENCODER_SIZES) >= {"tiny", "small", "base", "large", "huge", "fmbase", "fmsmall"}


def test_explicit_size_names_any_encoder():
    m = create_mae("mae_vit_w48d2h1_patch8_dec32d1b", img_size=32)
    assert m.cls_token.shape[-1] == 48 and len(m.blocks) == 2 and m.blocks[0].attn.num_heads == 1
    assert m.num_patches == 16 and m.in_chans == 3  # 224 x 224 RGB defaults, img_size overridden
    c = create_classifier("vit_w128d3h4_patch7", "token", num_classes=5, img_size=28, in_chans=1)
    assert c.blocks[0].attn.num_heads == 4 and c.global_pool == "token" and "norm.weight" in c.state_dict()
    assert model_kwargs(c.arch)["num_heads"] == 4 and model_kwargs(m.arch)["decoder_num_heads"] == 1
    with pytest.raises(ValueError, match="w<width>d<depth>h<heads>"):
        create_mae("mae_vit_w48d2_patch8_dec32d1b")


def test_one_registry_rebuilds_classification_and_dense_models():
    from g2sd_lib.dense import ViTSegmenter, build_detector

    for model in (create_classifier("vit_smokesmall_patch7", "distilled", num_classes=10, average_heads=False),
                  ViTSegmenter("vit_smokesmall_patch7", img_size=56),
                  build_detector("vit_smokesmall_patch7", img_size=56, out_channels=8, box_head_fc=16)):
        rebuilt = build_model(model.arch)
        assert type(rebuilt) is type(model) and rebuilt.arch == model.arch
        assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert build_model(create_classifier("vit_smokesmall_patch7", "distilled", average_heads=False).arch) \
        .average_heads is False
    with pytest.raises(ValueError, match="unknown model builder"):
        build_model({"builder": "resnet", "name": "r50"})
