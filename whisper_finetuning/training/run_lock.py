"""One run per experiment folder: a lock file naming the process that holds it.

A second run into a locked folder stops at once with one line naming the holder; a lock left
by a process that no longer exists on this host is taken over.
"""

import contextlib
import json
import os
import socket
from pathlib import Path

from whisper_finetuning.common.errors import RecipeError

LOCK_FILE = "run.lock"


class FolderLocked(RecipeError, RuntimeError):
    """Another live run holds the experiment folder."""


@contextlib.contextmanager
def holding(folder):
    """Hold ``folder``'s lock for the block (on the main process of a torchrun group; the
    others share it)."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    path = acquire(folder)
    try:
        yield
    finally:
        release(path)


def acquire(folder):
    """Lock ``folder`` for this process (created if missing); returns the lock file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and _alive(holder):
                raise FolderLocked(
                    f"{folder} is in use by another run (pid {holder['pid']} on "
                    f"{holder['host']}); wait for it, stop it, or pick another output_folder"
                ) from None
            path.unlink(missing_ok=True)  # a dead process's lock: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path


def _holder(path):
    """The lock's owner, or None when the file is unreadable (half written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(holder):
    """Whether the holder still runs (a process on another host is assumed alive)."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release(path):
    """Remove the lock if it is still this process's."""
    if _holder(path) == {"pid": os.getpid(), "host": socket.gethostname()}:
        path.unlink(missing_ok=True)
