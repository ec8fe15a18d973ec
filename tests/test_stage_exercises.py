"""The stage notebooks 01-08 and explore.ipynb each end with an "Exercises" cell, and the worked
solution of each (``notebooks/solutions/stage_*.py``) runs and passes the checks it states."""

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "notebooks" / "solutions"
NOTEBOOKS = sorted((REPO / "notebooks").glob("0[1-8]_*.ipynb")) + [REPO / "notebooks" / "explore.ipynb"]


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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solution_runs_and_its_checks_pass(path, fmnist_available, monkeypatch, capsys):
    # in this process (no second torch import), as `python notebooks/solutions/stage_<notebook>.py`
    script = _solution(path)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.syspath_prepend(str(SOLUTIONS))
    runpy.run_path(str(script), run_name="__main__")
    assert "solutions: OK" in capsys.readouterr().out
