"""A1111 X/Y/Z-plot sweep syntax in recipes and on the command line."""

from __future__ import annotations

import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan.axes import expand_axis
from sdbatch.plan.recipe import build_plan
from tests.conftest import quick_cfg


@pytest.mark.parametrize(
    "value, integer, expected",
    [
        ("10-30 (+10)", True, [10, 20, 30]),
        ("10-30", True, list(range(10, 31))),
        ("30-10 (-10)", True, [30, 20, 10]),
        ("5-9 [3]", False, [5.0, 7.0, 9.0]),
        ("1-2 [5]", False, [1.0, 1.25, 1.5, 1.75, 2.0]),
        ("1.5-3 (+0.5)", False, [1.5, 2.0, 2.5, 3.0]),
        ("5, 7.5, 9", False, ["5", "7.5", "9"]),
        (["1-3", 8], True, [1, 2, 3, 8]),
        (7, True, [7]),
    ],
)
def test_forms(value, integer, expected):
    assert expand_axis("x", value, integer) == expected


def test_a_step_pointing_away_is_an_error():
    with pytest.raises(RecipeError, match="x: '10-30 \\(-5\\)'"):
        expand_axis("x", "10-30 (-5)", True)


def test_recipes_accept_the_forms_and_the_plan_shows_expanded_values():
    plan = build_plan(quick_cfg(steps="2-6 (+2)", cfg="5-9 [3]", sampler="Euler a, DDIM"))
    assert plan.values["steps"] == ["2", "4", "6"]
    assert plan.values["cfg"] == ["5", "7", "9"]
    assert plan.values["sampler"] == ["Euler a", "DDIM"]
    assert len(plan.jobs) == 3 * 3 * 2 * 2 * 2
    seeds = build_plan(quick_cfg(seeds="1-3")).values["seeds"]
    assert seeds == ["1", "2", "3"]
