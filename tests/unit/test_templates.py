"""Templates: named variables, sd-dynamic-prompts variants and wildcards, caps, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan.recipe import build_plan
from sdbatch.plan.templates import expand_template, prompt_set, wildcard_files
from tests.conftest import quick_cfg


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    wc = tmp_path / "wildcards"
    (wc / "colors").mkdir(parents=True)
    (wc / "hair_styles.txt").write_text("# one per line\nponytail\nbob cut\n\nbraids\n")
    (wc / "colors" / "warm.txt").write_text("red\norange\n")
    return tmp_path


def test_variables_multiply_and_are_recorded(recipes):
    items = expand_template(
        "{hair} hair, {style}", {"hair": ["black", "red"], "style": ["bob", "braid"]}, {}
    )
    assert [i.text for i in items] == [
        "black hair, bob",
        "black hair, braid",
        "red hair, bob",
        "red hair, braid",
    ]
    assert items[1].vars == (("hair", "black"), ("style", "braid"))
    assert items[1].template == "{hair} hair, {style}"


def test_variants_expand_combinatorially():
    items = prompt_set(["a {red|blue} {car|bike}"], [], {}, {})
    assert [i.text for i in items] == ["a red car", "a red bike", "a blue car", "a blue bike"]


def test_wildcards_keep_file_order_and_skip_comments(recipes):
    wc = wildcard_files([recipes])
    assert set(wc) == {"hair_styles", "colors/warm"}
    items = prompt_set(["__hair_styles__, __colors/warm__"], [], {}, wc)
    assert [i.text for i in items] == [
        "ponytail, red",
        "ponytail, orange",
        "bob cut, red",
        "bob cut, orange",
        "braids, red",
        "braids, orange",
    ]


def test_emphasis_and_templates_compose(recipes):
    items = prompt_set(
        ["black hair, (__hair_styles__:1.2), [blurry]"], [], {}, wildcard_files([recipes])
    )
    assert items[0].text == "black hair, (ponytail:1.2), [blurry]"


def test_a_later_recipe_folder_overrides_a_wildcard(recipes, tmp_path_factory):
    mine = tmp_path_factory.mktemp("mine")
    (mine / "wildcards").mkdir()
    (mine / "wildcards" / "hair_styles.txt").write_text("mohawk\n")
    items = prompt_set(["__hair_styles__"], [], {}, wildcard_files([recipes, mine]))
    assert [i.text for i in items] == ["mohawk"]


def test_cap_says_how_many_a_template_would_make():
    with pytest.raises(RecipeError) as err:
        prompt_set(["{a|b|c|d|e} {a|b|c|d|e} {a|b|c|d|e}"], [], {}, {}, cap=100)
    assert "at most 100 prompts per template; it makes 125" in str(err.value)


@pytest.mark.parametrize(
    "prompts, templates, vars, fragment",
    [
        (["a {red|blue car"], [], {}, "a valid template"),
        (["a __nope__ car"], [], {}, "no wildcards/nope.txt; available: colors/warm, hair_styles"),
        ([], ["a {colour} car"], {"color": ["red"]}, "template variables defined: color"),
        ([], ["a {color} car"], {"color": []}, "a non-empty list"),
    ],
)
def test_bad_templates_give_one_line_errors(recipes, prompts, templates, vars, fragment):
    with pytest.raises(RecipeError) as err:
        prompt_set(prompts, templates, vars, wildcard_files([recipes]))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_korean_and_emoji_pass_through():
    items = prompt_set(["검은 머리, {긴|짧은} 머리 😀"], [], {}, {})
    assert [i.text for i in items] == ["검은 머리, 긴 머리 😀", "검은 머리, 짧은 머리 😀"]


def test_non_number_weight_is_literal_text_like_a1111():
    plan = build_plan(quick_cfg(prompt="a (red:abc) car"))
    assert plan.jobs[0].prompt == "a (red:abc) car"


def test_unparseable_weight_fails_before_anything_runs():
    with pytest.raises(RecipeError) as err:
        build_plan(quick_cfg(prompt="a (red:1.2.3) car"))
    assert str(err.value).startswith("prompt: 'a (red:1.2.3) car'") and "not a number" in str(
        err.value
    )


def test_an_empty_prompt_after_expansion_is_a_valid_job():
    plan = build_plan(quick_cfg(prompt=None, template="{x}", vars={"x": ["", "cat"]}))
    assert [j.prompt for j in plan.jobs[::2]] == ["", "cat"]


def test_hair_styles_wildcard_ships_with_the_recipes():
    from sdbatch.config import recipe_dirs

    wc = wildcard_files(recipe_dirs())
    assert "hair_styles" in wc
