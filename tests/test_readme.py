"""The README must stay true: its results come from the committed summaries, and every command,
module and path it names exists (a renamed module, flag, stage or profile key fails here)."""

import contextlib
import importlib
import importlib.util
import io
import json
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import json_floats

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOP_DIRS = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"data", "runs"}
COMMAND_START = re.compile(r"^(make|python|dvc|bash|\.venv/bin/\S+)\s")


def _block_and_rest() -> tuple[str, str]:
    """The README's generated results block (markers included) and the text around it."""
    from g2sd_lib.pipeline.compare import README_BEGIN, README_END
    text = README.read_text()
    assert README_BEGIN in text and README_END in text, "README.md has lost its results markers"
    head, rest = text.split(README_BEGIN, 1)
    block, tail = rest.split(README_END, 1)
    return README_BEGIN + block + README_END, head + tail


def test_the_results_block_is_what_the_committed_summaries_give():
    from g2sd_lib.pipeline import compare
    from g2sd_lib.pipeline.profiles import enabled_profiles

    profiles = enabled_profiles(REPO / "params.yaml")
    expected = compare.readme_block(compare.load_summaries(profiles, REPO / "reports"), compare.not_run(profiles))
    block, _ = _block_and_rest()
    assert block == expected, "README.md's results block is stale: run python -m g2sd_lib.pipeline.compare"


def test_compare_rewrites_only_the_block(tmp_path):
    from g2sd_lib.pipeline.compare import README_BEGIN, README_END, write_readme_block

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\nrest\n")
    assert write_readme_block(readme, f"{README_BEGIN}\nnew table\n{README_END}")
    assert readme.read_text() == f"intro\n{README_BEGIN}\nnew table\n{README_END}\nrest\n"
    readme.write_text("no markers\n")
    assert not write_readme_block(readme, "anything") and readme.read_text() == "no markers\n"


def test_the_results_block_says_which_profiles_have_no_results():
    block, _ = _block_and_rest()
    assert "| `gpu` | no results yet (`make repro P=gpu`) |" in block


def test_the_first_screen_answers_whether_the_claims_hold():
    """One line, generated: only a profile whose claims have verdicts answers; the others say why not."""
    from g2sd_lib.pipeline.compare import claims_line

    head_start = {"classification": {"last_epoch_gain": {"g2sd": 0.05}}}
    verdicts = ["holds", "holds", "fails", "untestable"]
    valid = {"classification": {"last_epoch_gain": {}}, "validity": {"V1": {"pass": True}, "V2": {"pass": True}},
             "claims": [{"verdict": v} for v in verdicts]}
    invalid = {"classification": {"last_epoch_gain": {}}, "claims": [{"verdict": "untestable"}],
               "validity": {"V1": {"pass": True}, "V2": {"pass": False}, "V5": {"pass": None}}}
    assert claims_line({"a": head_start}, ["b"]) == ("**Do the paper's claims hold?** not tested yet: `a` is a head "
                                                     "start, not a test; `b` has no results yet.")
    line = claims_line({"a": head_start, "v": valid, "w": invalid}, [])
    assert line.startswith("**Do the paper's claims hold?** on `v` 2 of 3 hold (1 untestable): ")
    assert "`w` failed or lacks its validity criteria (V2 failed; V5 not measured)" in line
    lines = README.read_text().splitlines()
    assert any(line.startswith("**Do the paper's claims hold?**") for line in lines[:30])


def test_the_readme_starts_with_the_quickstart_and_the_results_and_stays_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines: move detail to benchmarks/ or reports/"
    first = "\n".join(lines[:40])
    assert "make repro" in first and "make test" in first and "results:begin" in first


