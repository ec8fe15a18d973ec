"""The ``g2sd`` command line.

``g2sd inspect-checkpoint PATH [--role ROLE]`` says what a checkpoint of any size is (kind,
architecture, parameter count, where its head count comes from) and which roles of G2SD it can
fill. Exit status: 0 fine, 1 the file cannot fill ``--role`` (the reason goes to stderr), 2 the
file cannot be read or described (its sidecar disagreeing with its weights included).
"""

from __future__ import annotations

import argparse
import sys

from .checkpoints import (CHECKPOINT_KINDS, ROLES, CheckpointError, CheckpointInfo, describe, read_state_dict,
                          role_problem)
from .errors import run_main


def format_count(n: int) -> str:
    """Parameter count as people quote it: ``85.8 M``, ``27.6 k``, ``512``."""
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    return f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _heads(n: int) -> str:
    return f"{n} head" + "s" * (n != 1)


def format_info(info: CheckpointInfo) -> str:
    """The multi-line report of ``inspect-checkpoint``."""
    d = info.dims
    lines = [f"checkpoint   {info.source}", f"kind         {info.kind}: {CHECKPOINT_KINDS[info.kind]}"]
    if info.arch:
        lines.append(f"architecture {info.arch['name']} (builder {info.arch['builder']}"
                     + "".join(f", {k} {v}" for k, v in info.arch.items() if k not in ("builder", "name")) + ")")
    if d:
        heads = f", {_heads(d['num_heads'])} ({d['heads_from']})" if "num_heads" in d else ""
        lines.append(f"encoder      width {d['embed_dim']}, depth {d['depth']}{heads}, patch {d['patch_size']}, "
                     f"images {d['img_size']}x{d['img_size']}x{d['in_chans']}")
    if "decoder_embed_dim" in d:
        heads = f", {_heads(d['decoder_num_heads'])} ({d['decoder_heads_from']})" if "decoder_num_heads" in d else ""
        lines.append(f"decoder      width {d['decoder_embed_dim']}, depth {d['decoder_depth']}{heads}")
    if "teacher_decoder_dim" in d:
        enc = f", encoder {d['teacher_embed_dim']}" if "teacher_embed_dim" in d else ""
        lines.append(f"feature head to teacher decoder width {d['teacher_decoder_dim']}{enc}")
    if "num_classes" in d:
        lines.append(f"classes      {d['num_classes']}")
    lines.append(f"parameters   {format_count(info.num_params)} ({info.num_params:,}) in {info.num_tensors} tensors")
    roles = [f"{r} " + ("ok" if not role_problem(info, r) else "no" + (f" (missing {', '.join(info.missing_for[r])})"
                                                                   if info.missing_for[r] else ""))
             for r in sorted(ROLES)]
    lines.append("roles        " + "; ".join(roles))
    return "\n".join(lines)


def _inspect_checkpoint(args) -> int:
    try:
        state_dict, meta = read_state_dict(args.path)
        info = describe(state_dict, meta, source=args.path)
    except CheckpointError as err:
        print(f"g2sd: error: {err}", file=sys.stderr)
        return 2
    print(format_info(info))
    if args.role is None:
        return 0
    problem = role_problem(info, args.role)
    if problem:
        print(f"role {args.role}: refused")
        print(problem, file=sys.stderr)
        return 1
    print(f"role {args.role}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g2sd", description="Generic-to-Specific Distillation (G2SD) tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect-checkpoint", help="say what a checkpoint is and which roles it can fill",
        description="Print a checkpoint's kind, architecture and parameter count. Exit 0 if fine, 1 if it "
                    "cannot fill --role, 2 if it cannot be read.")
    inspect.add_argument("path", metavar="PATH", help=".pth / .pt (torch.save) or .safetensors file")
    inspect.add_argument("--role", choices=sorted(ROLES),
                         help="check that the file can serve as the GD teacher (full MAE with decoder), SD "
                              "teacher (fine-tuned classifier), GD student, or SD initialisation (any encoder)")
    inspect.set_defaults(run=_inspect_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``g2sd`` command on ``argv``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


def console(argv: list[str] | None = None) -> None:
    """Entry point of the ``g2sd`` console script: :func:`main` under :func:`g2sd_lib.errors.run_main`
    (Ctrl-C ends with one line, exit 130)."""
    run_main(main, argv)


if __name__ == "__main__":
    console()
