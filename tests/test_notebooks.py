"""Notebooks are committed clean and take their parameters from params.yaml through papermill."""

import json
import sys
from pathlib import Path

import papermill as pm
import pytest
import yaml

from g2sd_lib.profiles import PROFILES, load_profile

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
STAGE_NOTEBOOKS = [p for p in NOTEBOOKS if p.name[:2].isdigit()]  # explore.ipynb is not a stage


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_with_kernel_and_parameters_cell(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"  # papermill refuses notebooks without it
    for cell in nb["cells"]:
        assert cell.get("id"), f"{path.name} has a cell without an id (nbformat 4.5)"
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name} has outputs"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"


@pytest.mark.parametrize("path", STAGE_NOTEBOOKS, ids=lambda p: p.name)
def test_declared_parameters_are_params_yaml_sections(path):
    """Every parameter a notebook declares is a top-level key of the profiles (or the stage's run
    and, for the dense stages, task)."""
    declared = pm.inspect_notebook(str(path))
    sections = set(load_profile("smoke")) | {"run", "task"}
    assert set(declared) <= sections, set(declared) - sections
    for name in PROFILES:
        assert set(load_profile(name)) == set(load_profile("smoke")), name


def test_papermill_injects_params_yaml_sections(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(load_profile("fmnist")))
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(REPO / "notebooks/03_specific_distillation.ipynb"), str(out),
                        parameters={**yaml.safe_load(params.read_text()), "run": "kd"}, prepare_only=True,
                        kernel_name="python3")
    nb = json.loads(out.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(injected) == 1
    env = {}
    exec("".join(injected[0]["source"]), env)  # the injected cell is plain Python literals
    assert env["run"] == "kd" and env["profile"] == "fmnist"
    assert env["students"]["kd"]["task"]["temperature"] == 4.0
    assert env["students"] == load_profile("fmnist")["students"]  # whole sections replace the defaults


def test_papermill_cli_reads_params_file(tmp_path):
    """The exact command line the DVC stages use, in prepare-only mode."""
    import subprocess
    out = tmp_path / "out.ipynb"
    (tmp_path / "params.yaml").write_text((REPO / "g2sd_lib/profiles/paper.yaml").read_text())
    subprocess.run([str(Path(sys.executable).with_name("papermill")), "--prepare-only", "-k", "python3",
                    "-f", str(tmp_path / "params.yaml"), "-p", "run", "gd",
                    str(REPO / "notebooks/02_generic_distillation.ipynb"), str(out)], check=True,
                   capture_output=True)
    src = "".join(next(c for c in json.loads(out.read_text())["cells"]
                       if "injected-parameters" in c["metadata"].get("tags", []))["source"])
    assert 'run = "gd"' in src and "mae_vit_small_patch16_dec256d4b" in src and "profile = \"paper\"" in src