def _numbers(value) -> set[str]:
    """Every float of a JSON tree as the README writes results: percent with two decimals."""
    if isinstance(value, dict):
        return set().union(set(), *(_numbers(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(_numbers(v) for v in value))
    return {f"{100 * value:.2f}"} if isinstance(value, float) else set()


def _settings() -> set[str]:
    """Every float setting of the committed profiles, with two decimals (e.g. a layer decay of ``0.75``)."""
    return {f"{v:.2f}" for p in REPO.glob("g2sd_lib/**/*.yaml") for v in json_floats(yaml.safe_load(p.read_text()))}


def _calibration_numbers() -> set[str]:
    """Every float of the committed calibrations (benchmarks/label_scarce.py writes points, not fractions)."""
    return {f"{v:.2f}" for p in REPO.glob("benchmarks/results/calibration/*.json")
            for v in json_floats(json.loads(p.read_text()))}


def test_every_result_quoted_outside_the_block_is_in_a_committed_summary():
    """Results are written with two decimals; outside the generated block each must be one of the
    committed summaries' numbers, a committed calibration's (in points), or a profile's setting
    (parameter counts, ``0.31 M``, are sizes)."""
    _, rest = _block_and_rest()
    allowed = _settings().union(_calibration_numbers(),
                                *(_numbers(json.loads(p.read_text())) for p in REPO.glob("reports/*/summary.json")))
    quoted = set(re.findall(r"(?<![\d.])\d+\.\d\d(?![\d.])(?! M\b)", rest))
    stale = sorted(quoted - allowed)
    assert not stale, f"README.md quotes {stale}, which no reports/*/summary.json holds: quote the current ones"


def test_the_quoted_wall_time_is_the_committed_measurement():
    """The quickstart's time, memory and machine are those of benchmarks/results/pipeline_fmnist.json, and
    every other time in minutes with a decimal is that one too."""
    _, rest = _block_and_rest()
    timing = json.loads((REPO / "benchmarks/results/pipeline_fmnist.json").read_text())
    minutes = f"{timing['total_seconds'] / 60:.1f} min"
    assert minutes in rest and f"{timing['peak_rss_mb'] / 1000:.1f} GB" in rest and timing["machine"] in rest
    assert set(re.findall(r"\d+\.\d min\b", rest)) == {minutes}


# --- every command ---------------------------------------------------------------------------------

def _split(line: str) -> list[str]:
    """One shell line -> its simple commands (split at ``&&``, ``||``, ``;`` and ``|``; comments dropped)."""
    line = re.sub(r"(^|\s)#.*", "", line)
    return [c.strip() for c in re.split(r"&&|\|\||;|\|", line) if c.strip()]


def readme_commands() -> list[str]:
    """The commands of the README: every line of its ``bash`` blocks (continuations joined), and every
    inline code span that starts like a command (``make``, ``python``, ``dvc``, ``bash``, ``.venv/bin/``)
    and holds no ``<placeholder>``."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands += _split(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if COMMAND_START.match(span + " ") and "<" not in span and len(span.split()) > 1:
            commands += _split(span)
    return list(dict.fromkeys(commands))


def _run_in_process(run, argv: list[str]) -> tuple[int, str]:
    """Run ``run()`` with ``sys.argv[1:] = argv``; its exit status and everything it printed."""
    out, saved = io.StringIO(), sys.argv
    sys.argv = ["prog", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
            code = run()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = saved
    if isinstance(code, str):  # sys.exit("usage: ...") prints its message on the way out
        return 1, out.getvalue() + code
    return code if isinstance(code, int) else 0, out.getvalue()


def _help(run_with, args: list[str]) -> str:
    """The help a command prints: its own, or its subcommand's when its first argument is one."""
    code, text = run_with(["--help"])
    assert "usage" in text.lower(), f"--help printed no usage (status {code}):\n{text[-800:]}"
    if args and not args[0].startswith("-") and re.search(rf"(?<![\w-]){re.escape(args[0])}(?![\w-])", text):
        sub_code, sub_text = run_with([args[0], "--help"])
        if sub_code == 0:
            text += sub_text
    return text


def _check_flags(command: str, args: list[str], help_text: str) -> None:
    for flag in (a.split("=")[0] for a in args if re.match(r"^--?[A-Za-z]", a)):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), \
            f"`{command}`: its --help does not know {flag}"


def _check_paths(command: str, args: list[str]) -> None:
    """Repository paths exist, and ``FILE.yaml:key.path=value`` names a key the file has (``++key``: a key
    of the profile the file states or takes from base.yaml, which DVC adds to the file)."""
    from g2sd_lib.pipeline.profiles import load_profile_file
    for arg in args:
        m = re.match(r"^'?([\w./-]+\.ya?ml):(\+\+)?([\w.]+)=", arg)
        if m:
            node = load_profile_file(REPO / m[1]) if m[2] else yaml.safe_load((REPO / m[1]).read_text())
            for key in m[3].split("."):
                assert isinstance(node, dict) and key in node, f"`{command}`: {m[1]} has no key {m[3]}"
                node = node[key]
            arg = m[1]
        if "/" in arg and arg.split("/")[0] in TOP_DIRS:
            assert (REPO / arg).exists(), f"`{command}`: {arg} does not exist"


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent that is no package
        return False


def _check_python(command: str, args: list[str]) -> None:
    if args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        assert _is_module(module), f"`{command}`: no module {module}"

        def main():
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = REPO / args[0], args[1:]
        assert script.is_file(), f"`{command}`: {args[0]} does not exist"

        def main():
            runpy.run_path(str(script), run_name="__main__")
    _check_paths(command, rest)
    _check_flags(command, rest, _help(lambda argv: _run_in_process(main, argv), rest))


def _check_dvc(command: str, args: list[str]) -> None:
    from dvc.cli import main
    words = [a for a in args if not a.startswith("-")]
    sub = words[:2] if words[:1] in (["exp"], ["stage"], ["metrics"], ["plots"]) else words[:1]
    code, text = _run_in_process(lambda: main([*sub, "--help"]), [])
    assert code == 0 and "usage" in text.lower(), f"`{command}`: dvc {' '.join(sub)} --help failed:\n{text[-800:]}"
    _check_flags(command, args, text)
    _check_paths(command, args)
    if sub == ["repro"]:
        stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
        for target in words[1:]:
            assert target.split("@")[0] in stages, f"`{command}`: dvc.yaml has no stage {target}"


def _check_make(command: str, args: list[str]) -> None:
    result = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"`{command}`: make -n failed:\n{result.stderr[-800:]}"


def _check_venv_program(command: str, program: str, args: list[str]) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    if program in scripts:  # our own console script: its entry point, in process
        module, func = scripts[program].split(":")
        entry = getattr(importlib.import_module(module), func)
        _check_flags(command, args, _help(lambda argv: _run_in_process(lambda: entry(argv), []), args))
    else:
        assert (Path(sys.executable).parent / program).exists(), f"`{command}`: the virtualenv has no {program}"
    _check_paths(command, args)


def check_command(command: str) -> None:
    """Fail with the command's name when it names a missing module, script, stage, key or flag."""
    program, *args = shlex.split(command)
    if program in ("python", ".venv/bin/python"):
        _check_python(command, args)
    elif program == "dvc":
        _check_dvc(command, args)
    elif program == "make":
        _check_make(command, args)
    elif program == "bash":
        assert (REPO / args[0]).is_file(), f"`{command}`: {args[0]} does not exist"
        assert subprocess.run(["bash", "-n", REPO / args[0]]).returncode == 0
    elif program.startswith(".venv/bin/"):
        _check_venv_program(command, program.removeprefix(".venv/bin/"), args)
    else:
        pytest.fail(f"`{command}`: the README's code blocks hold only commands this test can check")


def test_the_readme_names_its_two_commands():
    commands = readme_commands()
    assert "make repro" in commands and "make test" in commands


@pytest.mark.parametrize("command", readme_commands())
def test_every_command_in_the_readme_exists_and_accepts_its_flags(command):
    check_command(command)


def test_every_module_and_path_the_readme_names_exists():
    """Inline code naming a module (``g2sd_lib.losses``), an attribute (``g2sd_lib.losses.cwd_loss``) or a
    repository path (``tests/test_parity.py``) must name one that exists."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README.read_text(), flags=re.S))
    for span in spans:
        for name in re.findall(r"\bg2sd_lib(?:\.\w+)+", span):
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
                module = ".".join(parts[:cut])
                if _is_module(module):
                    obj = importlib.import_module(module)
                    for attr in parts[cut:]:
                        assert hasattr(obj, attr), f"README names {name}: {module} has no {attr}"
                        obj = getattr(obj, attr)
                    break
            else:
                pytest.fail(f"README names {name}, which is no module")
        for path in re.findall(r"(?:^|\s)([\w.-]+/[\w./-]*)", span):
            if path.split("/")[0] in TOP_DIRS and not re.search(r"[<*{]", span):
                assert (REPO / path).exists(), f"README names {path}, which does not exist"
