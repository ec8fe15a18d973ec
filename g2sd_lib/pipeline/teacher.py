"""The teacher stage: obtain both teachers, prove they are right, leave them in one layout.

Generic distillation needs the pretrained MAE *with its decoder*; specific distillation needs the
fine-tuned classifier. Whatever the mode, the stage writes ``<root>/teacher/mae.safetensors`` and
``<root>/teacher/classifier.safetensors`` (+ JSON sidecars; ``root`` is the profile's run directory,
``runs/<profile>`` in the pipeline) after loading each strictly in its role:

* ``download`` (paper): the official MAE checkpoints, md5 prefixes checked where published and
  sha256 pinned on first use (fetched, or saved by hand when offline), converted from the
  official pickle layout;
* ``bundled`` (fmnist): the small teacher committed under ``teachers/``, sha256-checked;
* ``train``: the project's recipe, MAE pretraining then fine-tuning, through ``run_stage``;
* ``finetune`` (label-scarce profiles): the bundled MAE as the GD teacher, and the classifier fine-tuned
  from it here by ``teacher.finetune`` on the profile's labels only (``data.labels``).
"""

import json
import shutil
from pathlib import Path

from .. import checkpoints
from .config import teacher_paths, teacher_stage_config
from .download import fetch_official
from ..errors import InputError, MissingInputError, run_main
from ..data import label_draw
from .stages import launch

MODES = ("bundled", "finetune", "train", "download")


