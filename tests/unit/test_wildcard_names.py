"""Wildcard names are paths inside wildcards/ and cannot climb out of it.

``__name__`` (and dynamicprompts' globs such as ``__colors/*__``) only ever reads files under a
recipe folder's ``wildcards/``; anything else is one RecipeError naming the field, the wildcard
and what is allowed, with nothing printed (no traceback, no dynamicprompts warnings), and never
the old wrong reasons ("at most 10,000 prompts").
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan.templates import (
    ENDLESS,
    WILDCARD_NAMES,
    expand_template,
    prompt_set,
    wildcard_files,
)

SECRET = "the secret outside wildcards/"


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    """A recipe folder with wildcards/, and a file beside it that no wildcard may reach."""
    root = tmp_path / "recipes"
    wc = root / "wildcards"
    (wc / "colors").mkdir(parents=True)
    (wc / "colors" / "warm.txt").write_text("red\norange\n")
    (wc / "colors" / "cold.txt").write_text("blue\n")
    (wc / "hair.txt").write_text("bob cut\nbraids\n")
    (root / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "sec.txt").write_text(SECRET + "\n")
    return root


@pytest.fixture
def capsys(capsys, caplog):
    """Output and log records both: dynamicprompts logs its tracebacks as warnings."""
    capsys.caplog = caplog
    return capsys


def refused(recipes: Path, prompt: str, capsys) -> RecipeError:
    with pytest.raises(RecipeError) as err:
        prompt_set([prompt], [], {}, wildcard_files([recipes]))
    out, printed = capsys.readouterr()
    assert (out, printed) == ("", ""), "nothing but the error line may reach the terminal"
    assert [r.getMessage() for r in capsys.caplog.records if r.levelno >= logging.WARNING] == []
    assert "\n" not in str(err.value) and SECRET not in str(err.value)
    return err.value


@pytest.mark.parametrize(
    "name",
    [
        "../secret",
        "../../etc/passwd",
        "/etc/passwd",
        "../x/sec*",
        "colors/../../secret",
        "colors/./warm",
        "C:\\secret",
        "..\\secret",
        "colors//warm",
        "~/secret",
        "colors/",
    ],
)
def test_names_that_leave_the_wildcards_folder_are_one_line_errors(recipes, capsys, name):
    err = refused(recipes, f"a __{name}__ car", capsys)
    assert err.field == "prompt[0]"
    shown = name.lstrip("~")  # "~" up front is dynamicprompts' random-sampling mark
    assert str(err) == f"prompt[0]: {f'__{shown}__'!r} is not allowed; {WILDCARD_NAMES}"


def test_the_message_says_what_is_allowed():
    assert "letters, digits, - _ . and spaces, / between subfolders" in WILDCARD_NAMES
    assert "no '..'" in WILDCARD_NAMES and "a glob (* ? [...])" in WILDCARD_NAMES


def test_templates_name_their_own_field(recipes, capsys):
    with pytest.raises(RecipeError) as err:
        expand_template("a {c} __../secret__", {"c": ["x"]}, wildcard_files([recipes]))
    assert err.value.field == "template" and err.value.value == "__../secret__"


def test_subfolder_names_and_globs_stay_supported(recipes):
    wc = wildcard_files([recipes])
    assert [i.text for i in prompt_set(["__colors/warm__"], [], {}, wc)] == ["red", "orange"]
    globbed = {i.text for i in prompt_set(["__colors/*__"], [], {}, wc)}
    assert globbed == {"red", "orange", "blue"}
    everything = {i.text for i in prompt_set(["__*__"], [], {}, wc)}
    assert everything == {"red", "orange", "blue", "bob cut", "braids"}  # never the secret
    assert [i.text for i in prompt_set(["__h?ir__"], [], {}, wc)] == ["bob cut", "braids"]


def test_a_glob_that_matches_nothing_says_so(recipes, capsys):
    err = refused(recipes, "__sec*__", capsys)
    assert str(err) == (
        "prompt[0]: '__sec*__' is not allowed; a glob matching a file in wildcards/; available: "
        "colors/cold, colors/warm, hair"
    )


def test_a_bad_name_inside_a_wildcard_file_is_caught_too(recipes, capsys):
    (recipes / "wildcards" / "sneaky.txt").write_text("x __../secret__\n")
    err = refused(recipes, "__sneaky__", capsys)
    assert err.value == "__../secret__" and WILDCARD_NAMES in str(err)


def test_a_name_built_from_a_variable_is_checked_when_it_is_used(recipes, capsys):
    err = refused(recipes, "${v=../secret}__${v}__", capsys)
    assert err.value == "__../secret__"


def test_a_wildcard_in_a_file_that_matches_nothing_is_an_error_not_endless_text(recipes, capsys):
    (recipes / "wildcards" / "outer.txt").write_text("a __nowhere__\n")
    err = refused(recipes, "__outer__", capsys)
    assert str(err).startswith("prompt[0]: '__nowhere__' is not allowed; no file in wildcards/")


@pytest.mark.parametrize("prompt", ["__~hair__", "__@hair__", "{~a|b}", "{@a|b}", "x {a|{~b|c}}"])
def test_random_and_cyclical_sampling_are_refused_with_the_real_reason(recipes, capsys, prompt):
    err = refused(recipes, prompt, capsys)
    assert str(err) == f"prompt[0]: {prompt!r} is not allowed; {ENDLESS}"
