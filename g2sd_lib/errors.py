"""Errors a user can fix, and how command lines and notebooks show them.

A :class:`UserError` (every input error of the library derives from it) is a
mistake in the input (configuration, data, checkpoint, output directory), not a bug: its message
already says what is wrong and the fix, so the command-line entry points print it as one paragraph
and exit with status 2 instead of dumping a traceback, and in a notebook (IPython kernel,
papermill included) the failing cell shows that paragraph alone; the cell still fails. ``--debug``
or ``G2SD_DEBUG=1`` shows the traceback too.

Ctrl-C (SIGINT) and SIGTERM are not errors either: :func:`run_main` ends the command with one line
saying what was saved (:func:`note_saved`) and that running it again resumes, ends the command's
child processes, and exits 130 / 143 as a shell does for those signals.
"""

import difflib
import errno
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A mistake in the input that the user can fix; the message names it and the fix."""


class InputError(UserError, ValueError):
    """A value the user gave is not one the code accepts (a profile, run, split, role or model name, an
    option): a :class:`ValueError` too, so ``except ValueError`` keeps catching it."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file is missing; the message says which stage, command or download produces it."""


class OutputError(UserError, OSError):
    """An output cannot be written: read-only directory, disk full."""


class ResumeMismatchError(UserError, ValueError):
    """``last.pt`` was written by a run with another configuration."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the likely cause."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every exception class that reports a user mistake: they all derive from :class:`UserError`
    (the checkpoint, download and configuration errors too), so this module imports none of them."""
    return (UserError,)


def close_match(word, choices) -> str | None:
    """The choice closest to a misspelt ``word`` (difflib, ratio >= 0.6), for a did-you-mean; None if none is."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def debug_enabled(argv=()) -> bool:
    return "--debug" in argv or os.environ.get("G2SD_DEBUG", "") not in ("", "0")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a time limit, ``kill``), raised where the program is so that it unwinds as for Ctrl-C."""


def _terminated(signum, frame):
    raise Terminated()


_saved: list[str] = []  # what the command has saved so far, for the line an interrupt prints


def note_saved(what: str) -> None:
    """Record that ``what`` (e.g. ``runs/x/last.pt (epoch 2/5)``) is saved: an interrupt's line names it."""
    _saved[:] = [what]


def _end_children(timeout: float = 10.0) -> None:
    """SIGTERM to every process this one started (a notebook kernel, training runs), SIGKILL to those
    still alive after ``timeout`` seconds."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    for child in psutil.wait_procs(children, timeout=timeout)[1]:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def interrupted_line(err: KeyboardInterrupt) -> tuple[str, int]:
    """``(the line, exit status)`` of a command stopped by Ctrl-C (130) or SIGTERM (143)."""
    how, code = ("SIGTERM", 143) if isinstance(err, Terminated) else ("Ctrl-C", 130)
    saved = (f"the last save, {_saved[-1]}, is kept" if _saved else
             "every completed epoch (each run's last.pt) and finished stage is kept")
    return f"stopped by {how}: {saved}; run the same command again to resume from there", code


def run_main(main, argv=None) -> None:
    """Call ``main(argv)``; print a user error as one paragraph and exit 2 (traceback with ``--debug``);
    Ctrl-C or SIGTERM: end the child processes, one line (:func:`interrupted_line`), exit 130 / 143."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != "--debug"]
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = (signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _terminated)) if main_thread else None
    try:
        code = main(argv)
    except user_errors() as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        if not debug:
            print("(run with --debug or G2SD_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        if main_thread:  # a second Ctrl-C or SIGTERM must not cut the clean-up short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        _end_children()
        if debug:
            traceback.print_exc()
        line, code = interrupted_line(e)
        print(line, file=sys.stderr)
        sys.exit(code)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
    sys.exit(code or 0)


def install_notebook_handler() -> None:
    """In an IPython kernel, show user errors as their message (the cell still fails), other
    exceptions as usual; ``G2SD_DEBUG=1`` (set at any time) shows the traceback too. Importing the
    library installs nothing: the notebooks' entry points do (:func:`g2sd_lib.pipeline.profiles.complete`,
    which every pipeline notebook calls first, and notebook 00's first code cell). Does nothing outside IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "_g2sd_handler", False):
        return

    def show(shell, etype, value, tb, tb_offset=None):
        # IPython discards what a custom handler returns when the cell's own code raised: show it here.
        if isinstance(value, user_errors()) and not debug_enabled():
            stb = [f"{etype.__name__}: {value}", "(set G2SD_DEBUG=1 for the traceback)"]
        else:
            stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc((Exception,), show)
    shell._g2sd_handler = True


@contextmanager
def writing(path):
    """Turn the OSErrors of writing ``path`` that a user can fix into :class:`OutputError` naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OutputError(f"disk full (no space left on device) while writing {path}: free some space "
                              "and rerun; the run resumes from its last complete checkpoint") from e
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise OutputError(f"cannot write {path}: {e.strerror}. Make {Path(path).parent} writable or "
                              "choose another output directory") from e
        raise


def check_writable(directory) -> Path:
    """Create ``directory`` if needed and prove a file can be written there, before any training."""
    directory = Path(directory)
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        with writing(probe):
            directory.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write into the output directory {directory}: {e.strerror or e}. Choose a "
                          "writable place (out_dir) or fix the path") from e
    return directory
