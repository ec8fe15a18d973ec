"""Configuration presets of the pipeline: ``smoke`` (tests, minutes), ``fmnist`` (the default, a
laptop CPU in under 40 minutes), ``gpu`` (Fashion-MNIST on one GPU, every run trained to
convergence), ``paper`` (ImageNet, official MAE checkpoints, GPUs).

Each preset ``g2sd_lib/profiles/<name>.yaml`` is the configuration of its own copy of the pipeline:
``dvc.yaml`` runs every stage once per profile that ``params.yaml`` lists under ``profiles``, reading
that profile's file, writing under ``runs/<name>/`` and ``reports/<name>/`` (:func:`output_dirs`), so
the committed profiles' results live side by side and ``dvc status`` speaks for each.
``python -m g2sd_lib.profiles enable NAME`` (``make repro P=NAME`` does it) adds a profile to the list.
"""

import re
import sys
from pathlib import Path

import yaml

from ..errors import InputError

PROFILES = ("smoke", "fmnist", "gpu", "paper")
HERE = Path(__file__).parent
PIPELINE_PARAMS = "params.yaml"  # lists the profiles dvc.yaml runs (`profiles: [...]`)


def profile_path(name: str) -> Path:
    if name not in PROFILES:
        raise InputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return HERE / f"{name}.yaml"


def load_profile(name: str) -> dict:
    return yaml.safe_load(profile_path(name).read_text())


def output_dirs(profile: str) -> tuple[Path, Path]:
    """``(runs/<profile>, reports/<profile>)``: where a profile's stages write checkpoints and reports."""
    return Path("runs") / profile, Path("reports") / profile


def shrink(params: dict, images: int = 256, batch: int = 64, canvases=(16, 8, 8), **train) -> dict:
    """A copy of a profile on a few images for one epoch, with the same models and code and no
    compilation: every train section (the teacher's recipe, pretrain, students, dense, and the dense
    runs' own schedules) trains 1 epoch of ``images`` images at ``batch``, no warm-up; the dense
    canvases are ``canvases`` (train, val, test). ``train``: more TrainConfig fields for every run.
    For dry runs on a CPU (``benchmarks/gpu_session.py --dry``, ``benchmarks/fingerprint.py``, tests)."""
    import copy

    from ..config import DENSE_TASKS
    p = copy.deepcopy(params)
    p["data"].update(train_subset=images, val_subset=images, test_subset=images, eval_batch_size=images)
    for section in (p["teacher"]["pretrain"], p["teacher"]["finetune"], p["pretrain"]["common"],
                    p["students"]["common"], p["dense"]["common"]):
        section["train"].update(epochs=1, warmup_epochs=0, batch_size=batch, compile="none", **train)
    for task in DENSE_TASKS:  # the dense runs' own schedules (e.g. detection's 24 epochs) go too
        p["dense"][task].update(teacher_train={}, student_train={})
    p["dense"]["data"].update(dict(zip(("train", "val", "test"), canvases)))
    return p


def complete(profile: str = "smoke", **sections) -> dict:
    """The notebooks' parameters, validated: each section given as None is taken from ``profile``.

    ``dvc repro`` injects every section from the profile's file (papermill ``-f``); opened by hand or
    run by the tests, a notebook falls back to the smoke profile and runs in seconds. A typo or an
    out-of-range value stops the stage here, before any work (:func:`g2sd_lib.schema.validate_params`).
    """
    from ..schema import validate_params
    preset = load_profile(profile)
    params = {name: (preset[name] if value is None else value) for name, value in sections.items()}
    return validate_params(params, source=f"g2sd_lib/profiles/{profile}.yaml", partial=True)


def enabled_profiles(path=PIPELINE_PARAMS) -> list[str]:
    return list(yaml.safe_load(Path(path).read_text()).get("profiles") or [])


def set_profiles(names, path=PIPELINE_PARAMS) -> Path:
    """Write the ``profiles: [...]`` line of ``params.yaml`` (its comments kept)."""
    for name in names:
        profile_path(name)  # refuses an unknown name
    path = Path(path)
    line = f"profiles: [{', '.join(names)}]"
    text = path.read_text() if path.exists() else ""
    new, n = re.subn(r"(?m)^profiles:.*$", line, text)
    path.write_text(new if n else text + line + "\n")
    return path


def enable(name: str, path=PIPELINE_PARAMS) -> bool:
    """Add ``name`` to the pipeline's profiles; False when it was there already."""
    names = enabled_profiles(path) if Path(path).exists() else []
    if name in names:
        profile_path(name)
        return False
    set_profiles(names + [name], path)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "enable":
        sys.exit(f"usage: python -m g2sd_lib.profiles enable {{{'|'.join(PROFILES)}}}")
    if argv[1] not in PROFILES:
        raise InputError(f"unknown profile {argv[1]!r} (make repro P=...): choose one of {', '.join(PROFILES)}")
    added = enable(argv[1])
    state = "now lists" if added else "already lists"
    print(f"{PIPELINE_PARAMS} {state} the {argv[1]!r} profile: {', '.join(enabled_profiles())}; its stages are "
          f"<stage>@{argv[1]}... (`dvc stage list`), its results go to reports/{argv[1]}/")


if __name__ == "__main__":
    main()
