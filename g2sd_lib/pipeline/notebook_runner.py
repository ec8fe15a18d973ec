"""The notebook runner: every ``dvc.yaml`` stage runs its notebook with it.

``python -m g2sd_lib.pipeline.notebook_runner {PROFILE|none} NOTEBOOK OUTPUT [-p NAME VALUE]... [--cwd DIR]
[--prepare-only]`` executes ``NOTEBOOK`` through papermill into ``OUTPUT`` (its folder made if missing)
with the sections of ``g2sd_lib/pipeline/profiles/PROFILE.yaml`` that the notebook's parameters cell
declares (:func:`run_notebook`); ``none`` passes no profile (the entry notebook). Under
``python -m g2sd_lib.pipeline.repro``, which runs several stages at once, the notebook's kernel gets its
share of the CPU cores (:func:`g2sd_lib.device.cpu_threads`).
"""

import os
import sys
from pathlib import Path

from ..device import cpu_threads
from ..errors import InputError, MissingInputError, run_main
from .profiles import PROFILES, load_profile

NO_PROFILE = "none"  # PROFILE `none`: a notebook that takes no profile, only its -p parameters


def _kernel_manager():
    """jupyter_client's kernel manager, with the kernel's channels encrypted (CurveZMQ keys that the
    manager provisions) where pyzmq and the kernel support it, as this project's pinned ipykernel does.

    Unencrypted, ipykernel warns on every start that its TCP channels are plain text: one
    "[IPKernelApp] WARNING" in the log of every stage. IPC transport would silence it too, but leaves
    socket files in the working directory while ``dvc repro`` runs. Elsewhere (pyzmq without curve, an
    older jupyter_client) the default manager, unencrypted as before."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    if not zmq.has("curve") or "transport_encryption" not in AsyncKernelManager.class_trait_names():
        return AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _encrypt_when_the_kernelspec_declares_it(self):
            return "auto"  # "required" would refuse a kernel that does not declare curve support

    return EncryptedKernelManager


def run_notebook(profile: str, notebook, output, extra: dict | None = None, cwd=".",
                 prepare_only: bool = False) -> None:
    """Execute ``notebook`` into ``output`` through papermill with the sections of ``profile`` that the
    notebook's parameters cell declares, plus ``extra`` (e.g. ``{"run": "g2sd"}``), logging its output
    (what every ``dvc.yaml`` stage runs). ``profile`` ``none``: ``extra`` only. ``cwd``: the kernel's
    working directory.

    A notebook takes only the sections it declares (papermill would inject the others too, warning
    "Passed unknown parameter" for each); an ``extra`` name it does not declare is a mistake and
    stops here. A failing cell raises papermill's ``PapermillExecutionError`` after ``output`` is
    written up to that cell. ``prepare_only``: write ``output`` with the parameters injected, run nothing."""
    import logging

    import papermill

    # an unknown name stops here, before papermill starts
    sections = {} if profile == NO_PROFILE else load_profile(profile)
    if not Path(notebook).is_file():
        raise MissingInputError(f"no notebook {notebook}: run from the repository root, with a path under notebooks/")
    if not Path(cwd).is_dir():
        raise MissingInputError(f"no directory {cwd} to run {notebook} in: give --cwd an existing directory")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level
    papermill_log.setLevel(logging.WARNING)  # inspecting logs "Input Notebook: ..." too: once is enough
    try:
        declared = papermill.inspect_notebook(str(notebook))
    finally:
        papermill_log.setLevel(level)
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(declared))
    if unknown:
        raise InputError(f"{notebook} declares no parameter {', '.join(map(repr, unknown))}; its parameters cell "
                         f"declares {', '.join(declared) or 'none'}")
    if prepare_only and sections:  # executed, the notebook validates them (complete); prepared, nothing would
        from .schema import validate_params
        validate_params({name: sections[name] for name in declared if name in sections},
                        source=f"g2sd_lib/pipeline/profiles/{profile}.yaml", partial=True)
    parameters = {name: value for name, value in {**sections, **extra}.items() if name in declared}
    # shutdown_kernel immediate: the kernel is ended at once, not asked to shut down; asked while a cell
    # still runs (Ctrl-C, SIGTERM), it prints a ZMQError traceback of its closed sockets into the log
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                               progress_bar=False, log_output=True, cwd=cwd, prepare_only=prepare_only,
                               kernel_manager_class=_kernel_manager(), shutdown_kernel="immediate")


def main(argv=None) -> int:
    import argparse
    import logging

    from papermill.exceptions import PapermillExecutionError
    parser = argparse.ArgumentParser(prog="python -m g2sd_lib.pipeline.notebook_runner",
                                     description="Execute a notebook with the sections of a profile it declares.")
    parser.add_argument("profile", help=f"one of {', '.join(PROFILES)} (g2sd_lib/pipeline/profiles/<profile>.yaml), or "
                        f"{NO_PROFILE} for a notebook that takes no profile")
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="one more parameter, a string (e.g. -p run g2sd)")
    parser.add_argument("--cwd", default=".", help="the kernel's working directory (default: here); the paths "
                        "NOTEBOOK and OUTPUT stay relative to here")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write OUTPUT with the parameters injected, execute nothing")
    args = parser.parse_args(argv)
    share_cores_with_other_stages()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # as papermill's own command line
    try:
        run_notebook(args.profile, args.notebook, args.output, dict(args.parameter), cwd=args.cwd,
                     prepare_only=args.prepare_only)
    except PapermillExecutionError as e:
        print(f"error: {args.notebook} failed at cell [{e.exec_count}]; the executed copy up to that cell is "
              f"{args.output}{e}", file=sys.stderr)
        return 1
    return 0


def share_cores_with_other_stages() -> None:
    """Under ``python -m g2sd_lib.pipeline.repro`` with several stages at once, give this process and the
    notebook kernel it starts their share of the cores (``OMP_NUM_THREADS``, which torch reads at start),
    not every core each; the runs a notebook starts divide that share again. A set ``OMP_NUM_THREADS`` wins."""
    threads = cpu_threads(os.environ)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["G2SD_STAGE_THREADS"] = str(threads)


if __name__ == "__main__":
    run_main(main)
