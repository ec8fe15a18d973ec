"""The GPU session's ``layer_decay`` and ``kd`` steps (after ``repro``): settings chosen on the
validation split, as the ``fmnist`` profile's were. Seed 0 of each student run a choice applies to
trains at every setting of ``CHOICES`` other than the profile's own (that one is the repro's seed 0,
reused), all at once; ``<step>.json`` gives each run's validation top-1 and the setting with the best
mean over the runs. No profile is changed.
"""

import copy
import json
from pathlib import Path

from gpu_common import log, profile_path, target_repo  # first: it puts the repository on the path

from g2sd_lib.pipeline import config
from g2sd_lib.pipeline.profiles import load_profile_file
from g2sd_lib.pipeline.stages import launch_all

# Settings the layer_decay and kd steps try on seed 0 of the student runs they apply to (the profile's own
# setting too: that one is the repro's seed 0, reused). Layer decay, for the students initialised from a
# pretrained encoder: the official 0.75 is SD.sh's for ViT-S after 300 GD epochs; on the CPU default it held
# the GD student back 2 points at 20 epochs. KD's alpha and temperature (no official KD baseline), the grid the
# CPU default chose from: there 0.9 / 1 came level with G2SD at 20 epochs where 0.5 / 4 stayed below, and 1.0 / 1
# (soft labels only) had the best mean at 2 epochs (benchmarks/README.md, budget probe).
CHOICES = {
    "layer_decay": {"keys": ("layer_decay",), "values": [(0.75,), (0.9,), (None,)],
                    "applies": lambda section: bool(section.get("init"))},
    "kd": {"keys": ("alpha", "temperature"), "values": [(0.5, 4.0), (0.9, 1.0), (0.5, 1.0), (0.9, 4.0),
                                                           (1.0, 1.0), (1.0, 4.0)],
           "applies": lambda section: section.get("kind") == "kd"},
}


def setting_probes(params: dict, root: Path, work: Path, choice: str) -> list[dict]:
    """Seed 0 of each student run that ``CHOICES[choice]`` applies to, at its own setting and each of the
    choice's: ``{"run", "setting", "profile_value", "cfg", "reuse"}``, where ``setting`` labels the task
    values (e.g. ``layer_decay=0.9``) and ``reuse`` is the history the pipeline left under ``root`` for
    the profile's own setting (then nothing is trained for it), or None."""
    spec = CHOICES[choice]
    probes = []
    for run, section in params["students"].items():
        if run == "common" or not spec["applies"](section):
            continue
        own = config.stage_config(params, "students", run, root, seed=0)
        own_value, history = tuple(own["task"].get(k) for k in spec["keys"]), Path(own["out_dir"]) / "history.json"
        for value in dict.fromkeys((own_value, *spec["values"])):
            cfg = copy.deepcopy(own)
            cfg["task"].update(zip(spec["keys"], value))
            setting = ",".join(f"{k}={v}" for k, v in zip(spec["keys"], value))
            cfg["out_dir"] = str(work / f"{run}_{setting.replace(',', '_')}")
            probes.append({"run": run, "setting": setting, "profile_value": value == own_value, "cfg": cfg,
                           "reuse": history if value == own_value and history.exists() else None})
    return probes


def choose(out: Path, dry: bool, concurrent: int, choice: str) -> dict:
    """The ``layer_decay`` and ``kd`` steps: the probes of ``setting_probes`` on the profile ``repro`` ran
    (in a dry run, the scratch copy's shrunk one), trained at once; their validation top-1 and, per
    setting, the mean over the runs, in ``<choice>.json``. It reads the validation split only and changes
    no profile."""
    repo = target_repo(out, dry)
    path = profile_path(repo, "gpu")
    params = load_profile_file(path)
    probes = setting_probes(params, repo / "runs" / "gpu", out / choice, choice)
    missing = sorted({p["cfg"]["init"] for p in probes if p["cfg"].get("init") and not Path(p["cfg"]["init"]).exists()})
    if missing:
        raise SystemExit(f"{choice}: {', '.join(missing)} missing: run the repro step first (in the same call)")
    todo = [p for p in probes if p["reuse"] is None]
    names = [f"{p['run']} {p['setting']}" for p in todo]
    log(f"{choice}: {len(todo)} runs at once ({'; '.join(names)}); {len(probes) - len(todo)} reused from the pipeline")
    for p, history in zip(todo, launch_all([p["cfg"] for p in todo], 1, concurrent, names=names)):
        p["history"] = history
    rows = []
    for p in probes:
        history = p.get("history") or json.loads(p["reuse"].read_text())
        rows.append({"run": p["run"], "setting": p["setting"], "profile_value": p["profile_value"],
                     "reused": str(p["reuse"].relative_to(repo)) if p["reuse"] else None,
                     "epochs": len(history), "val_top1": history[-1].get("val_top1")})
    means = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        scores = [r["val_top1"] for r in rows if r["setting"] == setting]
        means[setting] = sum(scores) / len(scores)
    best = max(means, key=means.get)
    result = {"dry": dry, "seed": 0, "runs": rows, "mean_val_top1_by_setting": means, "best_setting": best}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{choice}.json").write_text(json.dumps(result, indent=1))
    log(f"{choice}: mean validation top-1 " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()) + f"; best {best}")
    return result
