"""The G2SD generic-distillation student: an MAE ViT with a lightweight decoder and feature heads.

The student runs the same masked input as the teacher (one shared noise tensor), all of its decoder
blocks, and then ``decoderfeature_pred``, a 2-layer GELU MLP from the student decoder width to the
teacher decoder width. Its ``decoder_norm`` and ``decoder_pred`` are kept (unused in GD) so the
state dict matches the official GD checkpoints key for key.

The official model also has ``encoderfeature_pred`` (student encoder width -> teacher encoder width)
whose loss is multiplied by 0; ``encoder_branch=True`` builds it so official GD checkpoints load
strictly, and ``encoder_loss_weight`` in the GD loss decides whether it trains anything.
"""

import torch
from timm.layers import Mlp

from .mae import MaskedAutoencoderViT, init_linear_and_norm


class G2SDStudent(MaskedAutoencoderViT):
    def __init__(self, *, teacher_decoder_dim: int, teacher_embed_dim: int | None = None,
                 encoder_branch: bool = False, **mae_kwargs):
        super().__init__(**mae_kwargs)
        dec_dim = self.decoder_embed.out_features
        self.decoderfeature_pred = Mlp(dec_dim, teacher_decoder_dim, teacher_decoder_dim)
        self.encoderfeature_pred = None
        if encoder_branch:
            if teacher_embed_dim is None:
                raise ValueError("encoder_branch=True needs teacher_embed_dim")
            embed_dim = self.cls_token.shape[-1]
            self.encoderfeature_pred = Mlp(embed_dim, teacher_embed_dim, teacher_embed_dim)
        self.decoderfeature_pred.apply(init_linear_and_norm)
        if self.encoderfeature_pred is not None:
            self.encoderfeature_pred.apply(init_linear_and_norm)

    def forward_features(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor) -> dict:
        """Predict the teacher's features for a masked batch.

        Returns a dict with ``decoder`` (B, 1 + L, D_teacher_dec): predictions for cls + all
        patches in original order; ``encoder`` (B, 1 + L_keep, D_teacher) or None; ``mask`` (B, L)
        with 1 = removed; ``ids_restore`` (B, L).
        """
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        hidden = self.forward_decoder(latent, ids_restore, stop_after=len(self.decoder_blocks))
        out = {"decoder": self.decoderfeature_pred(hidden), "mask": mask, "ids_restore": ids_restore,
               "encoder": None}
        if self.encoderfeature_pred is not None:
            out["encoder"] = self.encoderfeature_pred(latent)
        return out

    def forward(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor) -> dict:
        """The student's training forward is feature prediction (see ``forward_features``)."""
        return self.forward_features(imgs, mask_ratio, noise)

    def freeze_unused(self, encoder_branch_used: bool) -> None:
        """Stop gradients to the parts GD never uses (``decoder_norm``, ``decoder_pred`` and, when its
        loss weight is 0, ``encoderfeature_pred``), so DDP needs no unused-parameter search."""
        unused = [self.decoder_norm, self.decoder_pred]
        if self.encoderfeature_pred is not None and not encoder_branch_used:
            unused.append(self.encoderfeature_pred)
        for module in unused:
            module.requires_grad_(False)
