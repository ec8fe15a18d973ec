"""The official MAE checkpoints G2SD distils from: file name -> URL, the release's md5 prefix, what it is.

GD reads the *full* pre-trained MAE (encoder + decoder, ``*_full.pth``); SD reads the fine-tuned
classifier (``mae_finetuned_*``). The release publishes only 6-hex md5 prefixes, and none for the
``_full`` files; :mod:`g2sd_lib.pipeline.download` fetches and pins them.
"""

_MAE = "https://dl.fbaipublicfiles.com/mae"

OFFICIAL_CHECKPOINTS: dict[str, dict] = {
    "mae_pretrain_vit_base.pth": dict(
        url=f"{_MAE}/pretrain/mae_pretrain_vit_base.pth", md5_prefix="8cad7c",
        description="ViT-B/16 MAE pre-trained, encoder only: NOT usable as a GD teacher"),
    "mae_pretrain_vit_base_full.pth": dict(
        url=f"{_MAE}/pretrain/mae_pretrain_vit_base_full.pth", md5_prefix=None,
        description="ViT-B/16 MAE pre-trained, encoder + decoder (norm_pix_loss): the GD teacher"),
    "mae_pretrain_vit_large_full.pth": dict(
        url=f"{_MAE}/pretrain/mae_pretrain_vit_large_full.pth", md5_prefix=None,
        description="ViT-L/16 MAE pre-trained, encoder + decoder (norm_pix_loss)"),
    "mae_pretrain_vit_huge_full.pth": dict(
        url=f"{_MAE}/pretrain/mae_pretrain_vit_huge_full.pth", md5_prefix=None,
        description="ViT-H/14 MAE pre-trained, encoder + decoder (norm_pix_loss)"),
    "mae_finetuned_vit_base.pth": dict(
        url=f"{_MAE}/finetune/mae_finetuned_vit_base.pth", md5_prefix="1b25e9",
        description="ViT-B/16 MAE fine-tuned on ImageNet-1k (83.6 top-1): the SD teacher"),
    "mae_finetuned_vit_large.pth": dict(
        url=f"{_MAE}/finetune/mae_finetuned_vit_large.pth", md5_prefix="51f550",
        description="ViT-L/16 MAE fine-tuned on ImageNet-1k"),
    "mae_finetuned_vit_huge.pth": dict(
        url=f"{_MAE}/finetune/mae_finetuned_vit_huge.pth", md5_prefix="2541f2",
        description="ViT-H/14 MAE fine-tuned on ImageNet-1k"),
}
