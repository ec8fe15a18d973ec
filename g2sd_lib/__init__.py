"""g2sd_lib: Generic-to-Specific Distillation of Masked Autoencoders (Huang et al., CVPR 2023).

A small library on timm + PyTorch: MAE teacher with decoder, G2SD student with lightweight decoder
and feature head, distillation-token classifier, the distillation losses, checkpoint loading, data,
one training engine for every stage, and evaluation.
"""

__version__ = "0.1.0"

from .errors import install_notebook_handler as _install_notebook_handler  # noqa: E402

_install_notebook_handler()  # notebooks show a user mistake as its one-paragraph message

import os as _os  # noqa: E402

if _os.environ.get("G2SD_CONCURRENT_STAGES", "1") != "1":  # a stage run by g2sd_lib.pipeline.repro next to others
    from .device import share_cpu_threads as _share_cpu_threads

    _share_cpu_threads()  # this process takes its share of the CPU cores, not all of them
