"""One run per output directory: ``<out_dir>/.lock``, held while a run trains there.

Two runs writing into one directory (two ``make repro``, a notebook beside a pipeline stage) would
both finish and leave one run's model with the other's history. :func:`locked` takes an exclusive
``fcntl.flock`` on ``<out_dir>/.lock`` and writes the holder into it (``{"pid", "command",
"started"}``); a second run stops at once with a message naming them. The operating system releases a
flock when its process dies, however it dies, so a lock left by a killed run (SIGKILL, a crash) is taken
over by the next run without a word from the user. The file is removed on release: a run directory
is often a DVC output, which must hold only the run's files.
"""

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from .errors import UserError, writing

LOCK_NAME = ".lock"


class RunDirectoryLocked(UserError):
    """Another live process trains into the same output directory."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _in_use(path: Path) -> RunDirectoryLocked:
    who = _holder(path)
    holder = (f"process {who.get('pid', '?')} ({who.get('command', 'command unknown')}, started "
              f"{who.get('started', '?')})" if who else "another process")
    return RunDirectoryLocked(
        f"{path.parent} is in use: {holder} is training into it (it holds {path}). Two runs into one "
        "directory would overwrite each other's model and history: wait for that run to end (or stop "
        "it), or give this run another out_dir")


def check_free(out_dir) -> None:
    """Raise :class:`RunDirectoryLocked` when a live process holds ``<out_dir>/.lock``; take nothing.
    For a launcher that writes into the directory (its configuration, its log) before the run itself
    takes the lock."""
    path = Path(out_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(path) from None
    finally:
        os.close(fd)  # closing releases a flock this probe took


def _acquire(path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive flock; the file is the one ``path`` names when it returns."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(path) from None
        try:  # the holder may have removed the file between our open and our flock: lock the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def locked(out_dir):
    """Hold ``<out_dir>/.lock`` for the block (created, with ``out_dir``, if missing); raise
    :class:`RunDirectoryLocked` naming the holder when a live process holds it."""
    path = Path(out_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    before = _holder(path) if path.exists() else {}
    fd = _acquire(path)
    if before.get("pid"):  # its flock is gone, so its process is: killed before it could remove the file
        print(f"{path}: taking over the lock of process {before['pid']} ({before.get('command', '?')}), which "
              "is no longer running", flush=True)
    try:
        body = {"pid": os.getpid(), "command": " ".join(psutil.Process().cmdline()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        with writing(path):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(body).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # before the flock goes: a waiting run then locks a new file
        os.close(fd)
