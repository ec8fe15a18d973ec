"""The entry notebook `00_g2sd_in_10_minutes` and the worked solutions of its exercises, run shrunk
to tiny sizes (papermill parameters / command-line options): they execute without error, the
notebook shows its figures and every hand-computed loss passes its check against g2sd_lib."""

import json
import runpy
import sys
from pathlib import Path

import papermill as pm
import pytest
from conftest import ENTRY_TINY as TINY

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "00_g2sd_in_10_minutes.ipynb"
SOLUTIONS = REPO / "notebooks" / "solutions"

pytestmark = pytest.mark.slow


def test_notebook_runs_shrunk_and_shows_its_figures(tmp_path, fmnist_available):
    out = tmp_path / "00_g2sd_in_10_minutes.ipynb"
    # cwd notebooks/, as JupyterLab opens it; the notebook finds the repository above it
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters=TINY, cwd=str(NOTEBOOK.parent), kernel_name="python3",
                        progress_bar=False)
    cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    images = [c for c in cells if any("image/png" in o.get("data", {}) for o in c["outputs"])]
    assert len(images) == 4  # the shared mask, the GD feature alignment, the CLS attention maps (last, middle block)
    text = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream")
    for expected in ("(8, 17, 96) = (B, 1 + L, D_T)", "GD loss of the untrained student", "epoch 1/1",
                     "SD loss of the untrained heads", "G2SD student", "scratch baseline",
                     "r masked vs visible", "attention similarity to the teacher", "brightest cell on background"):
        assert expected in text, expected


# each solution asserts the outcome its exercise promises; GD's lessons need more than the tiny budget's 8
# steps to show (held-out GD losses measured at 2048 images: two masks 0.2465 against one 0.2376, equal at
# 256; each target block's student closer to its own target by 0.0075 / 0.049, by 0.0003 at 256)
GD_LESSON = {"train_images": 2048, "batch_size": 64, "test_images": 1000}


@pytest.mark.parametrize("script, expected, sizes", [
    ("ex1_target_block.py", "G2SD top-1", GD_LESSON),
    ("ex2_encoder_only_teacher.py", "load_model refuses it", {}),
    ("ex3_two_masks.py", "held-out GD loss", GD_LESSON)])
def test_solution_runs_shrunk_and_asserts_its_lesson(script, expected, sizes, fmnist_available, monkeypatch, capsys):
    # in this process (no second torch import): as `python notebooks/solutions/<script> --train-images ...`
    options = [f"--{name.replace('_', '-')}={value}" for name, value in {**TINY, **sizes}.items()]
    monkeypatch.setattr(sys, "argv", [str(SOLUTIONS / script), *options])
    monkeypatch.syspath_prepend(str(SOLUTIONS))
    runpy.run_path(str(SOLUTIONS / script), run_name="__main__")
    assert expected in capsys.readouterr().out
