"""Parity with the official G2SD code: every state dict of the fixture loads strictly into our
models, and every stored output and loss is reproduced to 1e-5 plus 1e-6 of its size (a few float32
ulps: the CPU's vector unit changes the order of float32 sums, and on an AVX2 CPU the CWD loss
51.342182 came out as 51.342194, 2.2e-7 relative, 1.1e-5 absolute). The values are read from
``tests/fixtures/official_parity.pt`` at run time (see its README)."""

from pathlib import Path

import pytest
import torch

from g2sd_lib import losses
from g2sd_lib.models import DistilledViT, G2SDStudent, MaskedAutoencoderViT, teacher_classifier
from g2sd_lib.models.pos_embed import sincos_2d

FIXTURE = Path(__file__).parent / "fixtures" / "official_parity.pt"
ATOL, RTOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


def _mae_kwargs(cfg, size):
    return dict(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                embed_dim=size["embed_dim"], depth=size["depth"], num_heads=size["num_heads"],
                decoder_embed_dim=size["decoder_embed_dim"], decoder_depth=size["decoder_depth"],
                decoder_num_heads=size["decoder_num_heads"])


@pytest.fixture(scope="module")
def gd(fx):
    g = fx["gd"]
    cfg = g["config"]
    teacher = MaskedAutoencoderViT(**_mae_kwargs(cfg, cfg["teacher"]))
    teacher.load_state_dict(g["teacher_state_dict"], strict=True)
    student = G2SDStudent(teacher_decoder_dim=cfg["teacher"]["decoder_embed_dim"],
                          teacher_embed_dim=cfg["teacher"]["embed_dim"], encoder_branch=True,
                          **_mae_kwargs(cfg, cfg["student"]))
    student.load_state_dict(g["student_state_dict"], strict=True)
    return g, cfg, teacher.eval(), student.eval()


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_sincos_tables_equal_official(gd):
    g, cfg, teacher, _ = gd
    grid = cfg["img_size"] // cfg["patch_size"]
    for key in ("pos_embed", "decoder_pos_embed"):
        stored = g["teacher_state_dict"][key]
        close(sincos_2d(stored.shape[-1], grid), stored)


@torch.no_grad()
def test_gd_teacher_target_student_prediction_and_loss(gd):
    g, cfg, teacher, student = gd
    latent, mask, ids_restore, prenorm = teacher.forward_encoder(
        g["images"], cfg["mask_ratio"], g["noise"], return_prenorm=True)
    close(mask, g["mask"])
    hidden = teacher.forward_decoder(latent, ids_restore, stop_after=cfg["teacher"]["target_block"])
    close(hidden, g["teacher_target_raw"])
    close(losses.feature_target(hidden, cfg["layernorm_eps"]), g["teacher_target_normed"])
    out = student.forward_features(g["images"], cfg["mask_ratio"], g["noise"])
    close(out["decoder"], g["student_prediction"])
    assert cfg["supervise_all"]
    loss = losses.gd_loss(out["decoder"], hidden, beta=cfg["smooth_l1_beta"], eps=cfg["layernorm_eps"])
    close(loss, g["loss"])
    enc = losses.gd_loss(out["encoder"], prenorm, beta=cfg["smooth_l1_beta"], eps=cfg["layernorm_eps"])
    close(enc, g["encoder_branch_loss_weight0"])


@torch.no_grad()
@pytest.mark.parametrize("norm_pix, key", [(True, "mae_pixel_loss_norm_pix"), (False, "mae_pixel_loss_plain")])
def test_mae_pixel_loss(gd, norm_pix, key):
    g, cfg, teacher, _ = gd
    teacher.norm_pix_loss = norm_pix
    loss, pred, mask = teacher(g["images"], cfg["mask_ratio"], g["noise"])
    close(loss, g[key])


@pytest.fixture(scope="module")
def sd(fx):
    s = fx["sd"]
    c = s["config"]
    common = dict(img_size=c["img_size"], patch_size=c["patch_size"], in_chans=c["in_chans"],
                  num_classes=c["num_classes"], depth=c["depth"], num_heads=c["num_heads"])
    student = DistilledViT(embed_dim=c["student_embed_dim"], **common)
    student.load_state_dict(s["student_state_dict"], strict=True)
    teacher = teacher_classifier(embed_dim=c["teacher_embed_dim"], **common)
    teacher.load_state_dict(s["teacher_state_dict"], strict=True)
    return s, student, teacher.eval()


@torch.no_grad()
def test_sd_student_heads_and_teacher(sd):
    s, student, teacher = sd
    cls, dist = student.train()(s["images"])
    close(cls, s["train_cls_logits"])
    close(dist, s["train_dist_logits"])
    close(student.eval()(s["images"]), s["eval_logits"])
    close(teacher(s["images"]), s["teacher_logits"])


def test_sd_losses(sd):
    s, _, _ = sd
    loss, parts = losses.sd_classification_loss(s["train_cls_logits"], s["train_dist_logits"],
                                                s["soft_targets"], s["teacher_logits"])
    close(loss, s["loss"])
    close(parts["label"], s["loss_label"])
    close(parts["distill"], s["loss_distill"])
    close(losses.nkd_loss(s["train_cls_logits"], s["teacher_logits"], s["hard_targets"]), s["nkd_loss"])


@pytest.mark.parametrize("tau, key", [(1.0, "loss_tau1_weight3"), (2.0, "loss_tau2_weight3")])
def test_cwd(fx, tau, key):
    w = fx["cwd"]
    close(losses.cwd_loss(w["student"], w["teacher"], tau=tau, weight=3.0), w[key])


def test_frs(fx):
    f = fx["frs"]
    feat, obj = losses.frs_losses(f["student_features"], f["teacher_features"],
                                  f["student_objectness"], f["teacher_objectness"])
    close(feat, f["feature_loss_unweighted"])
    close(obj, f["objectness_loss_unweighted"])
