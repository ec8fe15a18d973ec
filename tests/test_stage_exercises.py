"""The stage notebooks 01-08 and explore.ipynb each end with an "Exercises" cell, and the worked
solution of each (``notebooks/solutions/stage_*.py``) runs and passes the checks it states; the
solutions about trained students (notebooks 02-04) run on smoke runs trained here."""

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "notebooks" / "solutions"
NOTEBOOKS = sorted((REPO / "notebooks").glob("0[1-8]_*.ipynb")) + [REPO / "notebooks" / "explore.ipynb"]
ON_TRAINED_RUNS = {"02_generic_distillation", "03_specific_distillation", "04_evaluation"}  # stage_runs.py users


def _solution(notebook: Path) -> Path:
    """notebooks/01_teacher.ipynb -> notebooks/solutions/stage_01_teacher.py"""
    return SOLUTIONS / f"stage_{notebook.stem}.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_numbered_exercises_and_has_a_solution(path):
    last = json.loads(path.read_text())["cells"][-1]
    text = "".join(last["source"])
    assert last["cell_type"] == "markdown" and text.startswith("## Exercises"), f"{path.name}: no final Exercises cell"
    numbered = [line for line in text.splitlines() if line[:2] in {f"{i}." for i in range(1, 5)}]
    assert 2 <= len(numbered) <= 4, f"{path.name}: {len(numbered)} exercises"
    assert "Expected" in text and _solution(path).name in text
    assert _solution(path).is_file()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, fmnist_available):
    """``runs/smoke`` as the pipeline leaves it, for the runs the solutions read: the teachers (trained,
    the smoke profile's mode), the GD student and the g2sd and scratch students (seed 0); about a minute."""
    from g2sd_lib.pipeline import config, profiles
    from g2sd_lib.pipeline.stages import run_stage
    from g2sd_lib.pipeline.teacher import obtain_teacher
    root = tmp_path_factory.mktemp("runs") / "smoke"
    params = profiles.load_profile("smoke")
    params["data"]["root"] = str(fmnist_available)
    obtain_teacher(params, root)
    run_stage(config.stage_config(params, "pretrain", "gd", root))
    for name in ("g2sd", "scratch"):
        run_stage(config.stage_config(params, "students", name, root, seed=params["seeds"][0]))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solution_runs_and_its_checks_pass(path, fmnist_available, monkeypatch, capsys, request):
    # in this process (no second torch import), as `python notebooks/solutions/stage_<notebook>.py`
    if path.stem in ON_TRAINED_RUNS:
        monkeypatch.setenv("G2SD_RUNS", str(request.getfixturevalue("smoke_runs")))
    script = _solution(path)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.syspath_prepend(str(SOLUTIONS))
    runpy.run_path(str(script), run_name="__main__")
    assert "solutions: OK" in capsys.readouterr().out
