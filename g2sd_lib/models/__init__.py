"""Model factories and the one registry that rebuilds any saved model from its ``arch`` dict.

A model name carries its hyper-parameters, as in the official code:

* ``mae_vit_{size}_patch{p}_dec{D}d{N}b``: MAE ViT (teacher) or G2SD student, encoder ``size``,
  patch ``p``, decoder of width ``D`` and ``N`` blocks (``D // 32`` heads, as the official 512/16,
  256/8 and 128/4 decoders); e.g. ``mae_vit_base_patch16_dec512d8b`` (official GD teacher),
  ``mae_vit_small_patch16_dec256d4b`` and ``mae_vit_tiny_patch16_dec128d4b`` (official students).
* ``vit_{size}_patch{p}``: a classifier with the same encoder.

``size`` is a name of ``ENCODER_SIZES`` or, for any other encoder, ``w{width}d{depth}h{heads}``
(e.g. ``vit_w48d2h1_patch8``; 224 x 224 RGB unless ``img_size`` / ``in_chans`` are overridden), the
form :mod:`g2sd_lib.checkpoints` gives a checkpoint of a size the table lacks. Named sizes
``tiny/small/base/large/huge`` are the paper's (224 x 224 RGB); ``fm*`` are for Fashion-MNIST
(28 x 28 grayscale) in ViT-B -> ViT-S proportions (student half the teacher's width, same depth);
``smoke*`` are tiny models for tests. Any constructor argument can be overridden by keyword.
"""

import re

from ..errors import InputError, close_match
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
    "fmlarge": (144, 8, 6, 28, 1),  # the `gpu` profile's teacher (ViT-B role), 2.0 M parameters (fp16 bundle < 10 MB)
    "fmmedium": (72, 8, 3, 28, 1),  # its student (ViT-S role): half the width, same depth, 1/4 the parameters
    "smokebase": (32, 2, 2, 28, 1),
    "smokesmall": (16, 2, 2, 28, 1),
}

_SIZE = r"(?P<size>[a-z][a-z0-9]*)"
_MAE_NAME = re.compile(rf"^mae_vit_{_SIZE}_patch(?P<patch>\d+)_dec(?P<dec>\d+)d(?P<depth>\d+)b$")
_VIT_NAME = re.compile(rf"^vit_{_SIZE}_patch(?P<patch>\d+)$")
_EXPLICIT_SIZE = re.compile(r"^w(\d+)d(\d+)h(\d+)$")


def size_name(embed_dim: int, depth: int, num_heads: int) -> str:
    """The ``w{width}d{depth}h{heads}`` size of an encoder that ``ENCODER_SIZES`` does not name."""
    return f"w{embed_dim}d{depth}h{num_heads}"


def close_model_name(name: str) -> str | None:
    """The well-formed model name closest to a misspelt ``name`` (for a did-you-mean): its numbers in
    the ``vit_`` and ``mae_vit_`` forms with every named size; None when none is close."""
    numbers = re.findall(r"\d+", str(name))
    candidates = [f"vit_{size}_patch{numbers[0]}" for size in ENCODER_SIZES if numbers]
    candidates += [f"mae_vit_{size}_patch{numbers[0]}_dec{numbers[1]}d{numbers[2]}b"
                   for size in ENCODER_SIZES if len(numbers) >= 3]
    return close_match(name, candidates)


def _did_you_mean(name: str) -> str:
    return f"; did you mean {close!r}?" if (close := close_model_name(name)) and close != name else ""


def encoder_size(size: str) -> tuple:
    """``(embed_dim, depth, num_heads, img_size, in_chans)`` of a named or ``w{W}d{D}h{H}`` size."""
    if size in ENCODER_SIZES:
        return ENCODER_SIZES[size]
    explicit = _EXPLICIT_SIZE.match(size)
    if explicit is None:
        near = close_match(size, ENCODER_SIZES)
        raise InputError(f"unknown encoder size {size!r}{f' (did you mean {near!r}?)' if near else ''}; known "
                         f"sizes: {', '.join(ENCODER_SIZES)}, or w<width>d<depth>h<heads>")
    width, depth, heads = map(int, explicit.groups())
    return width, depth, heads, 224, 3


