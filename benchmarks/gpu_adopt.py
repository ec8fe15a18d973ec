"""The GPU session's ``adopt`` step: the bundle the sweep chose becomes the `gpu` profile's, so that
``repro`` can follow in the same call (``adopt_bundle``: the files and card into ``teachers/``, and
``teacher.mode: bundled`` with the sha256 and the chosen variant in ``gpu.yaml``). After a session it
adopts from the extracted archives instead (``python benchmarks/gpu_session.py --out D adopt``).

It refuses a sweep whose chosen variant did not finish (a session stopped mid-sweep) and a bundle whose
files do not match the sha256 their sidecars record; the profile is edited line by line, its comments
kept, and written only if it parses to exactly the intended profile.
"""

import json
import re
import shutil
from pathlib import Path

from gpu_common import REPO, bundles, log, profile_path, target_repo  # first: it puts the repository on the path
from gpu_sweep import TEACHER_VARIANTS

from g2sd_lib.pipeline import config


def _block(lines: list[str], path: tuple[str, ...]) -> tuple[int, int]:
    """The line range ``[first, end)`` of the value of the nested key ``path`` in a YAML file written in
    block style (indent 2), a flow map continued over several lines included."""
    first, end, indent = 0, len(lines), 0
    for key in path:
        for i in range(first, end):
            if re.match(rf"{' ' * indent}{re.escape(key)}:(\s|$)", lines[i]):
                break
        else:
            raise KeyError(".".join(path))
        first, end, indent = i, i + 1, indent + 2
        if "{" in lines[i].split("#")[0]:  # a flow map: up to its closing brace
            depth = 0
            for end in range(i, len(lines)):
                depth += lines[end].split("#")[0].count("{") - lines[end].split("#")[0].count("}")
                if depth == 0:
                    break
            end += 1
        else:  # a block: while the lines are indented deeper (blank and comment lines included)
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * indent)
                                        or lines[end].lstrip().startswith("#")):
                end += 1
    return first, end


def _set(lines: list[str], path: tuple[str, ...], value) -> None:
    """Set the scalar at ``path`` to ``value`` in place, in block or flow style, keeping the line's comment
    in its column where the new value leaves room."""
    text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
    try:  # a key on a line of its own
        first, _ = _block(lines, path)
        key_text = f"{path[-1]}:"
        line = lines[first]
        head, sep, comment = line.partition("  #")
        start = line.index(key_text) + len(key_text)
        new_head = f"{line[:start]} {text}"
        lines[first] = (new_head.ljust(len(head)) + sep + comment) if sep else new_head + "\n"
        return
    except KeyError:
        pass
    first, end = _block(lines, path[:-1])  # a key inside a flow map
    for i in range(first, end):
        body, hash_, comment = lines[i].partition("#")
        replaced, n = re.subn(rf"(?<=[{{,\s]){re.escape(path[-1])}: [^,}}]+", f"{path[-1]}: {text}", body)
        if n:
            lines[i] = replaced + hash_ + comment
            return
    raise KeyError(".".join(path))


