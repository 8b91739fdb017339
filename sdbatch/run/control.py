"""Run control for long runs: the output-folder lock, the deadline, and clean stops on signals.

Pure Python (no torch). The lock is an ``fcntl.flock`` on ``<output>/.sdbatch.lock``: the kernel
drops it when the holder dies, however it dies, so a stale lock from a killed run is taken over
without guessing from pids; the file's text only names the holder for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sdbatch.errors import RecipeError, UserError

EXIT_STOPPED = 4  # stopped early (deadline, SIGTERM, Ctrl-C); run the same command to continue
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


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_deadline(value: str | None, now: datetime | None = None) -> datetime | None:
    """``07:00`` (the next time the local clock shows it) or a duration ``6h``, ``90m``,
    ``1h30m``, ``45s`` from now. None or empty: no deadline."""
    if value in (None, ""):
        return None
    now = now or datetime.now().astimezone()
    text = str(value).strip().lower().replace(" ", "")
    allowed = "a clock time like 07:00 or a duration like 6h, 90m, 1h30m"
    if m := _CLOCK.match(text):
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 23 or minute > 59:
            raise RecipeError("run.deadline", value, allowed)
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise RecipeError("run.deadline", value, allowed)
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return now + timedelta(hours=h, minutes=mi, seconds=s)


@dataclass
class StopSignal:
    """Why a run should stop after the current batch: a deadline, SIGTERM or a first Ctrl-C.

    A second Ctrl-C raises KeyboardInterrupt at once (the batch in flight is lost; every
    finished batch is already durable), except while a batch's images and rows are being
    written: there it waits the few milliseconds until both are on disk, so no image is left
    without its row.
    """

    deadline: datetime | None = None
    reason: str | None = None
    _previous: dict = field(default_factory=dict)
    _deferring: bool = False
    _abort_pending: bool = False

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a second Ctrl-C until the block ends (writes that must finish together)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            pending, self._abort_pending = self._abort_pending, False
        if pending:
            raise KeyboardInterrupt

    def install(self) -> StopSignal:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (some launchers): deadline only
            self._previous.clear()
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.reason == "Ctrl-C":
            if self._deferring:
                self._abort_pending = True
                return
            raise KeyboardInterrupt
        self.reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        again = "; Ctrl-C again aborts" if signum == signal.SIGINT else ""
        os.write(2, f"\nstopping after the batch in flight ({self.reason}){again}\n".encode())

    def should_stop(self) -> bool:
        if self.reason is None and self.deadline is not None:
            if datetime.now().astimezone() >= self.deadline:
                self.reason = f"deadline {self.deadline.isoformat(timespec='minutes')}"
        return self.reason is not None
