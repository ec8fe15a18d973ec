"""Configuration presets of the pipeline: ``smoke`` (tests, minutes), ``fmnist`` (the default, a
laptop CPU in under 40 minutes), ``gpu`` (Fashion-MNIST on one GPU, every run trained to
convergence), ``paper`` (ImageNet, official MAE checkpoints, GPUs).

``python -m g2sd_lib.profiles NAME`` (or ``make profile P=NAME``) copies the preset, comments
included, to ``params.yaml``, the configuration ``dvc repro`` reads.
"""

import shutil
import sys
from pathlib import Path

import yaml

PROFILES = ("smoke", "fmnist", "gpu", "paper")
HERE = Path(__file__).parent


def profile_path(name: str) -> Path:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return HERE / f"{name}.yaml"


def load_profile(name: str) -> dict:
    return yaml.safe_load(profile_path(name).read_text())


def complete(profile: str = "smoke", **sections) -> dict:
    """The notebooks' parameters, validated: each section given as None is taken from ``profile``.

    ``dvc repro`` injects every section from params.yaml (papermill ``-f``); opened by hand or run
    by the tests, a notebook falls back to the smoke profile and runs in seconds. A typo or an
    out-of-range value stops the stage here, before any work (:func:`g2sd_lib.schema.validate_params`).
    """
    from ..schema import validate_params
    preset = load_profile(profile)
    params = {name: (preset[name] if value is None else value) for name, value in sections.items()}
    given = any(value is not None for value in sections.values())
    return validate_params(params, source="params.yaml" if given else str(profile_path(profile)), partial=True)


def use_profile(name: str, dest="params.yaml") -> Path:
    """Make ``name`` the active configuration."""
    shutil.copyfile(profile_path(name), dest)
    return Path(dest)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or argv[0] not in PROFILES:
        sys.exit(f"usage: python -m g2sd_lib.profiles {{{'|'.join(PROFILES)}}} [DEST]")
    dest = use_profile(*argv)
    print(f"{dest} now holds the {argv[0]!r} profile; run `dvc repro` (or `make repro`)")


if __name__ == "__main__":
    main()
