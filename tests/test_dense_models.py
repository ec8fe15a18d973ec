"""Dense models and their G2SD tasks on tiny ViTs: shapes, gradients, loss terms, metrics."""

import math

import pytest
import torch

from g2sd_lib import losses
from g2sd_lib.checkpoints import save_model
from g2sd_lib.dense import (DenseLoader, DetectionDistillation, SegmentationDistillation, ViTSegmenter, box_ap,
                            build_detector, default_out_indices, dense_param_groups, evaluate_detection,
                            evaluate_segmentation, load_backbone, load_dense_model, make_canvases, mean_iou)
from g2sd_lib.engine import train
from g2sd_lib.train_config import TrainConfig
from g2sd_lib.models import create_classifier

STUDENT, TEACHER = "vit_smokesmall_patch8", "vit_smokebase_patch8"
DET_KW = dict(img_size=64, box_head_convs=1, box_head_fc=32,
              detector_kwargs=dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                                   rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=64))


@pytest.fixture(scope="module")
def canvases():
    g = torch.Generator().manual_seed(0)
    items = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    for i in range(8):
        s = 10 + 2 * i
        items[i, 0, :s, :s] = torch.randint(100, 256, (s, s), generator=g, dtype=torch.uint8)
    return make_canvases(items, torch.arange(8), 4, size=64, max_items=3, seed=0)


def _grads(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


# ------------------------------------------------------------------------------------ segmentation
def test_out_indices_and_segmenter_shapes():
    assert default_out_indices(12) == (3, 5, 7, 11) and default_out_indices(6) == (1, 2, 3, 5)
    model = ViTSegmenter(STUDENT, num_classes=11, img_size=64)
    levels = model.forward_features(torch.randn(2, 1, 64, 64))
    assert [tuple(t.shape) for t in levels] == [(2, 16, 32, 32), (2, 16, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4)]
    out = model(torch.randn(2, 1, 64, 64))
    assert out["logits"].shape == (2, 11, 32, 32) and out["aux"].shape == (2, 11, 8, 8)
    model.eval()
    assert set(model(torch.randn(2, 1, 64, 64))) == {"logits"}
    assert model.predict(torch.randn(2, 1, 64, 64)).shape == (2, 64, 64)


def test_pyramid_scales_and_the_mlp_decoder():
    model = ViTSegmenter(STUDENT, img_size=64, scales=(2, 1, 0.5, 0.25), decoder="mlp", channels=8)
    levels = model.forward_features(torch.randn(2, 1, 64, 64))
    assert [t.shape[-1] for t in levels] == [16, 8, 4, 2]
    out = model(torch.randn(2, 1, 64, 64))
    assert out["logits"].shape == (2, 11, 16, 16) and out["aux"].shape == (2, 11, 4, 4)
    assert model.predict(torch.randn(1, 1, 64, 64)).shape == (1, 64, 64)
    det = build_detector(STUDENT, out_channels=8, scales=(2, 1, 0.5, 0.25), **DET_KW)
    feats = det.backbone(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]
    assert det.arch["anchor_sizes"] == [16, 32, 64, 128, 256]  # 4 x strides 4 .. 64
    with pytest.raises(ValueError, match="powers of two"):
        ViTSegmenter(STUDENT, img_size=64, scales=(3, 1, 0.5, 0.25))
    with pytest.raises(ValueError, match="cannot be pooled"):
        ViTSegmenter(STUDENT, img_size=64, scales=(1, 0.5, 0.25, 0.0625))
    with pytest.raises(ValueError, match="decoder"):
        ViTSegmenter(STUDENT, img_size=64, decoder="fpn")


def test_segmentation_distillation_step(canvases):
    torch.manual_seed(0)
    task = SegmentationDistillation(ViTSegmenter(TEACHER, img_size=64), ViTSegmenter(STUDENT, img_size=64))
    seen = {}
    for who, m in (("student", task.model), ("teacher", task.teacher)):
        m.decode_head.conv_seg.register_forward_hook(lambda mod, i, o, who=who: seen.__setitem__(who, o))
    x, masks = next(iter(DenseLoader(canvases, "segmentation", 2, shuffle=False)))
    loss, parts = task.loss(task.model, (x, masks))
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"seg", "aux", "cwd", "cwd_floor"}
    assert torch.allclose(parts["cwd"], losses.cwd_loss(seen["student"], seen["teacher"], tau=1.0, weight=3.0))
    # the floor: what a student copying the teacher's logits scores, below the student's cwd
    copy = losses.cwd_loss(seen["teacher"], seen["teacher"], tau=1.0, weight=3.0)
    assert torch.allclose(parts["cwd_floor"], copy) and parts["cwd_floor"] < parts["cwd"]
    assert torch.allclose(loss, parts["seg"] + 0.4 * parts["aux"] + parts["cwd"])
    grads = _grads(task.model)
    assert "decode_head.conv_seg.weight" in grads and "vit.blocks.0.attn.qkv.weight" in grads
    assert "auxiliary_head.conv_seg.weight" in grads
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())
    metrics = evaluate_segmentation(task.model, DenseLoader(canvases, "segmentation", 2, shuffle=False))
    assert 0 <= metrics["mIoU"] <= 1 and 0 <= metrics["aAcc"] <= 1


