"""G2SD in one file: generic-to-specific distillation of a masked autoencoder, on Fashion-MNIST.

Huang et al., "Generic-to-Specific Distillation of Masked Autoencoders", CVPR 2023. A small ViT
student learns from a large MAE-pretrained ViT teacher in two stages:

1. generic distillation (GD): on one random mask shared by both models, the student's small MAE
   decoder regresses the hidden states of the teacher's MAE decoder (no labels);
2. specific distillation (SD): the GD student's encoder becomes a classifier with a second,
   distillation token; its cls head learns the labels, its distillation head the decisions of
   the fine-tuned teacher classifier on the same images.

A student of the same size trained on labels alone for the SD budget is the baseline. The teachers
are the bundled ones in teachers/ (teachers/fmnist.md): images 28 x 28, patches 7 x 7, so
L = 16 patch tokens. The two losses and the evaluation are written out here; g2sd_lib gives the
models, data, checkpoints and learning-rate schedule. `make repro` runs the full, seeded experiment
(g2sd_lib/pipeline/profiles/fmnist.yaml).

    python g2sd.py            # the defaults (the recipe of notebook 00); it prints its numbers and wall time
    python g2sd.py --gd-epochs 1 --sd-epochs 1 --subset 2048 --test-images 1000   # a quick check

A mistake (an argument, a missing input) stops it with a line naming the fix (--debug: the traceback).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from g2sd_lib import data
from g2sd_lib.checkpoints import load_encoder, load_model
from g2sd_lib.errors import InputError, MissingInputError, Terminated, run_main
from g2sd_lib.fmnist import DatasetNotFoundError, find_fashion_mnist, load_fashion_mnist
from g2sd_lib.models import create_classifier, create_student
from g2sd_lib.optim import lr_at, param_groups, scaled_lr, set_lr

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "fashion-mnist"                                # `make data` puts the four IDX files here
TEACHER_MAE = ROOT / "teachers" / "fmnist_mae.safetensors"          # MAE with decoder: the GD teacher
TEACHER_CLS = ROOT / "teachers" / "fmnist_classifier.safetensors"   # fine-tuned classifier: the SD teacher
STUDENT_MAE = "mae_vit_fmsmall_patch7_dec48d2b"  # encoder 64 wide, 6 blocks; decoder 48 wide, 2 blocks (ViT-S role)
STUDENT_VIT = "vit_fmsmall_patch7"               # the same encoder as a classifier
MASK_RATIO = 0.75     # 12 of the 16 patches removed [paper 0.75]
TARGET_BLOCK = 2      # teacher decoder block (1-based) whose output is the GD target [official 4 of 8]
BETA = 2.0            # smooth-L1 threshold of the GD loss [official 2.0]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # a mistyped option is a user error: one line, not usage + exit
        raise InputError(f"{message} (python g2sd.py --help lists the options)")


def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("--gd-epochs", type=int, default=3, help="generic-distillation epochs [paper: 300]")
    p.add_argument("--sd-epochs", type=int, default=1, help="SD epochs, and the scratch baseline's [paper: 200]")
    p.add_argument("--subset", type=int, default=30000, help="training images (of the 55 000 left after validation)")
    p.add_argument("--test-images", type=int, default=10000, help="test images evaluated (of 10 000)")
    p.add_argument("--batch-size", type=int, default=256, help="even (mixup pairs images) [paper: 4096 GD, 1024 SD]")
    p.add_argument("--seed", type=int, default=0, help="data order, masks, initialisation, mixup")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of torch; 0 = torch's choice (all cores). "
                   "1 suits a CPU that other programs share: threads that wait for each other run slower")
    args = p.parse_args(argv)
    gpus = torch.cuda.device_count()  # 0 without CUDA
    devices = ["cpu"] + ["cuda"] * (gpus > 0) + [f"cuda:{i}" for i in range(gpus)]
    here = " or ".join(devices)
    for ok, fix in ((args.device in devices, f"--device {args.device} is not a device of this machine: use {here}"),
                    (args.gd_epochs >= 0 and args.sd_epochs >= 0, "--gd-epochs and --sd-epochs must be 0 or more"),
                    (args.batch_size >= 2 and args.batch_size % 2 == 0 and args.batch_size <= args.subset <= 55000,
                     "--batch-size must be even and at most --subset, which is at most 55000"),
                    (1 <= args.test_images <= 10000, "--test-images must be in 1..10000"),
                    (args.threads >= 0, "--threads must be 0 (torch's choice) or more")):
        if not ok:
            raise InputError(fix)
    return args


def check_inputs():
    """Stop with one line naming the fix when the dataset or a teacher file is missing."""
    try:
        find_fashion_mnist(DATA)
    except DatasetNotFoundError:
        raise MissingInputError("Fashion-MNIST not found in data/fashion-mnist; run `make data` first") from None
    missing = [p for p in (TEACHER_MAE, TEACHER_CLS) if not (p.is_file() and p.with_suffix(".json").is_file())]
    if missing:
        raise MissingInputError(f"teacher file {missing[0].relative_to(ROOT)} (or its .json sidecar) is missing: "
                                "`git checkout -- teachers/` restores it (`make data` fetches the dataset)")


# ------------------------------------------------------------------------------ the two losses
def gd_loss(y_hat, h_T):
    """GD: the student's projected decoder output y_hat (B, 1 + L, D_T) regresses the teacher decoder's
    hidden states h_T (B, 1 + L, D_T) after block k, LayerNormed without affine (LN), all tokens:
    L_GD = 1 / (B (1 + L) D_T) sum_{b,t,d} l_beta(y_hat - LN(h_T)),
    l_beta(r) = r^2 / (2 beta) if |r| < beta else |r| - beta / 2   (smooth L1, beta = 2)"""
    target = F.layer_norm(h_T, h_T.shape[-1:], eps=1e-6)  # per token: zero mean, unit variance over D_T
    return F.smooth_l1_loss(y_hat, target, beta=BETA)


def soft_cross_entropy(z, y_soft):
    """-1/B sum_b sum_c y~_bc log softmax(z_b)_c for logits z (B, C) and soft (mixed) labels y~ (B, C)."""
    return -(y_soft * F.log_softmax(z, dim=-1)).sum(-1).mean()


def sd_loss(z_cls, z_dist, y_soft, z_T):
    """Specific distillation: L_SD = 1/2 (SoftCE(z_cls, y~) + CE(z_dist, argmax_c z_T,c)), logits (B, C).
    The distillation head learns the teacher's hard decision (DeiT's hard distillation), no temperature."""
    return (soft_cross_entropy(z_cls, y_soft) + F.cross_entropy(z_dist, z_T.argmax(-1))) / 2


def g2sd_logits(model, x):
    """At evaluation the distilled student predicts with the average of its two heads' logits (official)."""
    z_cls, z_dist = model.forward_heads(model.forward_features(x))  # (B, C) each
    return (z_cls + z_dist) / 2


