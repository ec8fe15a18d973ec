"""A training run's files: its per-epoch history (JSON and CSV) and small JSON results.

The engine writes ``history.{json,csv}`` into the run directory after every epoch
(:func:`write_run_history`); the pipeline's stages write the same rows as ``dvc plots`` CSVs
(:func:`write_history`) and their results as JSON (:func:`write_json`).
"""

import csv
import json
import os
from pathlib import Path

from .errors import writing


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_history(history: list[dict], path) -> Path:
    """One training run's per-epoch history as CSV, ``epoch`` first (the x axis of ``dvc plots``).
    An empty history (a model trained elsewhere, e.g. a bundled teacher) gives the header only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import pandas as pd  # here: the training processes import this module and need no pandas

    frame = pd.DataFrame(history) if history else pd.DataFrame(columns=["epoch", "train_loss"])
    frame[["epoch", *(c for c in frame.columns if c != "epoch")]].to_csv(path, index=False)
    return path


def write_run_history(out_dir: Path, history: list[dict]):
    """A training run's ``history.json`` and ``history.csv`` in ``out_dir`` (one row per epoch, written by
    the engine after every epoch), each replaced atomically."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    for name in ("history.json", "history.csv"):
        tmp = out_dir / f"{name}.tmp"
        with writing(out_dir / name):
            try:
                with open(tmp, "w", newline="") as f:
                    if name.endswith(".json"):
                        f.write(json.dumps(history, indent=1))
                    else:
                        w = csv.DictWriter(f, fieldnames=keys)
                        w.writeheader()
                        w.writerows(history)
                os.replace(tmp, out_dir / name)
            except BaseException:
                tmp.unlink(missing_ok=True)  # the previous epoch's complete file stays; no half-written copy
                raise
