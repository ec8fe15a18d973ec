"""The paper-scale dense recipes: what the official runs do, and where our losses plug in.

COCO and ADE20K at the paper's scale are run by the maintained libraries the official code
forked: **detectron2** (ViTDet Mask R-CNN, ``projects/ViTDet``) for detection and
**mmsegmentation** (UperNet) for segmentation. This module is plain data, with no dependency on
either: the two dicts below record the official G2SD configurations (its detectron2 and mmsegmentation
configs) and, under ``"hooks"``, which tensors of those
libraries our loss functions take, so a user can add G2SD to an up-to-date detectron2 / mmseg
without the forks:

* detection: register forward hooks on the student's and the teacher's ``model.backbone``
  (a ``SimpleFeaturePyramid`` returning ``{"p2": .., "p6": ..}``, 256 channels) and
  ``model.proposal_generator.rpn_head`` (``StandardRPNHead.forward`` returns
  ``(objectness list of (N, 3, H_l, W_l), deltas list)``); pass adapters(student p2..p6), teacher
  p2..p6 and both objectness lists to :func:`g2sd_lib.losses.frs_losses`, weight the two sums
  0.001 / 0.1 and multiply by :func:`g2sd_lib.losses.distill_warmup` (it, 500);
* segmentation: hook ``model.decode_head.conv_seg`` of both ``EncoderDecoder`` models (outputs
  (N, 150, 128, 128) for a 512 crop) and add :func:`g2sd_lib.losses.cwd_loss` (tau 1, weight 3)
  to the student's ``decode.loss_seg`` + ``aux.loss_seg``.

The small-scale twins of these recipes are :class:`g2sd_lib.dense.DetectionDistillation` and
:class:`g2sd_lib.dense.SegmentationDistillation`, which implement the same losses on torchvision /
our own UperNet.
"""

COCO_DETECTION = {
    "library": "detectron2 (projects/ViTDet, LazyConfig)",
    "official_config": "G2SD_det_dis/projects/ViTDet/configs/COCO/distillation/mask_rcnn_vitdet_b2s_100ep.py",
    "detector": "ViTDet Mask R-CNN: plain ViT, SimpleFeaturePyramid scales (4, 2, 1, 0.5) + LastLevelMaxPool "
                "-> p2..p6, 256 channels, LN; RPN 2 convs, 3 anchors; box head 4conv1fc (LN); mask head (LN)",
    "teacher": {"backbone": "ViT-B (768 / 12 blocks / 12 heads)", "weights": "fine-tuned ViTDet Mask R-CNN ViT-B, "
                "detectron2 model-zoo .pkl (mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl, 51.6 box AP)",
                "mode": "frozen; officially train mode with drop path 0.1 and no no_grad, here eval + no_grad"},
    "student": {"backbone": "ViT-S (384 / 12 blocks / 6 heads)", "init": "GD student (ViT_Sm_GD.pth, MAE format)",
                "drop_path": 0.1},
    "window_attention": {"window": 14, "global_blocks": [2, 5, 8, 11], "rel_pos": True},
    "iterations": 184_375,  # 100 epochs of COCO train2017 at batch 64
    "batch_size": 64,  # 8 GPUs x 8 images
    "optimizer": {"type": "AdamW", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.05,
                  "layer_decay": 0.7, "layer_decay_layers": 12},
    "lr_schedule": {"warmup_iters": 250, "warmup_factor": 0.001, "steps": [163_889, 177_546], "gamma": 0.1},
    "input": {"train": "LSJ: flip, ResizeScale(0.1-2.0, 1024), FixedSizeCrop 1024, pad to 1024",
              "test": "ResizeShortestEdge 1024 (max 1024)", "size": 1024},
    "distillation": {"loss": "FRS-style (g2sd_lib.losses.frs_losses)", "adapter": "Conv2d(256, 256, 3, padding=1) "
                     "per level, no ReLU", "levels": ["p2", "p3", "p4", "p5", "p6"],
                     "feat_weight": 0.001, "obj_weight": 0.1, "warmup_iters": 500},
    "hooks": {"features": "model.backbone -> dict p2..p6 (N, 256, H_l, W_l)",
              "objectness": "model.proposal_generator.rpn_head -> (list of (N, 3, H_l, W_l) logits, deltas)"},
    "eval": {"every_iters": 5000, "metric": "COCOEvaluator box AP / mask AP on coco_2017_val"},
    "precision": "fp32 (train.amp.enabled is ignored by plain_distill_net.do_train)",
    "paper_result": "student at 98.1 % of the teacher on COCO detection (G2SD abstract)",
}

ADE20K_SEGMENTATION = {
    "library": "mmsegmentation (official fork: 0.11.0 + mmcv-full 1.3.0, BEiT-style semantic_segmentation)",
    "official_config": "G2SD_seg_dis/src/configs/distill/distill_cwd.py (run.sh overrides weight and tau)",
    "segmentor": "EncoderDecoder: MAE ViT (rel-pos bias, layer scale 1.0) out_indices (3, 5, 7, 11), fpn1..fpn4 "
                 "to strides 4/8/16/32; UPerHead (pool scales 1, 2, 3, 6; dropout 0.1; SyncBN); FCNHead aux on "
                 "level 3 (256 channels, loss weight 0.4); 150 classes",
    "teacher": {"backbone": "ViT-B", "decode_channels": 768, "weights": "UperNet + MAE ViT-B fine-tuned on ADE20K "
                "(mmseg checkpoint of this backbone code)", "mode": "frozen, eval, no_grad (as officially)"},
    "student": {"backbone": "ViT-S", "decode_channels": 384, "init": "GD student, pos_embed resized 14x14 -> 32x32",
                "drop_path": 0.1},
    "iterations": 160_000,
    "batch_size": 16,  # 8 GPUs x 2 crops
    "optimizer": {"type": "AdamW", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.05,
                  "layer_decay": 0.65, "layer_decay_layers": 12},
    "lr_schedule": {"policy": "poly", "power": 1.0, "min_lr": 0.0, "warmup_iters": 1500, "warmup_ratio": 1e-6},
    "input": {"train": "resize (2048, 512) ratio 0.5-2.0, RandomCrop 512 (cat_max_ratio 0.75), flip, "
                       "PhotoMetricDistortion", "test": "slide window 512, stride 341, single scale", "crop": 512},
    "distillation": {"loss": "channel-wise divergence (g2sd_lib.losses.cwd_loss)", "tau": 1.0, "weight": 3.0,
                     "signal": "final logits before upsampling (N, 150, 128, 128)"},
    "hooks": {"student_logits": "model.decode_head.conv_seg (student)",
              "teacher_logits": "model.decode_head.conv_seg (teacher)"},
    "eval": {"every_iters": 16_000, "metric": "mIoU on ADE20K val"},
    "precision": "apex O1 mixed precision",
    "paper_result": "student at 99.3 % of the teacher on ADE20K segmentation (G2SD abstract)",
}

__all__ = ["ADE20K_SEGMENTATION", "COCO_DETECTION"]