def _encoder_kwargs(size: str, patch: str) -> dict:
    dim, depth, heads, img, chans = encoder_size(size)
    return dict(embed_dim=dim, depth=depth, num_heads=heads, img_size=img, in_chans=chans, patch_size=int(patch))


def shape_problem(kw: dict) -> str | None:
    """Why constructor arguments cannot build a model (a size below 1, a width its heads do not divide,
    an MAE width the 2-D sin-cos position embedding cannot split in four), or None if they can."""
    for key in ("embed_dim", "depth", "num_heads", "patch_size", "decoder_embed_dim", "decoder_depth"):
        if key in kw and kw[key] < 1:
            return f"its {key.replace('_', ' ').replace('embed dim', 'width')} is {kw[key]}; every size must be at least 1"
    if kw["embed_dim"] % kw["num_heads"]:
        return f"its width {kw['embed_dim']} is not divisible by its {kw['num_heads']} heads"
    if "decoder_embed_dim" in kw and kw["decoder_embed_dim"] % kw["decoder_num_heads"]:
        return (f"its decoder width {kw['decoder_embed_dim']} is not divisible by its {kw['decoder_num_heads']} "
                "heads (a decoder has width // 32 heads)")
    if "decoder_embed_dim" in kw and (kw["embed_dim"] % 4 or kw["decoder_embed_dim"] % 4):
        return "an MAE's encoder and decoder widths must be multiples of 4 (2-D sin-cos position embedding)"
    return None


