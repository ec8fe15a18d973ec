import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # a worker of `pytest -n N`: its share of the cores, not all of them each
    # (counted as g2sd_lib.device.usable_cores does, without importing it: torch must read OMP_NUM_THREADS first)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# The longest test files first, so that under `pytest -n N --dist loadfile` the smoke pipeline (half of the
# suite's time) starts at once instead of last.
FIRST = ("test_pipeline.py", "test_benchmark.py", "test_label_scarce.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))


@pytest.fixture(scope="session")
def fmnist_available():
    """The tests that train on Fashion-MNIST need its files (``make data`` puts them in place)."""
    from g2sd_lib.fmnist import DatasetNotFoundError, find_fashion_mnist
    try:
        return find_fashion_mnist()
    except DatasetNotFoundError as e:
        pytest.skip(str(e))


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` (a script, not a package module) loaded as a module, for its tests;
    ``benchmarks/`` goes on the path, as when the script runs, for the modules it imports from there
    (the GPU session's steps)."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(benchmarks) not in sys.path:
        sys.path.append(str(benchmarks))
    script = benchmarks / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the entry notebook 00 at tiny sizes (as stored it trains for minutes): its own test, and the pipeline test's entry stage
ENTRY_TINY = {"train_images": 256, "gd_epochs": 1, "sd_epochs": 1, "test_images": 200, "batch_size": 32, "seed": 0}


def shrink_parameters(notebook: Path, values: dict) -> None:
    """Rewrite the assignments of ``notebook``'s ``parameters`` cell to ``values`` (comments kept), as a
    reader who edits them would: for a stage that runs the notebook as stored (papermill injects nothing)."""
    import re

    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for name, value in values.items():
        cell.source, count = re.subn(rf"^{name} = [^#\n]*?(\s*#|$)", rf"{name} = {value!r}\1", cell.source, flags=re.M)
        assert count == 1, f"{notebook.name}: no parameter {name}"
    nbformat.write(nb, notebook)


def json_floats(node) -> list[float]:
    """Every float of a JSON or YAML tree (the numbers prose may quote from a result or a setting)."""
    if isinstance(node, dict):
        return [f for v in node.values() for f in json_floats(v)]
    if isinstance(node, list):
        return [f for v in node for f in json_floats(v)]
    return [node] if isinstance(node, float) else []
