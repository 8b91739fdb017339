"""Run control for long runs: the deadline, and clean stops on signals. Pure Python (no torch).

The output folder's lock lives with the folder's other files, in ``sdbatch.outputs.lock``.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sdbatch.errors import RecipeError

EXIT_STOPPED = 4  # stopped early (deadline, SIGTERM, Ctrl-C); run the same command to continue


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
