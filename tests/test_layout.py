"""The library's shape (DESIGN.md section 2): the method at the top of ``g2sd_lib``, the pipeline's
machinery in ``g2sd_lib/pipeline/``, imports one way (machinery -> method), no import cycle, no two
modules with one name, modules of about 300 lines (at most MAX_LINES), and every module importable on its own."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "g2sd_lib"
MAX_LINES = 320  # "about 300" (STYLE.md): the longest today are fmnist.py 318, pipeline/stages.py 308


def _modules() -> dict[str, tuple[Path, str]]:
    """module name -> (file, the package its relative imports start from)."""
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            name = ".".join(parts[:-1])
            out[name] = (path, name)
        else:
            name = ".".join(parts)
            out[name] = (path, name.rsplit(".", 1)[0])
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the library modules it imports (at the top or inside a function)."""
    modules, graph = _modules(), {}
    for name, (path, package) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("g2sd_lib"):
                    target = node.module
                else:
                    continue
                deps |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
                deps |= {target} if target in modules else set()
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_method_never_imports_the_pipeline():
    wrong = sorted((m, d) for m, deps in import_graph().items() if not m.startswith("g2sd_lib.pipeline")
                   for d in deps if d.startswith("g2sd_lib.pipeline"))
    assert wrong == [], f"method modules importing the pipeline's machinery: {wrong}"


def test_no_two_modules_share_a_name():
    by_name = {}
    for name in _modules():
        if not name.endswith("__main__"):
            by_name.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    assert {k: v for k, v in by_name.items() if len(v) > 1} == {}


def test_modules_are_short():
    long = {str(p.relative_to(REPO)): n for p, _ in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


# Imports each module in a child forked from an interpreter that has loaded the heavy dependencies but no
# g2sd_lib module, so each child starts the library from nothing (as `python -c "import g2sd_lib.x"` would)
# in milliseconds instead of a fresh torch import each.
_FORK_IMPORTS = """
import os, sys, traceback
import numpy, pandas, pydantic, timm, torch, torchvision, yaml  # noqa: F401 (preloaded, shared by the children)
assert not [m for m in sys.modules if m.startswith("g2sd_lib")]
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED:", " ".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_on_its_own():
    names = [m for m in _modules() if not m.endswith("__main__")]
    result = subprocess.run([sys.executable, "-c", _FORK_IMPORTS, *names], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
