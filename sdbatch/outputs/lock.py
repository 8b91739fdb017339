"""The output folder's lock: one run (or repair) writes a folder at a time. Pure Python.

The lock is an ``fcntl.flock`` on ``<output>/.sdbatch.lock``: the kernel drops it when the holder
dies, however it dies, so a stale lock from a killed run is taken over without guessing from
pids; the file's text only names the holder for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from sdbatch.errors import UserError

EXIT_LOCKED = 5  # another live run holds the output folder


class OutputLocked(UserError):
    exit_code = EXIT_LOCKED


class OutputLock:
    """Exclusive use of an output folder for the life of this process (or until released)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / ".sdbatch.lock"
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputLocked(
                f"output.dir: {str(self.path.parent)!r} is in use by another sdbatch run "
                f"({holder}); wait for it to finish or choose another output.dir"
            ) from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"host {info['host']}, pid {info['pid']}, since {info['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
