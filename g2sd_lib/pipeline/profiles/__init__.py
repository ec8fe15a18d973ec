"""Configuration presets of the pipeline: ``smoke`` (tests), ``fmnist`` (the default, a
laptop CPU; its time: README), ``gpu`` (Fashion-MNIST on one GPU, every run trained to
convergence), ``paper`` (ImageNet, official MAE checkpoints, GPUs).

Each preset ``g2sd_lib/pipeline/profiles/<name>.yaml`` states what differs from ``base.yaml`` beside it (every
value, with its meaning; :func:`load_profile` merges the two), and is the configuration of its own copy of the pipeline:
``dvc.yaml`` runs every stage once per profile that ``params.yaml`` lists under ``profiles``, reading
that profile's file, writing under ``runs/<name>/`` and ``reports/<name>/`` (:func:`output_dirs`), so
the committed profiles' results live side by side and ``dvc status`` speaks for each.
The profiles are the files: a name ``params.yaml`` lists without its file is refused
(:func:`enabled_profiles`; ``python -m g2sd_lib.pipeline.profiles check``, run by ``make repro`` first).
``python -m g2sd_lib.pipeline.profiles enable NAME`` (``make repro P=NAME`` does it) adds a profile to the list;
Every stage's command, ``python -m g2sd_lib.pipeline.notebook_runner NAME NOTEBOOK OUTPUT``, executes a notebook
with the profile's sections it declares (:mod:`g2sd_lib.pipeline.notebook_runner`).
"""

import re
import sys
from pathlib import Path

from ...errors import InputError, install_notebook_handler
from ..config import DENSE_TASKS, PRETRAIN_RUNS, STUDENTS, deep_merge, has_path, load_yaml

HERE = Path(__file__).parent
BASE = HERE / "base.yaml"  # every value and its meaning; a profile says what differs
# the one list of profiles: the files here but the base (the Makefile's check globs the same files)
PROFILES = tuple(sorted(path.stem for path in HERE.glob("*.yaml") if path != BASE))
PIPELINE_PARAMS = "params.yaml"  # lists the profiles dvc.yaml runs (`profiles: [...]`)
# what every profile's file states, since dvc.yaml tracks it by name there (a missing one stops `dvc repro` with
# "Parameters ... are missing"): the values without a default in the base, and the sections, `{}` for the base's
STATED = ("profile", "nproc", "seeds", "data", "teacher", "pretrain.common", *(f"pretrain.{run}" for run in PRETRAIN_RUNS),
          "students.common", *(f"students.{run}" for run in STUDENTS),
          "evaluate", "dense.dataset", "dense.seeds", "dense.data", "dense.common",
          *(f"dense.{task}.{key}" for task in DENSE_TASKS for key in ("teacher_model", "head", "task", "teacher_train")),
          "dense.runs.g2sd", "dense.runs.gd_only")


def profile_path(name: str) -> Path:
    if name not in PROFILES:
        raise InputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return HERE / f"{name}.yaml"


def load_profile(name: str) -> dict:
    """The profile ``name``: its file merged into base.yaml (a mapping key by key, any other value replaced)."""
    return load_profile_file(profile_path(name))


def load_profile_file(path) -> dict:
    """A profile's file (e.g. in a copy of the repository) merged into the ``base.yaml`` beside it."""
    path, base = Path(path), Path(path).with_name(BASE.name)
    own = load_yaml(path.read_text(), path)
    if not isinstance(own, dict):
        raise InputError(f"{path}: a profile is a mapping of sections (profile:, nproc:, data:, ...), not {type(own).__name__}")
    missing = [key for key in STATED if not has_path(own, key.split("."))]
    if missing:
        raise InputError(f"{path} does not state {', '.join(missing)}: dvc.yaml tracks each by name in the profile's "
                         f"file; add it (`{{}}` for a section taken whole from {BASE.name})")
    return deep_merge(load_yaml(base.read_text(), base), own)


def output_dirs(profile: str) -> tuple[Path, Path]:
    """``(runs/<profile>, reports/<profile>)``: where a profile's stages write checkpoints and reports."""
    return Path("runs") / profile, Path("reports") / profile