def test_mean_iou_known_answers():
    t = torch.tensor([[0, 0, 1, 1]])
    assert mean_iou(t, t, 3) == 1.0
    assert mean_iou(1 - t, t, 2) == 0.0
    assert math.isclose(mean_iou(torch.tensor([[0, 1, 1, 1]]), t, 3), (1 / 2 + 2 / 3) / 2)  # class 2 absent
    assert mean_iou(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 255, 1, 1]]), 2) == 1.0  # ignored pixel


def test_param_groups_layer_decay():
    model = ViTSegmenter(STUDENT, img_size=64)  # depth 2: n = 3 layers
    groups = dense_param_groups(model, 0.05, 0.5, "vit.")
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["vit.pos_embed"] == 0.125 and scale["vit.blocks.0.attn.qkv.weight"] == 0.25
    assert scale["vit.blocks.1.mlp.fc1.weight"] == 0.5 and scale["decode_head.conv_seg.weight"] == 1.0
    assert decay["vit.pos_embed"] == 0.0 and decay["vit.blocks.0.norm1.weight"] == 0.0
    assert decay["pyramid.fpn2.0.weight"] == 0.05


def test_load_backbone_resamples_pos_embed():
    small = create_classifier(STUDENT, num_classes=10, img_size=32)
    model = ViTSegmenter(STUDENT, img_size=64)
    load_backbone(model.vit, small.state_dict())
    assert torch.equal(model.vit.blocks[1].mlp.fc2.weight, small.blocks[1].mlp.fc2.weight)
    assert model.vit.pos_embed.shape == (1, 65, 16)
    assert torch.equal(model.vit.pos_embed[:, 0], small.pos_embed[:, 0])


# ------------------------------------------------------------------------------------ detection
def test_detector_train_and_eval(canvases):
    model = build_detector(STUDENT, out_channels=16, **DET_KW)
    feats = model.backbone(torch.randn(2, 1, 64, 64))
    assert list(feats) == ["p2", "p3", "p4", "p5", "p6"]
    assert [f.shape[-1] for f in feats.values()] == [32, 16, 8, 4, 2] and feats["p2"].shape[1] == 16
    x, targets = next(iter(DenseLoader(canvases, "detection", 2, shuffle=False)))
    out = model(list(x), targets)
    assert set(out) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in out.values())
    model.eval()
    pred = model(list(x))
    assert len(pred) == 2 and set(pred[0]) == {"boxes", "labels", "scores"}


