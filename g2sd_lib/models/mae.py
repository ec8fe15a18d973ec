"""Masked autoencoder ViT (encoder + decoder) whose mask comes from externally supplied noise.

The methods follow the data flow of MAE: ``random_masking`` -> ``forward_encoder`` ->
``forward_decoder`` -> ``forward_loss``. G2SD needs two things plain MAE lacks:

* the mask is a function of a noise tensor the *caller* draws, so the teacher and the student of
  generic distillation see exactly the same visible patches;
* the decoder can stop after block ``k`` (1-based) and return the hidden states of all tokens
  before ``decoder_norm``: the generic-distillation target.

Parameter names equal the official MAE / G2SD checkpoint keys, so those load strictly.
"""

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from ..losses import mae_pixel_loss
from .pos_embed import sincos_2d

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """Keep the ``(1 - mask_ratio)`` share of tokens with the smallest noise.

    Args:
        x: (B, L, D) patch tokens.
        noise: (B, L) values in any range; one tensor shared by teacher and student.
    Returns:
        x_visible (B, L_keep, D) in ascending-noise order, mask (B, L) with 1 = removed, in the
        original patch order, and ids_restore (B, L) that undoes the shuffle.
    """
    B, L, D = x.shape
    if noise.shape != (B, L):
        raise ValueError(f"noise must have shape {(B, L)} (batch, patches), got {tuple(noise.shape)}")
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, L, device=x.device, dtype=x.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_visible, mask, ids_restore


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a narrow ViT decoder, built from timm's ``PatchEmbed`` and ``Block``.

    Position embeddings (encoder and decoder) are MAE's fixed 2-D sin-cos tables, stored as frozen
    parameters as in the official checkpoints. Everything is sized from ``num_patches``.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_pix_loss=False, drop_path_rate=0.0):
        super().__init__()
        self.in_chans = in_chans
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.grid_size = self.patch_embed.grid_size[0]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim), requires_grad=False)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm, drop_path=dpr[i])
            for i in range(depth))
        self.norm = LayerNorm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(decoder_depth))
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.norm_pix_loss = norm_pix_loss
        self.initialize_weights()

    def initialize_weights(self):
        """MAE's init: sin-cos tables, xavier-uniform linears and patch projection, N(0, .02) tokens."""
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size))
        self.decoder_pos_embed.data.copy_(sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)

    # ----------------------------------------------------------------------------------- patches
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), pixels of a patch in (row, col, channel) order as MAE."""
        p, c = self.patch_size, self.in_chans
        B, _, H, W = imgs.shape
        h, w = H // p, W // p
        x = imgs.reshape(B, c, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W); inverse of ``patchify``."""
        p, c, g = self.patch_size, self.in_chans, self.grid_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def random_noise(self, batch_size: int, device=None, generator=None) -> torch.Tensor:
        """(B, L) uniform noise for ``random_masking``; draw it once per batch and share it."""
        return torch.rand(batch_size, self.num_patches, device=device, generator=generator)

    # ----------------------------------------------------------------------------------- forward
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor,
                        return_prenorm: bool = False):
        """Encode the visible patches.

        Returns latent (B, 1 + L_keep, D) after ``norm`` (cls first, then visible tokens),
        mask (B, L), ids_restore (B, L) and, with ``return_prenorm``, the same tokens before
        ``norm`` (the official encoder-branch target).
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        latent = self.norm(x)
        if return_prenorm:
            return latent, mask, ids_restore, x
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, stop_after: int | None = None):
        """Decode all tokens.

        Args:
            latent: (B, 1 + L_keep, D) encoder output.
            stop_after: None for the full decoder; k in 1..decoder_depth to stop after block k.
        Returns:
            without ``stop_after``: pixel predictions (B, L, p*p*C) for every patch (cls dropped);
            with it: hidden states (B, 1 + L, D_dec) of cls + all patches in original order,
            before ``decoder_norm``.
        """
        if stop_after is not None and not 1 <= stop_after <= len(self.decoder_blocks):
            raise ValueError(f"stop_after must be in 1..{len(self.decoder_blocks)}, got {stop_after}")
        x = self.decoder_embed(latent)
        B, n_vis, D = x.shape
        mask_tokens = self.mask_token.expand(B, ids_restore.shape[1] + 1 - n_vis, -1)
        patches = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        for i, blk in enumerate(self.decoder_blocks, start=1):
            x = blk(x)
            if i == stop_after:
                return x
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MAE pixel loss on the removed patches (see ``losses.mae_pixel_loss``)."""
        return mae_pixel_loss(pred, self.patchify(imgs), mask, norm_pix=self.norm_pix_loss)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """MAE pretraining step: returns (loss, pred (B, L, p*p*C), mask (B, L))."""
        if noise is None:
            noise = self.random_noise(imgs.shape[0], device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def encoder_state_dict(self) -> dict:
        """The encoder's weights under timm ``VisionTransformer`` key names (no decoder, no mask token)."""
        keep = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(keep)}


def init_linear_and_norm(m: nn.Module):
    """The MAE initialisation of one module (for ``model.apply``): Xavier-uniform linear weights, zero
    biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
