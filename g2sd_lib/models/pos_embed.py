"""MAE's fixed 2-D sin-cos position embeddings.

MAE (and so G2SD) stores these tables in its checkpoints as (non-trained) parameters. timm's
``build_sincos2d_pos_embed`` orders the channels differently, so we compute MAE's layout ourselves:
for a grid of ``g x g`` patches and width ``D`` the first ``D/2`` channels encode the patch column,
the last ``D/2`` its row, each half as ``[sin(pos * w_k), cos(pos * w_k)]`` with
``w_k = 10000^(-k / (D/4))``; an all-zero row is prepended for the cls token.
"""

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) table ``[sin(p w), cos(p w)]``, computed in float64 as MAE does."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.double().reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Table of shape (1, [1 +] grid_size**2, dim), float32; token order is row-major over patches."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)