class ModelShapeError(InputError):
    """A model name that parses but whose sizes cannot build a model; ``problem`` says why."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"model {name!r} cannot be built: {problem}")
        self.problem = problem


def _checked(name: str, kw: dict) -> dict:
    """``kw``, refused with the reason when no model can have those sizes (the factories call it)."""
    if problem := shape_problem(kw):
        raise ModelShapeError(name, problem)
    return kw


def mae_kwargs(name: str, **overrides) -> dict:
    """Constructor arguments of ``MaskedAutoencoderViT`` for a model name, with overrides applied."""
    m = _MAE_NAME.match(name)
    if not m:
        raise InputError(f"not an MAE model name: {name!r} (expected mae_vit_<size>_patch<p>_dec<D>d<N>b)"
                         + _did_you_mean(name))
    kw = _encoder_kwargs(m["size"], m["patch"])
    dec = int(m["dec"])
    kw.update(decoder_embed_dim=dec, decoder_depth=int(m["depth"]), decoder_num_heads=max(1, dec // 32))
    kw.update(overrides)
    return kw


def vit_kwargs(name: str, **overrides) -> dict:
    """Constructor arguments of a timm ``VisionTransformer`` for ``vit_<size>_patch<p>``."""
    m = _VIT_NAME.match(name)
    if not m:
        raise InputError(f"not a classifier model name: {name!r} (expected vit_<size>_patch<p>)" + _did_you_mean(name))
    kw = _encoder_kwargs(m["size"], m["patch"])
    kw.update(overrides)
    return kw


def classifier_kwargs(name: str, **overrides) -> dict:
    """Encoder arguments of a classifier on ``vit_*`` or ``mae_vit_*`` (whose decoder is ignored)."""
    if not name.startswith("mae_"):
        return vit_kwargs(name, **overrides)
    kw = {k: v for k, v in mae_kwargs(name).items() if not k.startswith("decoder_")}
    kw.update(overrides)
    return kw


def _with_arch(model, builder: str, name: str, **kwargs):
    """Record how ``model`` was built: ``build_model(model.arch)`` rebuilds it (checkpoint sidecars)."""
    model.arch = {"builder": builder, "name": name, **kwargs}
    return model


def create_mae(name: str, **overrides) -> MaskedAutoencoderViT:
    """MAE ViT with decoder, e.g. ``create_mae('mae_vit_base_patch16_dec512d8b')``."""
    return _with_arch(MaskedAutoencoderViT(**_checked(name, mae_kwargs(name, **overrides))), "mae", name, **overrides)


def create_student(name: str, teacher_decoder_dim: int, teacher_embed_dim: int | None = None,
                   encoder_branch: bool = False, **overrides) -> G2SDStudent:
    """G2SD student; its feature head maps to the teacher decoder width ``teacher_decoder_dim``."""
    model = G2SDStudent(teacher_decoder_dim=teacher_decoder_dim, teacher_embed_dim=teacher_embed_dim,
                        encoder_branch=encoder_branch, **_checked(name, mae_kwargs(name, **overrides)))
    return _with_arch(model, "student", name, teacher_decoder_dim=teacher_decoder_dim,
                      teacher_embed_dim=teacher_embed_dim, encoder_branch=encoder_branch, **overrides)


CLASSIFIER_KINDS = ("avg", "distilled", "token")


def create_classifier(name: str, kind: str = "avg", num_classes: int = 1000, **overrides):
    """Classifier on the encoder of ``name`` (``vit_*`` or ``mae_vit_*``, the decoder is ignored).

    ``kind``: ``avg`` (fine-tuned MAE / teacher layout: global average pooling, ``fc_norm``),
    ``distilled`` (G2SD student with a distillation token and ``head_dist``; ``average_heads=False``
    makes it predict with the cls head only) or ``token`` (timm's cls-token ViT with a final
    ``norm``; with ``num_classes=0`` exactly the MAE encoder).
    """
    if kind not in CLASSIFIER_KINDS:
        raise InputError(f"classifier kind must be one of {', '.join(CLASSIFIER_KINDS)}, got {kind!r}")
    kw = _checked(name, classifier_kwargs(name, **overrides))
    kw["num_classes"] = num_classes
    if kind == "avg":
        model = teacher_classifier(**kw)
    elif kind == "distilled":
        model = DistilledViT(**kw)
    else:
        model = teacher_classifier(global_pool="token", **kw)
    return _with_arch(model, "classifier", name, kind=kind, num_classes=num_classes, **overrides)


# builder -> factory, called with the rest of the arch dict as keywords. The dense models register
# themselves when g2sd_lib.dense is imported (they need torchvision, which classification never imports,
# and they build on these models: a registry filled from above keeps the imports one way).
BUILDERS = {"mae": create_mae, "student": create_student, "classifier": create_classifier}
_DENSE_BUILDERS = ("segmenter", "detector")


def register_builder(builder: str, factory) -> None:
    """Let :func:`build_model` rebuild models whose ``arch["builder"]`` is ``builder``."""
    BUILDERS[builder] = factory


def build_model(arch: dict):
    """Inverse of ``model.arch`` for every model of the library, classification and dense: rebuild an
    untrained model from its recorded description (checkpoint sidecars)."""
    arch = dict(arch)
    builder = arch.pop("builder", None)
    if builder not in BUILDERS:
        hint = " (a dense model: `import g2sd_lib.dense` registers it)" if builder in _DENSE_BUILDERS else ""
        raise InputError(f"unknown model builder {builder!r}{hint}; known: {', '.join(BUILDERS)}")
    return BUILDERS[builder](**arch)


def model_kwargs(arch: dict) -> dict:
    """All constructor arguments an ``mae`` / ``student`` / ``classifier`` arch implies, sizes spelt
    out (``embed_dim``, ``num_heads``, ...): what a checkpoint's tensors are checked against."""
    rest = {k: v for k, v in arch.items() if k not in ("builder", "name")}
    builder, name = arch.get("builder"), arch.get("name", "")
    if builder == "mae":
        return mae_kwargs(name, **rest)
    if builder == "student":
        own = ("teacher_decoder_dim", "teacher_embed_dim", "encoder_branch")
        return {**mae_kwargs(name, **{k: v for k, v in rest.items() if k not in own}),
                **{k: rest.get(k) for k in own}}
    if builder == "classifier":
        own = ("kind", "num_classes", "average_heads")
        return {**classifier_kwargs(name, **{k: v for k, v in rest.items() if k not in own}),
                "kind": rest.get("kind", "avg"), "num_classes": rest.get("num_classes", 1000)}
    raise ValueError(f"not an encoder model builder: {builder!r} (expected mae, student or classifier)")


__all__ = ["BUILDERS", "CLASSIFIER_KINDS", "ENCODER_SIZES", "DistilledViT", "G2SDStudent", "MaskedAutoencoderViT",
           "ModelShapeError",
           "build_model", "classifier_kwargs", "register_builder", "create_classifier", "create_mae", "create_student", "encoder_size",
           "mae_kwargs", "model_kwargs", "random_masking", "shape_problem", "size_name", "teacher_classifier", "vit_kwargs"]