def test_detection_distillation_step(canvases):
    torch.manual_seed(0)
    teacher = build_detector(TEACHER, out_channels=24, **DET_KW)
    task = DetectionDistillation(teacher, build_detector(STUDENT, out_channels=16, **DET_KW))
    assert [a.out_channels for a in task.model.distill_adapter] == [24] * 5
    x, targets = next(iter(DenseLoader(canvases, "detection", 2, shuffle=False)))
    loss, parts = task.loss(task.model, (x, targets))
    assert torch.isfinite(loss) and parts["distill_feat"] == 0 and parts["distill_obj"] == 0  # warm-up at it 0
    assert task.iteration == 1
    terms = {}
    for it in (250, 500):
        task.iteration = it
        task.model.zero_grad()
        loss, parts = task.loss(task.model, (x, targets))
        terms[it] = (parts["distill_feat"], parts["distill_obj"])
    assert all(torch.allclose(a, b / 2) for a, b in zip(terms[250], terms[500]))  # factor it / 500
    assert terms[500][0] > 0 and terms[500][1] > 0
    loss.backward()
    grads = _grads(task.model)
    assert {f"distill_adapter.{i}.weight" for i in range(5)} <= grads
    assert "backbone.vit.blocks.0.attn.qkv.weight" in grads and "rpn.head.cls_logits.weight" in grads
    assert not any(p.requires_grad for p in task.teacher.parameters()) and not task.teacher.training
    task.set_teacher_precision("bf16", torch.device("cpu"))  # teacher_amp: its pyramid and logits in float32
    feats, obj = task.teacher_rpn(list(x.unbind(0)))
    assert {f.dtype for f in feats + obj} == {torch.float32}
    assert torch.isfinite(task.loss(task.model, (x, targets))[0])


def test_segmentation_teacher_amp(canvases):
    task = SegmentationDistillation(ViTSegmenter(TEACHER, img_size=64), ViTSegmenter(STUDENT, img_size=64))
    x, masks = next(iter(DenseLoader(canvases, "segmentation", 2, shuffle=False)))
    with torch.no_grad():
        fp32 = task.teacher(x)["logits"]
    task.set_teacher_precision("bf16", torch.device("cpu"))
    t = task.teacher_forward(task.teacher, x)["logits"]
    assert t.dtype == torch.float32 and not torch.equal(t, fp32)
    assert torch.isfinite(task.loss(task.model, (x, masks))[0])


def test_box_ap_known_answers():
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "labels": torch.tensor([1, 2])}]
    perfect = [{"boxes": gt[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}]
    assert box_ap(perfect, gt) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}
    disjoint = [{"boxes": torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 10]]), "scores": torch.tensor([0.9, 0.8]),
                 "labels": torch.tensor([1, 2])}]  # the second one is in the right place but of the wrong class
    assert box_ap(disjoint, gt)["AP"] == 0.0
    one = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    fp_first = [{"boxes": torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 10]]), "scores": torch.tensor([0.9, 0.8]),
                 "labels": torch.tensor([1, 1])}]
    assert math.isclose(box_ap(fp_first, one)["AP"], 0.5)  # precision 1/2 at every recall level
    shifted = [{"boxes": torch.tensor([[0.0, 0, 10, 12]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    ap = box_ap(shifted, one)  # IoU 100 / 120 = 0.833: matched at thresholds 0.50 .. 0.80 only
    assert ap["AP50"] == 1.0 and ap["AP75"] == 1.0 and math.isclose(ap["AP"], 0.7)


# ------------------------------------------------------------------------------------ with the engine
def test_engine_trains_and_saves_dense_models(canvases, tmp_path):
    cfg = dict(epochs=1, batch_size=2, blr=1e-3, amp="none", device="cpu", progress=False)
    teacher = build_detector(TEACHER, out_channels=16, **DET_KW)
    task = DetectionDistillation(teacher, build_detector(STUDENT, out_channels=16, **DET_KW))
    loader = DenseLoader(canvases, "detection", 2, shuffle=True)
    history = train(task, loader, TrainConfig(out_dir=str(tmp_path / "det"), **cfg),
                    evaluate=lambda m: evaluate_detection(m, DenseLoader(canvases, "detection", 2, shuffle=False)))
    assert task.iteration == 2 and "train_distill_obj" in history[0] and 0 <= history[0]["box_AP"] <= 1
    again = load_dense_model(tmp_path / "det" / "model.safetensors")
    assert again.state_dict().keys() == task.model.state_dict().keys()
    seg = ViTSegmenter(STUDENT, img_size=64)
    save_model(seg, tmp_path / "seg.safetensors")
    assert torch.equal(load_dense_model(tmp_path / "seg.safetensors").decode_head.conv_seg.weight,
                       seg.decode_head.conv_seg.weight)