def adopt_bundle(src: Path, prefix: str, profile: str, finetune_override: dict, repo: Path = REPO) -> dict:
    """Make a bundled teacher the profile's: ``<prefix>_{mae,classifier}.{safetensors,json}`` and the card
    ``<prefix>.md`` from ``src`` into ``repo/teachers`` (with a row in its index), and in
    ``g2sd_lib/pipeline/profiles/<profile>.yaml`` ``teacher.mode: bundled`` with the files and their sha256, and the
    fine-tuning variant the bundle was trained with merged into ``teacher.finetune`` (so that ``train``
    mode regenerates it). The file is edited line by line, its comments and layout kept; the result must
    parse to exactly the old profile with those changes, or nothing is written."""
    import yaml

    from g2sd_lib.checkpoints.files import sha256_file

    dest, bundled, files = repo / "teachers", {}, bundles(src).get(prefix, [src / f"{prefix}.md"])
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"adopt: {', '.join(missing)} missing in {src}: extract teachers_{prefix}.tar.gz there")
    for role in ("mae", "classifier"):
        weights = src / f"{prefix}_{role}.safetensors"
        sidecar = json.loads((src / f"{prefix}_{role}.json").read_text())
        digest = sha256_file(weights)
        if digest != sidecar["sha256"]:
            raise SystemExit(f"adopt: {weights} has sha256 {digest}, its sidecar says {sidecar['sha256']}")
        bundled[role], bundled[f"{role}_sha256"] = f"teachers/{weights.name}", digest
    path = profile_path(repo, profile)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    _set(lines, ("teacher", "mode"), "bundled")
    for key, value in bundled.items():
        _set(lines, ("teacher", "bundled", key), value)

    def leaves(override, prefix_path=()):
        for key, value in override.items():
            yield from leaves(value, (*prefix_path, key)) if isinstance(value, dict) else [((*prefix_path, key), value)]
    for key_path, value in leaves(finetune_override):
        _set(lines, ("teacher", "finetune", *key_path), value)
    expected = yaml.safe_load(text)
    expected["teacher"]["mode"] = "bundled"
    expected["teacher"]["bundled"].update(bundled)
    expected["teacher"]["finetune"] = config.deep_merge(expected["teacher"]["finetune"], finetune_override)
    if yaml.safe_load("".join(lines)) != expected:
        raise SystemExit(f"adopt: editing {path} line by line did not give the intended profile; edit it by hand: "
                         f"teacher.mode bundled, teacher.bundled {bundled}, teacher.finetune += {finetune_override}")
    for file in files:  # the card and the four files, as the session packs them
        shutil.copyfile(file, dest / file.name)
    path.write_text("".join(lines))
    index = dest / "README.md"
    if f"| `{prefix}` |" not in index.read_text():
        row = (f"| `{prefix}` | [{prefix}.md]({prefix}.md) | the `{profile}` profile (`{expected['teacher']['finetune']['model']}` "
               f"-> `{expected['students']['common']['model']}`) |")
        index.write_text(index.read_text().rstrip("\n") + "\n" + row + "\n")
    return {"profile": str(path.relative_to(repo)), "bundled": bundled, "finetune_override": finetune_override}


def finished_variant(out: Path) -> str:
    """The teacher variant ``sweep.json`` in ``out`` chose, provided its run finished: its history (in the
    ``gpu_session`` archive) holds every epoch of its schedule. A sweep stopped before its variants
    finished wrote no ``sweep.json``; a history shorter than the schedule means the archive is not the
    session that chose it, or the run was cut short."""
    try:
        result = json.loads((out / "sweep.json").read_text())
    except FileNotFoundError:
        raise SystemExit(f"adopt: no {out / 'sweep.json'}: the sweep stopped before its teacher variants finished "
                         "(or gpu_session.tar.gz is not extracted there); nothing to adopt") from None
    best = result["best_teacher_variant"]
    variant = best.removeprefix("teacher ")
    history = out / "sweep" / "teacher_finetune" / variant / "history.json"
    epochs = len(json.loads(history.read_text())) if history.is_file() else 0
    if epochs < result["runs"][best]["epochs"]:
        raise SystemExit(f"adopt: the chosen variant {variant} did not finish ({history}: {epochs} of "
                         f"{result['runs'][best]['epochs']} epochs); nothing adopted")
    return variant


def adopt(out: Path, dry: bool) -> dict:
    """The sweep's bundled `gpu` teacher becomes the `gpu` profile's (``adopt_bundle``), so that ``repro``
    can follow in the same session; in a dry run, in the scratch copy."""
    chosen = finished_variant(out)
    result = adopt_bundle(out / "teachers", "gpu", "gpu", TEACHER_VARIANTS[chosen], target_repo(out, dry))
    result["variant"] = chosen
    (out / "adopted.json").write_text(json.dumps(result, indent=1))
    log(f"adopt: teacher variant {chosen} is the gpu profile's bundled teacher ({result['profile']})")
    return result
