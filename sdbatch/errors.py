"""User-facing errors: one line, naming the field, the bad value and what is allowed."""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The CLI prints ``error: <message>`` on one line and exits with code 2."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe field holds a value sdbatch cannot use."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")