def shrink(params: dict, images: int = 256, batch: int = 64, canvases=(16, 8, 8), **train) -> dict:
    """A copy of a profile on a few images for one epoch, with the same models and code and no
    compilation: every train section (the teacher's recipe, pretrain, students, dense, and the dense
    runs' own schedules) trains 1 epoch of ``images`` images at ``batch``, no warm-up (a label-scarce profile's
    supervised runs on one batch of labels, rounded up to a multiple of the 10 classes); the dense
    canvases are ``canvases`` (train, val, test). ``train``: more TrainConfig fields for every run.
    For dry runs on a CPU (``benchmarks/gpu_session.py --dry``, ``benchmarks/fingerprint.py``, tests)."""
    import copy

    from ..config import DENSE_TASKS
    p = copy.deepcopy(params)
    p["data"].update(train_subset=images, val_subset=images, test_subset=images, eval_batch_size=images)
    if p["data"].get("labels"):  # a label-scarce profile: one training step's labels
        p["data"]["labels"] = 10 * -(-batch // 10)
    for section in (p["teacher"]["pretrain"], p["teacher"]["finetune"], p["pretrain"]["common"],
                    p["students"]["common"], p["dense"]["common"]):
        section["train"].update(epochs=1, warmup_epochs=0, batch_size=batch, compile="none", **train)
    for task in DENSE_TASKS:  # the dense runs' own schedules (e.g. detection's 24 epochs) go too
        p["dense"][task].update(teacher_train={}, student_train={})
    p["dense"]["data"].update(dict(zip(("train", "val", "test"), canvases)))
    return p


def complete(profile: str = "smoke", **sections) -> dict:
    """The notebooks' parameters, validated: each section given as None is taken from ``profile``.

    ``dvc repro`` injects the sections the notebook declares from the profile's file
    (:mod:`g2sd_lib.pipeline.notebook_runner`); opened by hand or run by the tests, a notebook falls back to the smoke
    profile and runs in seconds. A typo or an out-of-range value stops the stage here, before any
    work (:func:`g2sd_lib.pipeline.schema.validate_params`). As the notebooks' entry point it installs
    their error display first (:func:`g2sd_lib.errors.install_notebook_handler`: a user mistake shows as
    its message alone).
    """
    from ..schema import validate_params
    install_notebook_handler()
    preset = load_profile(profile)
    params = {name: (preset[name] if value is None else value) for name, value in sections.items()}
    return validate_params(params, source=f"g2sd_lib/pipeline/profiles/{profile}.yaml", partial=True)


def enabled_profiles(path=PIPELINE_PARAMS) -> list[str]:
    """The profiles ``params.yaml`` lists; a name without its file is refused (DVC would report only
    "Parameters ... are missing" of a file that does not exist, or nothing at all)."""
    params = load_yaml(Path(path).read_text(), path)
    names = list((params if isinstance(params, dict) else {}).get("profiles") or [])
    unknown = [name for name in names if name not in PROFILES]
    if unknown:
        raise InputError(f"{path} lists the unknown profile{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                         f"(profiles: [{', '.join(map(str, names))}]); the known profiles are the files "
                         f"g2sd_lib/pipeline/profiles/<name>.yaml: {', '.join(PROFILES)}. Fix the list")
    return names


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


USAGE = (f"usage: python -m g2sd_lib.pipeline.profiles enable {{{'|'.join(PROFILES)}}}\n"
         f"       python -m g2sd_lib.pipeline.profiles check [{'|'.join(PROFILES)}]\n"
         "(a notebook with a profile's sections: python -m g2sd_lib.pipeline.notebook_runner)")


def _check_name(name: str) -> None:
    if name not in PROFILES:
        raise InputError(f"unknown profile {name!r} (make repro P=...): choose one of {', '.join(PROFILES)}")


def _check(names) -> int:
    """``check [NAME]`` (``make repro`` runs it before the data set-up): ``NAME`` and every profile
    ``params.yaml`` lists are files of g2sd_lib/pipeline/profiles/ that state what dvc.yaml tracks."""
    for name in names:
        _check_name(name)
    listed = enabled_profiles() if Path(PIPELINE_PARAMS).is_file() else []
    for name in dict.fromkeys([*names, *listed]):
        load_profile(name)  # refuses a file without a section DVC would miss
    print(f"profiles known: {', '.join(dict.fromkeys([*names, *listed]))} (g2sd_lib/pipeline/profiles/<name>.yaml)")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"] and len(argv) <= 2:
        return _check(argv[1:])
    if len(argv) != 2 or argv[0] != "enable":
        sys.exit(USAGE)
    _check_name(argv[1])
    added = enable(argv[1])
    state = "now lists" if added else "already lists"
    print(f"{PIPELINE_PARAMS} {state} the {argv[1]!r} profile: {', '.join(enabled_profiles())}; its stages are "
          f"<stage>@{argv[1]}... (`dvc stage list`), its results go to reports/{argv[1]}/")


if __name__ == "__main__":
    main()