def train(name, model, loss_fn, loader, epochs, blr, min_lr, betas=(0.9, 0.999), decay_tokens=True):
    """The loop of every stage: AdamW, lr = blr * batch / 256 with a half-epoch linear warm-up and a
    cosine decay to ``min_lr``, set every step (MAE's schedule). ``loss_fn(x, y)`` -> scalar loss.
    Weight decay 0.05 skips biases and norms and, unless ``decay_tokens``, the cls / distillation
    tokens and position embeddings (as the official SD; GD decays them). Returns each epoch's mean loss."""
    groups = param_groups(model, weight_decay=0.05, skip_model_list=not decay_tokens)
    opt = torch.optim.AdamW(groups, lr=0.0, betas=betas)
    lr = scaled_lr(blr, loader.batch_size)
    history = []
    for epoch in range(epochs):
        model.train()
        loader.set_epoch(epoch)  # a new order and new augmentations each epoch
        total, t0 = 0.0, time.perf_counter()
        for step, (x, y) in enumerate(loader):
            set_lr(opt, lr_at(epoch + step / len(loader), lr, min_lr, min(0.5, epochs), epochs))
            loss = loss_fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        history.append(total / len(loader))
        print(f"{name} epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return history


def reseed(seed):
    """Seed torch (initialisation, masks) and numpy (timm's mixup weights): each stage starts alike."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_inputs()
        run(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (run_main raises Terminated for it)
        print("stopped: g2sd.py keeps no checkpoint; run it again to start over", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device, start = torch.device(args.device), time.perf_counter()
    reseed(args.seed)

    # ------------------------------------------------------------------------------------------ data
    # uint8 tensors in memory, augmented a batch at a time. The pipeline's 5 000 validation images are
    # kept out; the first `subset` of the other 55 000, in a seeded order, are the training set.
    images, labels = load_fashion_mnist("train", DATA)               # (60000, 1, 28, 28) uint8, (60000,)
    train_idx, _ = data.train_val_split(len(images), val_size=5000, seed=0)
    pick = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(args.seed))]
    train_x, train_y = images[pick[:args.subset]], labels[pick[:args.subset]]
    test_x, test_y = load_fashion_mnist("test", DATA)                # (10000, 1, 28, 28), (10000,)
    test_x, test_y = test_x[:args.test_images], test_y[:args.test_images]
    normalize = data.Normalize(data.FMNIST_MEAN, data.FMNIST_STD)    # x / 255 -> (x - mean) / std

    def loader(*augment):
        """Training batches (B, 1, 28, 28) float, (B,) int64; the same order for every stage (one seed)."""
        return data.TensorLoader(train_x, train_y, args.batch_size, shuffle=True, drop_last=True,
                                 seed=args.seed, transform=data.Compose(augment), device=device)

    test_loader = data.TensorLoader(test_x, test_y, 1000, shuffle=False, drop_last=False, transform=normalize,
                                    device=device)
    print(f"train {tuple(train_x.shape)}, test {tuple(test_x.shape)}, {device}, threads: {torch.get_num_threads()}")

    # -------------------------------------------------------------------------------------- teachers
    # load_model checks that each file can play its role (the GD teacher an MAE WITH its decoder, the SD
    # teacher a classifier) before loading it strictly. Both are frozen: eval mode, no gradients.
    mae_teacher = load_model(TEACHER_MAE, "gd-teacher")[0].to(device).eval().requires_grad_(False)
    cls_teacher = load_model(TEACHER_CLS, "sd-teacher")[0].to(device).eval().requires_grad_(False)
    D_T = mae_teacher.decoder_embed.out_features  # teacher decoder width, 96

    # ===================================================================== 1. generic distillation
    # The student is a small MAE whose decoder ends in a 2-layer MLP to the teacher decoder width D_T.
    student = create_student(STUDENT_MAE, teacher_decoder_dim=D_T).to(device)
    student.freeze_unused(encoder_branch_used=False)  # decoder_norm / decoder_pred: unused, kept for the layout

    def gd_batch_loss(x, noise):
        """The GD loss of one batch x (B, 1, 28, 28) under the mask drawn from noise (B, L)."""
        with torch.no_grad():
            # teacher: encode cls + the 4 visible patches (B, 5, 128), decode them with 12 mask tokens in
            # the original patch order; stop after block k, before decoder_norm
            latent, _, ids_restore = mae_teacher.forward_encoder(x, MASK_RATIO, noise)
            h_T = mae_teacher.forward_decoder(latent, ids_restore, stop_after=TARGET_BLOCK)  # (B, 1 + L, D_T)
        # student: the SAME visible patches (same noise), all its decoder blocks, the MLP: (B, 1 + L, D_T).
        # All tokens are supervised (official supervise_all): a mask token's target is the teacher's
        # inference of the missing patch from the visible ones, what the student should learn to infer.
        y_hat = student(x, MASK_RATIO, noise)["decoder"]
        return gd_loss(y_hat, h_T)

    def gd_step(x, _labels):
        noise = torch.rand(len(x), student.num_patches, device=device)  # (B, L): ONE noise, one mask for both
        return gd_batch_loss(x, noise)

    # A fixed batch of test images and a fixed mask, scored before and after GD: the drop is what GD
    # learnt (an untrained student scores about (1 + E[y_hat^2]) / (2 beta) > 0.25; notebook 00).
    probe_x = normalize(test_x[:256].float() / 255).to(device)
    probe_noise = torch.rand(len(probe_x), student.num_patches,  # (256, L), drawn once
                             generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        probe_before = gd_batch_loss(probe_x, probe_noise.to(device)).item()
    crop_flip = data.RandomResizedCropFlip(28, scale=(0.5, 1.0))  # MAE's pretraining augmentation [scale 0.2-1]
    gd_history = train("GD", student, gd_step, loader(crop_flip, normalize), args.gd_epochs,
                       blr=1e-3, min_lr=1e-5, betas=(0.9, 0.95))  # [GD.sh: blr 1.5e-4 over 300 epochs]
    with torch.no_grad():
        probe_after = gd_batch_loss(probe_x, probe_noise.to(device)).item()

    # ==================================================================== 2. specific distillation
    # The GD student's encoder (cls token, position embeddings, patch embedding, blocks, norm) becomes a
    # classifier with a distillation token appended last; its decoder and MLP are dropped.
    reseed(args.seed)
    g2sd = create_classifier(STUDENT_VIT, "distilled", num_classes=10).to(device)
    load_encoder(g2sd, student.state_dict())
    # mixup 0.2 + label smoothing 0.1 turn labels into soft targets (B, 10) [SD.sh: mixup 0.8, cutmix 1.0]
    mixup = data.build_mixup(10, mixup=0.2, cutmix=0.0, smoothing=0.1)
    sd_augment = (data.RandomResizedCropFlip(28, scale=(0.6, 1.0)), normalize, data.RandomErasing(0.1))

    def sd_step(x, y):
        x, y_soft = mixup(x, y)                 # x~ (B, 1, 28, 28), y~ (B, 10)
        with torch.no_grad():
            z_T = cls_teacher(x)                # (B, 10): the teacher sees the same mixed images
        z_cls, z_dist = g2sd(x)                 # (B, 10) each: head(cls token), head_dist(distillation token)
        return sd_loss(z_cls, z_dist, y_soft, z_T)

    sd_history = train("SD", g2sd, sd_step, loader(*sd_augment), args.sd_epochs,
                       blr=1e-3, min_lr=1e-6, decay_tokens=False)  # [SD.sh: blr 1e-3, layer decay 0.75]
    # (no layer decay: after a GD this short every block at the full lr did better on the validation split,
    # the fmnist profile's choice; the official 0.75 lets the distilled lower blocks move less)

    # ===================================================== 3. baseline: the same student from scratch
    # Random initialisation, labels only, the same images, augmentation and epochs as SD: what GD + SD
    # add. (It gets no GD epochs: G2SD spends those on unlabelled images, as in the paper's comparison.)
    reseed(args.seed)
    scratch = create_classifier(STUDENT_VIT, "avg", num_classes=10).to(device)

    def scratch_step(x, y):
        x, y_soft = mixup(x, y)
        return soft_cross_entropy(scratch(x), y_soft)

    train("scratch", scratch, scratch_step, loader(*sd_augment), args.sd_epochs, blr=1e-3, min_lr=1e-6,
          decay_tokens=False)

    # ==================================================================================== 4. results
    @torch.no_grad()
    def accuracy(model, logits_of):
        model.eval()
        return sum((logits_of(x).argmax(1) == y).sum().item() for x, y in test_loader) / len(test_y)

    top1 = {"teacher": accuracy(cls_teacher, cls_teacher), "G2SD": accuracy(g2sd, lambda x: g2sd_logits(g2sd, x)),
            "scratch": accuracy(scratch, scratch)}
    print(f"\nGD loss per epoch: {' '.join(f'{v:.4f}' for v in gd_history)}")
    print(f"GD loss on the probe batch: {probe_before:.4f} before GD, {probe_after:.4f} after")
    print(f"SD loss per epoch: {' '.join(f'{v:.4f}' for v in sd_history)}")
    print(f"top-1 on {len(test_y)} test images ({len(train_x)} training images, GD {args.gd_epochs} + "
          f"SD {args.sd_epochs} epochs; scratch: {args.sd_epochs} epochs on labels):")
    for name, acc in top1.items():
        print(f"  {name} top-1: {acc:.4f}")
    print(f"G2SD - scratch: {top1['G2SD'] - top1['scratch']:+.4f}; wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    run_main(main)
