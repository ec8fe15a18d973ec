"""Notebooks are committed clean and take their parameters from params.yaml through papermill."""

import json
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from g2sd_lib.pipeline.profiles import PROFILES, load_profile

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# the notebooks dvc.yaml runs; the teaching ones (00, explore) take their own parameters, not sections
STAGE_NOTEBOOKS = [p for p in NOTEBOOKS if f"notebooks/{p.name}" in (REPO / "dvc.yaml").read_text()]
TEACHING_NOTEBOOKS = {"00_g2sd_in_10_minutes.ipynb", "explore.ipynb"}


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


@pytest.mark.parametrize("path", [p for p in STAGE_NOTEBOOKS if p.name not in TEACHING_NOTEBOOKS],
                         ids=lambda p: p.name)
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
    assert env["students"]["kd"]["task"] == {"layer_decay": None, "alpha": 1.0, "temperature": 1.0}
    assert env["students"] == load_profile("fmnist")["students"]  # whole sections replace the defaults


def _injected(path) -> str:
    return "".join(next(c for c in json.loads(Path(path).read_text())["cells"]
                        if "injected-parameters" in c["metadata"].get("tags", []))["source"])


def _runner(*args, cwd=REPO):
    """The command every dvc.yaml stage runs: ``python -m g2sd_lib.pipeline.notebook_runner ...``."""
    import subprocess
    return subprocess.run([sys.executable, "-m", "g2sd_lib.pipeline.notebook_runner", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def test_stage_runner_injects_the_declared_sections_only(tmp_path):
    """The stages' command line, in prepare-only mode: the profile's sections the notebook declares,
    plus -p, and no "Passed unknown parameter" warning for the others."""
    out = tmp_path / "out.ipynb"
    done = _runner("paper", "-p", "run", "gd", "notebooks/02_generic_distillation.ipynb", out, "--prepare-only")
    assert done.returncode == 0, done.stderr
    src = _injected(out)
    assert 'run = "gd"' in src and "mae_vit_small_patch16_dec256d4b" in src and 'profile = "paper"' in src
    env = {}
    exec(src, env)  # plain Python literals
    assert {k for k in env if not k.startswith("__")} == {"run", "profile", "nproc", "data", "pretrain"}
    assert "unknown parameter" not in done.stdout + done.stderr


def test_every_stage_runs_its_notebook_through_the_runner():
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert pipeline["vars"][0]["nb"] == "python -m g2sd_lib.pipeline.notebook_runner"
    for name, stage in pipeline["stages"].items():
        if "matrix" in stage and "profile" in stage["matrix"] and "notebooks/" in stage["cmd"]:
            assert "${nb} ${item.profile} " in stage["cmd"] and "papermill" not in stage["cmd"], name
    assert "${nb} none notebooks/00_g2sd_in_10_minutes.ipynb" in pipeline["stages"]["entry"]["cmd"]


def test_stage_runner_reports_mistakes_and_failing_cells(tmp_path):
    done = _runner("smoke", "-p", "rnu", "gd", "notebooks/02_generic_distillation.ipynb", tmp_path / "o.ipynb")
    assert done.returncode == 2 and "declares no parameter 'rnu'" in done.stderr and "Traceback" not in done.stderr
    done = _runner("smok", "notebooks/02_generic_distillation.ipynb", tmp_path / "o.ipynb")
    assert done.returncode == 2 and "unknown profile 'smok'" in done.stderr
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = None", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("raise ValueError(f'boom {x}')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "fails.ipynb")
    done = _runner("smoke", tmp_path / "fails.ipynb", tmp_path / "o.ipynb", "-p", "x", "1")
    assert done.returncode == 1, done.stderr
    # cell [3]: papermill puts the injected parameters after the parameters cell
    assert "fails.ipynb failed at cell [3]" in done.stderr and "ValueError: boom 1" in done.stderr
    assert "papermill/" not in done.stderr  # the cell's error, not papermill's own stack
    assert (tmp_path / "o.ipynb").exists()  # the executed copy up to the failing cell, to read


def test_stage_runner_without_profile_runs_the_kernel_where_asked_over_encrypted_channels(tmp_path):
    """``run none ... --cwd DIR`` (the entry stage): no profile, the kernel in DIR; where pyzmq has
    CurveZMQ (as pinned here) the kernel's channels are encrypted, so ipykernel's plain-TCP warning is gone; a
    missing --cwd directory is refused in one line, OUTPUT's is made."""
    import zmq
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = None", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("import os; print(os.getcwd(), x)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "where.ipynb")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _runner("none", tmp_path / "where.ipynb", tmp_path / "o.ipynb", "-p", "x", "7", "--cwd", elsewhere)
    assert done.returncode == 0, done.stderr
    printed = nbformat.read(tmp_path / "o.ipynb", as_version=4).cells[-1].outputs[0]["text"]
    assert printed.strip() == f"{elsewhere} 7"
    if zmq.has("curve"):
        assert "without encryption" not in done.stdout + done.stderr
    done = _runner("none", tmp_path / "where.ipynb", tmp_path / "o.ipynb", "--cwd", tmp_path / "nowhere")
    assert done.returncode == 2 and "no directory" in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = _runner("none", tmp_path / "where.ipynb", tmp_path / "new" / "o.ipynb", "--prepare-only")
    assert done.returncode == 0 and (tmp_path / "new" / "o.ipynb").is_file(), done.stderr  # its folder is made


def test_every_stage_depends_on_the_whole_library():
    """The library is one dependency: the `library` stage depends on the package folder and its stamp lists
    the sha256 of every module (so a module added later is covered without a list kept by hand); every
    other stage depends on the stamp."""
    import subprocess
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["library"]["deps"] == ["g2sd_lib"]
    # the profiles are params (each stage tracks its sections), not library: DVC does not see them in the folder
    assert "g2sd_lib/pipeline/profiles/*.yaml" in (REPO / ".dvcignore").read_text().splitlines()
    for name, stage in stages.items():
        assert name == "library" or "runs/library.sha256" in stage["deps"], name
    code = stages["library"]["cmd"].split('python -c "', 1)[1].rsplit('" >', 1)[0]
    stamp = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "g2sd_lib").rglob("*.py"))
    assert [line.split("  ", 1)[1] for line in stamp.splitlines()] == modules