def copy_saved(src: Path, dest: Path) -> None:
    """Copy a saved model, ``src`` (``.safetensors``) and its ``.json`` sidecar, to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    shutil.copyfile(src.with_suffix(".json"), dest.with_suffix(".json"))


def _convert(src: Path, role: str, dest: Path) -> dict:
    """Load an official checkpoint strictly in ``role`` and save it in our layout."""
    model, info = checkpoints.load_model(src, role)
    sidecar = checkpoints.save_model(model, dest, extra={"source": str(src), "official_kind": info.kind})
    return sidecar


def obtain_teacher(params: dict, root="runs", nproc: int = 1) -> dict:
    """Run the teacher stage in the mode ``params['teacher']['mode']``; returns a summary dict.

    The summary holds, per teacher (``gd``, ``sd``), the path, kind, architecture name, parameter
    count and sha256; in ``train`` mode also the recipe's training histories.
    """
    cfg = params["teacher"]
    mode = cfg.get("mode")
    if mode not in MODES:
        raise InputError(f"teacher.mode must be one of {', '.join(MODES)}, got {mode!r}")
    out = teacher_paths(root)
    summary = {"mode": mode}
    if draw := label_draw(params.get("data", {})):
        summary["label_draw"] = draw  # the labels the SD teacher (and every supervised stage) learns from
    if mode == "download":
        d = cfg["download"]
        cache = Path(d.get("cache_dir") or "checkpoints")
        record = cache / "hashes.json"
        for key, role in (("gd", "gd-teacher"), ("sd", "sd-teacher")):
            src = fetch_official(d[key], cache, base_url=d.get("base_url"), hash_record=record)
            _convert(src, role, out[key])
    elif mode in ("bundled", "finetune"):
        b = cfg["bundled"]
        for key, name in (("gd", "mae"), ("sd", "classifier"))[: 1 if mode == "finetune" else 2]:
            src = Path(b[name])
            if not src.exists():
                raise MissingInputError(f"bundled teacher {src} is missing: restore it (`git checkout -- {src}`), "
                                        "fix teacher.bundled in the profile, or set teacher.mode: train to train "
                                        "one (see the model cards in teachers/)")
            checkpoints.load_saved_model(src, expected_sha256=b.get(f"{name}_sha256"))  # refuses changed bytes
            copy_saved(src, out[key])
        if mode == "finetune":
            stage_cfg = teacher_stage_config(params, "finetune", root)
            summary["histories"] = {"finetune": launch(stage_cfg, nproc)}
            copy_saved(Path(stage_cfg["out_dir"]) / "model.safetensors", out["sd"])
    else:
        histories = {}
        for step in ("pretrain", "finetune"):
            stage_cfg = teacher_stage_config(params, step, root)
            histories[step] = launch(stage_cfg, nproc)
            produced = Path(stage_cfg["out_dir"]) / "model.safetensors"
            copy_saved(produced, out["gd" if step == "pretrain" else "sd"])
        summary["histories"] = histories
    for key, role in (("gd", "gd-teacher"), ("sd", "sd-teacher")):
        _, info = checkpoints.load_model(out[key], role)
        sidecar = checkpoints.read_state_dict(out[key])[1]
        summary[key] = {"path": str(out[key]), "kind": info.kind, "model": info.arch["name"],
                        "params": info.num_params, "sha256": sidecar.get("sha256")}
    return summary


def bundle_teacher(params: dict, root="runs", dest_dir="teachers", prefix="fmnist", notes=(), finetune_run=None,
                   pretrain_run=None) -> dict:
    """Bundle the teachers the ``train`` mode produced: float16 safetensors (the 10 MB budget of the
    repository) under ``dest_dir`` plus a model card ``<prefix>.md`` generated from the run's own
    histories and a fresh test-set evaluation of the stored (float16-rounded) classifier. ``notes``:
    lines added to the card's results (e.g. how the recipe was chosen). Each file's sidecar keeps the
    ``machine`` that trained it (the engine's record), which the bundled mode copies on.

    In ``finetune`` mode only the classifier is bundled (the GD teacher is the already bundled MAE it was
    fine-tuned from). ``finetune_run``: the run directory of the fine-tuning (default
    ``<root>/teacher/finetune``; e.g. the calibration's run of the same recipe); with ``pretrain_run``, the run
    directory of the MAE pretraining it started from (default ``<root>/teacher/pretrain``), both are bundled,
    as from the ``train`` mode. On a label-scarce profile the card names the label draw the classifier learnt from."""
    import torch
    import yaml

    from ..data import FMNIST_MEAN, FMNIST_STD, Normalize, TensorLoader
    from ..fmnist import load_fashion_mnist
    from ..device import machine
    from ..evaluate import classification_report
    from .results import trained_on

    work, dest = Path(root), Path(dest_dir)
    # a profile in bundled mode whose classifier is rebundled from a named fine-tuning run: finetune mode's bundle
    finetune_only = params["teacher"]["mode"] == "finetune" or (finetune_run is not None and pretrain_run is None)
    run = Path(finetune_run) if finetune_run else work / "teacher" / "finetune"
    pre_run = Path(pretrain_run) if pretrain_run else work / "teacher" / "pretrain"
    if finetune_only:
        src = {"sd": run / "model.safetensors"}
    elif pretrain_run:
        src = {"gd": pre_run / "model.safetensors", "sd": run / "model.safetensors"}
    else:
        src = teacher_paths(work)
    if missing := [str(p) for p in src.values() if not p.exists()]:
        raise MissingInputError(f"{', '.join(missing)} missing: bundle packs the teachers that the teacher stage "
                                f"trains in teacher.mode: train or finetune; run `dvc repro teacher@{params['profile']}` "
                                "with that mode first")
    files, trained = {}, {}
    for key, name in (("gd", "mae"), ("sd", "classifier"))[1 if finetune_only else 0:]:
        model = checkpoints.load_saved_model(src[key])
        path = dest / f"{prefix}_{name}.safetensors"
        trained[key] = trained_on(src[key])
        meta = checkpoints.save_model(model, path, dtype=torch.float16,
                                      extra={"recipe": f"teacher.{'pretrain' if key == 'gd' else 'finetune'}",
                                             **({"machine": trained[key]} if trained[key] != "unknown" else {})})
        files[name] = {"path": str(path), "sha256": meta["sha256"], "model": meta["arch"]["name"],
                       "params": meta["num_params"], "bytes": path.stat().st_size}
    classifier = checkpoints.load_saved_model(dest / f"{prefix}_classifier.safetensors")
    images, labels = load_fashion_mnist("test", params["data"].get("root"))
    loader = TensorLoader(images, labels, 1000, shuffle=False, drop_last=False,
                          transform=Normalize(FMNIST_MEAN, FMNIST_STD))
    test = classification_report(classifier, loader)
    hist = {step: json.loads(((run if step == "finetune" else pre_run) / "history.json").read_text())
            for step in (("finetune",) if finetune_only else ("pretrain", "finetune"))}
    minutes = {step: sum(r["seconds"] for r in h) / 60 for step, h in hist.items()}
    trained_text = (trained["sd"] if finetune_only or trained["gd"] == trained["sd"]
                    else f"{trained['gd']} (pretraining), {trained['sd']} (fine-tuning)")
    recipe = {"data": params["data"], **({} if finetune_only else {"pretrain": params["teacher"]["pretrain"]}),
              "finetune": params["teacher"]["finetune"]}
    draw = label_draw(params["data"])
    if finetune_only:
        b = params["teacher"]["bundled"]
        pretrain_line = (f"- GD teacher and starting point: the bundled MAE `{b['mae']}` (sha256 `{b.get('mae_sha256')}`), "
                         "pretrained without labels; not bundled again")
    else:
        pretrain_line = (f"- MAE pretraining: {len(hist['pretrain'])} epochs, final training loss (norm-pix MSE on masked "
                         f"patches) {hist['pretrain'][-1]['train_loss']:.4f}, {minutes['pretrain']:.1f} min")
    if draw:
        labels_line = (f"- labels: {draw['labels']} training images ({draw['per_class']} per class, `data.labels_seed` "
                       f"{draw['labels_seed']}; draw sha256 `{draw['sha256']}`), the same every supervised stage of "
                       f"`{params['profile']}` sees")
    else:
        labels_line = "- labels: every training image" if finetune_only else None
    card = [
        f"# Bundled Fashion-MNIST teacher (`{prefix}`)", "",
        f"Generated by `python -m g2sd_lib.pipeline.teacher bundle` from the pipeline's "
        f"`{'finetune' if finetune_only else 'train'}` mode; "
        "do not edit by hand.",
        "A profile loads these files in `bundled` mode and checks their sha256 (pinned in its `teacher.bundled`).", "",
        "| file | role | model | parameters | size | sha256 |", "|---|---|---|---|---|---|",
        *[f"| `{Path(f['path']).name}` | {'GD teacher (MAE with decoder)' if n == 'mae' else 'SD teacher (classifier)'} "
          f"| `{f['model']}` | {f['params']:,} | {f['bytes'] / 1e6:.2f} MB | `{f['sha256']}` |" for n, f in files.items()],
        "", "Weights are stored in float16 to fit the repository's 10 MB budget; they load into float32 models.", "",
        "## Results", "",
        pretrain_line, *([labels_line] if labels_line else []),
        f"- fine-tuning: {len(hist['finetune'])} epochs, validation top-1 {100 * hist['finetune'][-1]['val_top1']:.2f} % "
        f"(5 000 images carved from the training split), {minutes['finetune']:.1f} min",
        f"- **test top-1 {100 * test['top1']:.2f} %**, top-5 {100 * test['top5']:.2f} % on the 10 000 test images "
        "(the stored float16 weights, as the pipeline uses them)",
        f"- trained on: {trained_text}; bundled and evaluated on: {machine()}", *[f"- {line}" for line in notes],
        "", "## Recipe", "",
        f"To regenerate: with `teacher.mode: {'finetune' if finetune_only else 'train'}` in the profile `{params['profile']}` "
        f"(`g2sd_lib/pipeline/profiles/{params['profile']}.yaml`), `dvc repro teacher@{params['profile']}`, then "
        f"`python -m g2sd_lib.pipeline.teacher bundle {params['profile']} --prefix {prefix}` (seeded, so the same machine "
        "repeats the same weights).", "",
        "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    (dest / f"{prefix}.md").write_text("\n".join(card))
    return {"files": files, "test": test, "minutes": minutes, "card": str(dest / f"{prefix}.md")}


def main(argv=None):
    import argparse

    from .profiles import PROFILES, load_profile, output_dirs

    parser = argparse.ArgumentParser(prog="python -m g2sd_lib.pipeline.teacher",
                                     description="bundle the teachers a profile's teacher stage trained (train mode)")
    parser.add_argument("command", choices=["bundle"])
    parser.add_argument("profile", choices=PROFILES, help="the profile whose runs/<profile>/teacher to bundle")
    parser.add_argument("--prefix", default="fmnist", help="file name prefix under teachers/ (default: fmnist)")
    parser.add_argument("--finetune-run", help="the fine-tuning's run directory (default "
                        "runs/<profile>/teacher/finetune), e.g. the calibration's run of the same recipe; alone: "
                        "the classifier only (finetune mode)")
    parser.add_argument("--pretrain-run", help="with --finetune-run: the MAE pretraining's run directory it started from "
                        "(default runs/<profile>/teacher/pretrain); both are bundled, as from train mode")
    args = parser.parse_args(argv)
    runs, _ = output_dirs(args.profile)
    out = bundle_teacher(load_profile(args.profile), runs, prefix=args.prefix, finetune_run=args.finetune_run,
                         pretrain_run=args.pretrain_run)
    for name, f in out["files"].items():
        print(f"{f['path']}: sha256 {f['sha256']}")
    print(f"test top-1 {out['test']['top1']:.4f}; model card {out['card']}; put the sha256 in the profiles' "
          "teacher.bundled")


if __name__ == "__main__":
    run_main(main)
