"""g2sd_lib: Generic-to-Specific Distillation of Masked Autoencoders (Huang et al., CVPR 2023).

A small library on timm + PyTorch: MAE teacher with decoder, G2SD student with lightweight decoder
and feature head, distillation-token classifier, the distillation losses, checkpoint loading, data,
one training engine for every stage, and evaluation.
"""

__version__ = "0.1.0"
