"""run.compile: validated like every run.* key, and only compiled for runs long enough to pay."""

from __future__ import annotations

import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan.run_settings import COMPILE_MIN_BATCHES, compile_now, parse_run


def test_compile_is_off_by_default_and_a_bool():
    assert parse_run({}).compile is False
    assert parse_run({"compile": True}).compile is True
    with pytest.raises(RecipeError, match="run.compile"):
        parse_run({"compile": "fast"})


@pytest.mark.parametrize(
    ("asked", "batches", "compiled", "warned"),
    [
        (False, 10**6, False, False),
        (True, COMPILE_MIN_BATCHES - 1, False, True),
        (True, COMPILE_MIN_BATCHES, True, False),
    ],
)
def test_compile_only_pays_past_the_threshold(asked, batches, compiled, warned):
    now, note = compile_now(parse_run({"compile": asked}), batches)
    assert now is compiled
    assert (note is not None) is warned
    if warned:
        assert f"{batches} batches is below {COMPILE_MIN_BATCHES}" in note
