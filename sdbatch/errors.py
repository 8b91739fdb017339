"""User-facing errors: one line, naming the field, the bad value and what is allowed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away


class UserError(Exception):
    """Bad input. The CLI prints ``error: <message>`` on one line and exits with code 2."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe field holds a value sdbatch cannot use."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")


@contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """``sdbatch-tools infotext *.png | head -1``: when the reader goes away, exit quietly
    (code 141, as a process killed by SIGPIPE) instead of a BrokenPipeError traceback."""
    try:
        yield
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush is silent
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
