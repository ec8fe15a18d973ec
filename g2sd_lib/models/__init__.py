"""Model factories. A model name carries its hyper-parameters, as in the official code:

* ``mae_vit_{size}_patch{p}_dec{D}d{N}b``: MAE ViT (teacher) or G2SD student, encoder ``size``,
  patch ``p``, decoder of width ``D`` and ``N`` blocks (``D // 32`` heads, as the official 512/16,
  256/8 and 128/4 decoders); e.g. ``mae_vit_base_patch16_dec512d8b`` (official GD teacher),
  ``mae_vit_small_patch16_dec256d4b`` and ``mae_vit_tiny_patch16_dec128d4b`` (official students).
* ``vit_{size}_patch{p}``: a classifier with the same encoder.

Sizes ``tiny/small/base/large/huge`` are the paper's (224 x 224 RGB); ``fm*`` are for Fashion-MNIST
(28 x 28 grayscale) in ViT-B -> ViT-S proportions (student half the teacher's width, same depth);
``smoke*`` are tiny models for tests. Any constructor argument can be overridden by keyword.
"""

import re

from .classifier import DistilledViT, teacher_classifier
from .mae import MaskedAutoencoderViT, random_masking
from .student import G2SDStudent

# size -> (embed_dim, depth, num_heads, img_size, in_chans)
ENCODER_SIZES = {
    "tiny": (192, 12, 3, 224, 3),
    "small": (384, 12, 6, 224, 3),
    "base": (768, 12, 12, 224, 3),
    "large": (1024, 24, 16, 224, 3),
    "huge": (1280, 32, 16, 224, 3),
    "fmbase": (128, 6, 4, 28, 1),
    "fmsmall": (64, 6, 2, 28, 1),
    "fmtiny": (32, 6, 1, 28, 1),
    "smokebase": (32, 2, 2, 28, 1),
    "smokesmall": (16, 2, 2, 28, 1),
}

_MAE_NAME = re.compile(r"^mae_vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)_dec(?P<dec>\d+)d(?P<depth>\d+)b$")
_VIT_NAME = re.compile(r"^vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)$")


def _encoder_kwargs(size: str, patch: str, name: str) -> dict:
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown encoder size {size!r} in model name {name!r}; "
                         f"known sizes: {', '.join(ENCODER_SIZES)}")
    dim, depth, heads, img, chans = ENCODER_SIZES[size]
    return dict(embed_dim=dim, depth=depth, num_heads=heads, img_size=img, in_chans=chans,
                patch_size=int(patch))


def mae_kwargs(name: str, **overrides) -> dict:
    """Constructor arguments of ``MaskedAutoencoderViT`` for a model name, with overrides applied."""
    m = _MAE_NAME.match(name)
    if not m:
        raise ValueError(f"not an MAE model name: {name!r} (expected mae_vit_<size>_patch<p>_dec<D>d<N>b)")
    kw = _encoder_kwargs(m["size"], m["patch"], name)
    dec = int(m["dec"])
    kw.update(decoder_embed_dim=dec, decoder_depth=int(m["depth"]), decoder_num_heads=max(1, dec // 32))
    kw.update(overrides)
    return kw


def vit_kwargs(name: str, **overrides) -> dict:
    """Constructor arguments of a timm ``VisionTransformer`` for ``vit_<size>_patch<p>``."""
    m = _VIT_NAME.match(name)
    if not m:
        raise ValueError(f"not a classifier model name: {name!r} (expected vit_<size>_patch<p>)")
    kw = _encoder_kwargs(m["size"], m["patch"], name)
    kw.update(overrides)
    return kw


def _with_arch(model, builder: str, name: str, **kwargs):
    """Record how ``model`` was built: ``build_model(model.arch)`` rebuilds it (checkpoint sidecars)."""
    model.arch = {"builder": builder, "name": name, **kwargs}
    return model


def build_model(arch: dict):
    """Inverse of ``model.arch``: rebuild an (untrained) model from its recorded description."""
    arch = dict(arch)
    builder, name = arch.pop("builder"), arch.pop("name")
    factories = {"mae": create_mae, "student": create_student, "classifier": create_classifier}
    if builder not in factories:
        raise ValueError(f"unknown model builder {builder!r}; known: {', '.join(factories)}")
    return factories[builder](name, **arch)


def create_mae(name: str, **overrides) -> MaskedAutoencoderViT:
    """MAE ViT with decoder, e.g. ``create_mae('mae_vit_base_patch16_dec512d8b')``."""
    return _with_arch(MaskedAutoencoderViT(**mae_kwargs(name, **overrides)), "mae", name, **overrides)


def create_student(name: str, teacher_decoder_dim: int, teacher_embed_dim: int | None = None,
                   encoder_branch: bool = False, **overrides) -> G2SDStudent:
    """G2SD student; its feature head maps to the teacher decoder width ``teacher_decoder_dim``."""
    model = G2SDStudent(teacher_decoder_dim=teacher_decoder_dim, teacher_embed_dim=teacher_embed_dim,
                        encoder_branch=encoder_branch, **mae_kwargs(name, **overrides))
    return _with_arch(model, "student", name, teacher_decoder_dim=teacher_decoder_dim,
                      teacher_embed_dim=teacher_embed_dim, encoder_branch=encoder_branch, **overrides)


def create_classifier(name: str, kind: str = "avg", num_classes: int = 1000, **overrides):
    """Classifier on the encoder of ``name`` (``vit_*`` or ``mae_vit_*``, the decoder is ignored).

    ``kind``: ``avg`` (fine-tuned MAE / teacher layout: global average pooling, ``fc_norm``) or
    ``distilled`` (G2SD student with a distillation token and ``head_dist``).
    """
    if name.startswith("mae_"):
        kw = {k: v for k, v in mae_kwargs(name).items() if not k.startswith("decoder_")}
        kw.pop("norm_pix_loss", None)
        kw.update(overrides)
    else:
        kw = vit_kwargs(name, **overrides)
    kw["num_classes"] = num_classes
    if kind == "avg":
        model = teacher_classifier(**kw)
    elif kind == "distilled":
        model = DistilledViT(**kw)
    else:
        raise ValueError(f"classifier kind must be 'avg' or 'distilled', got {kind!r}")
    return _with_arch(model, "classifier", name, kind=kind, num_classes=num_classes, **overrides)


__all__ = ["ENCODER_SIZES", "DistilledViT", "build_model", "G2SDStudent", "MaskedAutoencoderViT", "create_classifier",
           "create_mae", "create_student", "mae_kwargs", "random_masking",
           "teacher_classifier", "vit_kwargs"]
