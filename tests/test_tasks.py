"""Each training step kind: finite loss, gradients only where they belong, frozen teachers."""

import pytest
import torch

from g2sd_lib import losses
from g2sd_lib.data import build_mixup
from g2sd_lib.models import create_classifier, create_mae, create_student
from g2sd_lib.tasks import (Finetuning, GenericDistillation, KnowledgeDistillation, MAEPretraining,
                            SpecificDistillation)

X = torch.randn(4, 1, 28, 28)
Y = torch.tensor([0, 1, 2, 3])


def _grads(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _gd(target_block=2, **kw):
    teacher = create_mae("mae_vit_smokebase_patch7_dec32d2b")
    student = create_student("mae_vit_smokesmall_patch7_dec16d1b", teacher_decoder_dim=32, teacher_embed_dim=32,
                             encoder_branch=kw.get("encoder_loss_weight", 0) > 0)
    return GenericDistillation(teacher, student, target_block=target_block, **kw)


def test_gd_step_trains_student_only_and_skips_unused_heads():
    task = _gd()
    loss, parts = task.loss(task.model, (X, Y))
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"decoder"}
    grads = _grads(task.model)
    assert "decoderfeature_pred.fc2.weight" in grads and "blocks.0.attn.qkv.weight" in grads
    assert not any(n.startswith(("decoder_norm", "decoder_pred")) for n in grads)
    assert not any(p.requires_grad for p in task.teacher.parameters()) and not task.teacher.training


def test_gd_masked_only_supervision_and_encoder_branch():
    torch.manual_seed(0)
    task = _gd(supervise_all=False, encoder_loss_weight=0.5)
    torch.manual_seed(1)
    loss, parts = task.loss(task.model, (X, Y))
    assert set(parts) == {"decoder", "encoder"}
    torch.testing.assert_close(loss, parts["decoder"] + 0.5 * parts["encoder"])
    torch.manual_seed(1)  # the same noise again: recompute the masked-only loss by hand
    noise = torch.rand(4, task.model.num_patches)
    hidden, _ = task.teacher_targets(X, noise)
    out = task.model(X, 0.75, noise)
    m = out["mask"].bool()
    manual = torch.nn.functional.smooth_l1_loss(out["decoder"][:, 1:][m], losses.feature_target(hidden)[:, 1:][m],
                                                beta=2.0)
    torch.testing.assert_close(parts["decoder"], manual.detach())


def test_gd_rejects_bad_settings():
    with pytest.raises(ValueError, match="target_block"):
        _gd(target_block=3)
    teacher = create_mae("mae_vit_smokebase_patch7_dec32d2b")
    other = create_student("mae_vit_smokesmall_patch4_dec16d1b", teacher_decoder_dim=32)
    with pytest.raises(ValueError, match="patch grids"):
        GenericDistillation(teacher, other, target_block=1)


def test_mae_step():
    task = MAEPretraining(create_mae("mae_vit_smokebase_patch7_dec32d2b"))
    loss, _ = task.loss(task.model, (X, Y))
    loss.backward()
    assert torch.isfinite(loss) and "decoder_pred.weight" in _grads(task.model)


@pytest.mark.parametrize("loss_type", ["g2sd", "nkd"])
def test_sd_step_with_mixup(loss_type):
    teacher = create_classifier("vit_smokebase_patch7", "avg", 10)
    student = create_classifier("vit_smokesmall_patch7", "distilled", 10)
    task = SpecificDistillation(teacher, student, mixup=build_mixup(10, 0.8, 1.0, 0.1), loss_type=loss_type)
    loss, parts = task.loss(task.model, (X, Y))
    loss.backward()
    grads = _grads(task.model)
    assert torch.isfinite(loss)
    if loss_type == "g2sd":
        assert set(parts) == {"label", "distill"} and "head_dist.weight" in grads
    else:  # official NKD: the dist head exists but gets no gradient; eval returns the cls head
        assert "head_dist.weight" not in grads and student.average_heads is False
    scales = {g["lr_scale"] for g in task.param_groups(0.05)}
    assert min(scales) == pytest.approx(0.75**3) and max(scales) == 1.0


def test_finetune_and_kd_steps():
    model = create_classifier("vit_smokesmall_patch7", "avg", 10)
    loss, parts = Finetuning(model, smoothing=0.1).loss(model, (X, Y))
    assert set(parts) == {"ce"} and torch.isfinite(loss)
    teacher = create_classifier("vit_smokebase_patch7", "avg", 10)
    kd = KnowledgeDistillation(teacher, model, alpha=0.25, temperature=2.0)
    loss, parts = kd.loss(model, (X, Y))
    torch.testing.assert_close(loss.detach(), 0.75 * parts["ce"] + 0.25 * parts["kd"])


def _sd_task():
    torch.manual_seed(0)
    teacher = create_classifier("vit_smokebase_patch7", "avg", 10)
    return SpecificDistillation(teacher, create_classifier("vit_smokesmall_patch7", "distilled", 10))


def test_teacher_amp_same_runs_the_teacher_under_the_runs_autocast():
    task = _sd_task()
    task.set_teacher_precision("same", torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = task.teacher_forward(task.teacher, X)
        expected = task.teacher(X)
    assert t.dtype == torch.bfloat16 and torch.equal(t, expected) and not t.requires_grad


def test_teacher_amp_gives_the_teacher_its_own_precision_and_float32_outputs():
    task = _sd_task()
    with torch.no_grad():
        fp32 = task.teacher(X)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = task.teacher(X).float()
    assert not torch.equal(fp32, bf16)  # the two precisions are told apart below
    task.set_teacher_precision("bf16", torch.device("cpu"))  # an fp32 student, a bf16 teacher
    t = task.teacher_forward(task.teacher, X)
    assert t.dtype == torch.float32 and torch.equal(t, bf16)
    task.set_teacher_precision("none", torch.device("cpu"))  # a bf16 run, an fp32 teacher
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = task.teacher_forward(task.teacher, X)
    assert t.dtype == torch.float32 and torch.equal(t, fp32)
    with pytest.raises(ValueError, match="CUDA"):
        task.set_teacher_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("kind", ["gd", "kd"])
def test_teacher_amp_reaches_the_gd_and_kd_teachers(kind):
    torch.manual_seed(0)
    if kind == "gd":
        task = _gd()
        noise = torch.rand(4, task.model.num_patches)
        run = lambda: task.teacher_targets(X, noise)[0]  # noqa: E731
    else:
        task = KnowledgeDistillation(create_classifier("vit_smokebase_patch7", "avg", 10),
                                     create_classifier("vit_smokesmall_patch7", "avg", 10))
        run = lambda: task.teacher_forward(task.teacher, X)  # noqa: E731
    fp32 = run()
    task.set_teacher_precision("bf16", torch.device("cpu"))
    bf16 = run()
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)
    loss, _ = task.loss(task.model, (X, Y))
    loss.backward()
    assert torch.isfinite(loss)
