"""sdbatch.plan.prompt_schedule against AUTOMATIC1111's own prompt parser.

tests/data/a1111_prompt_schedules.json holds what A1111's ``modules/prompt_parser.py`` (1.6+,
lark 1.1.2 as A1111 pins it) returns for its doctest inputs and for our cases: editing,
alternation, nesting, escapes, emphasis and BREAK inside, malformed prompts, hires-fix and old
scheduling, AND and weights. Each case lists every outcome seen under 32 hash seeds; where
lark's result depends on the seed there are several, and ours must be one of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdbatch.errors import UserError
from sdbatch.plan.prompt_schedule import (
    MAX_NESTING,
    PromptSyntaxError,
    format_schedule,
    has_scheduling,
    multicond_prompt_list,
    prompt_schedule,
    split_and,
    text_at_step,
)
from sdbatch.plan.prompts import parse_attention

DATA = json.loads((Path(__file__).parents[1] / "data" / "a1111_prompt_schedules.json").read_text())
CASES = DATA["cases"]


def _case_id(case: dict) -> str:
    text = case["prompt"] if case["kind"] == "schedule" else " / ".join(case["prompts"])
    text = text if len(text) <= 40 else f"{text[:30]}...({len(text)} chars)"
    extra = [str(case.get("steps", ""))] if case["kind"] == "schedule" else []
    extra += [f"hires{case['hires_steps']}"] if "hires_steps" in case else []
    extra += ["old"] * case.get("use_old_scheduling", False)
    return "-".join([case["kind"], *extra, ascii(text)])


def _ours(case: dict) -> dict:
    try:
        if case["kind"] == "schedule":
            schedule = prompt_schedule(
                case["prompt"],
                case["steps"],
                case.get("hires_steps"),
                use_old_scheduling=case.get("use_old_scheduling", False),
            )
            return {"result": [[end, text] for end, text in schedule]}
        indexes, flat, index_of = multicond_prompt_list(case["prompts"])
        result = [[[i, w] for i, w in parts] for parts in indexes]
        return {"result": result, "flat": flat, "indexes": index_of}
    except PromptSyntaxError:
        return {"error": True}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_a1111(case):
    ours = _ours(case)
    outcomes = [{k: v for k, v in o.items() if k != "exception"} for o in case["a1111"]]
    assert ours in outcomes


def test_the_oracle_covers_what_it_should():
    schedule = [c for c in CASES if c["kind"] == "schedule"]
    assert sum(c["source"] == "doctest" for c in CASES) >= 16
    assert len(CASES) >= 150
    assert sum(len(c["a1111"]) > 1 for c in CASES) >= 3  # seed-dependent ones
    assert sum("hires_steps" in c for c in schedule) >= 10
    assert sum(c.get("use_old_scheduling", False) for c in schedule) >= 5
    assert sum(o.get("error", False) for c in CASES for o in c["a1111"]) >= 4


def test_an_ambiguous_stray_closer_keeps_the_edit():
    # A1111 (lark 1.1.2) gives either of these depending on the hash seed; we pick the edit.
    assert prompt_schedule("[a:b:3]]", 10) == [(3, "a]"), (10, "b]")]
    assert prompt_schedule("x [a:b:3]) y", 10) == [(3, "x a) y"), (10, "x b) y")]


def test_unparsable_prompts_are_one_unchanged_text():
    for prompt in ("a|b [c:d:3]", "(a|b)", "[a|b:3]", "[a:b:3] x\\"):
        assert prompt_schedule(prompt, 20) == [(20, prompt)]
        assert prompt_schedule(prompt, 20, 8) == [(8, prompt)]  # the hires pass: its steps
        assert not has_scheduling(prompt)


def test_hires_pass_counts_on_from_the_first_pass():
    assert prompt_schedule("[a:b:25]", 20, 10) == [(5, "a"), (10, "b")]
    assert prompt_schedule("[a:b:1.5]", 20, 10) == [(5, "a"), (10, "b")]
    assert prompt_schedule("[a:b:0.5]", 20, 10) == [(10, "b")]
    # A1111's "old scheduling": < 1 is a fraction, the hires pass is scheduled as the first
    assert prompt_schedule("[a:b:1.5]", 20, 10, use_old_scheduling=True) == [(1, "a"), (20, "b")]


def test_too_large_and_too_deep_raise_one_line_errors():
    with pytest.raises(PromptSyntaxError, match=r"'1e400' is too large") as err:
        prompt_schedule("[a:b:1e400]", 20)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    deep = "(" * MAX_NESTING + "a" + ")" * MAX_NESTING
    assert prompt_schedule(deep, 5) == [(5, deep)]
    with pytest.raises(PromptSyntaxError, match=f"nested more than {MAX_NESTING} deep") as err:
        prompt_schedule("(" + deep + ")", 5)
    assert "\n" not in str(err.value)


def test_unclosed_brackets_do_not_nest():
    """10,000 unclosed brackets stay text (a parser that nested them would not return)."""
    prompt = "(" * 5000 + "a [b:c:3] " + "[" * 5000
    schedule = prompt_schedule(prompt, 10)
    assert schedule == [(3, prompt.replace("[b:c:3]", "b")), (10, prompt.replace("[b:c:3]", "c"))]


def test_texts_keep_emphasis_and_break_for_parse_attention():
    schedule = prompt_schedule("(a [b:c:3]:1.2) BREAK [d|e]", 4)
    assert [text for _, text in schedule] == [
        "(a b:1.2) BREAK d",
        "(a b:1.2) BREAK e",
        "(a b:1.2) BREAK d",
        "(a c:1.2) BREAK e",
    ]
    runs = parse_attention(schedule[-1][1])
    assert runs[0] == ("a c", 1.2) and ("BREAK", -1.0) in runs and runs[-1] == ("e", 1.0)
    assert prompt_schedule("\\[a:b:3\\]", 10) == [(10, "\\[a:b:3\\]")]  # escaped: not an edit


def test_split_and():
    assert split_and("a cat :1.2 AND a dog :0.8") == [("a cat", 1.2), (" a dog", 0.8)]
    assert split_and("a cat:1.5") == [("a cat", 1.5)]  # a weight even without AND
    assert split_and("ANDROID and a_AND_b") == [("ANDROID and a_AND_b", 1.0)]
    assert split_and("plain text  ") == [("plain text", 1.0)]


def test_has_scheduling():
    for prompt in ("a [cat:dog:0.5]", "[a|b]", "a AND b", "a cat:1.2", "[a:b:0]", "x [to:3]"):
        assert has_scheduling(prompt), prompt
    for prompt in (
        "(masterpiece:1.2), [faded], ((best quality)) BREAK 1girl",
        "a [b", "x] y", "(a:b:c)", "a\\[b:c:3\\]", "", "a|b [c:d:3]", "android, AND_b",
    ):  # fmt: skip
        assert not has_scheduling(prompt), prompt


def test_no_scheduling_means_the_prompt_as_today():
    plain = 0
    for case in CASES:
        if case["kind"] != "schedule" or any(o.get("error") for o in case["a1111"]):
            continue
        if has_scheduling(prompt := case["prompt"]):
            continue
        plain += 1
        hires = "hires_steps" in case and not case.get("use_old_scheduling", False)
        steps = case["hires_steps"] if hires else case["steps"]
        assert case["a1111"] == [{"result": [[steps, prompt]]}], prompt
        assert [w for _, w in split_and(prompt)] == [1.0]
    assert plain >= 25


def test_text_at_step_is_a1111s_lookup():
    schedule = prompt_schedule("[a:b:3]", 10)
    # denoiser calls 0..3 use the entry ending at 3: "a" for four calls
    assert [text_at_step(schedule, i) for i in range(10)] == list("aaaabbbbbb")
    alternating = prompt_schedule("[a|b]", 5)
    assert [text_at_step(alternating, i) for i in range(5)] == list("aabab")
    assert text_at_step(schedule, 99) == "a"  # past the end: A1111 falls back to the first


def test_format_schedule():
    assert format_schedule("a photo", 20) == ["steps 1-20: a photo"]
    assert format_schedule("a [cat:dog:0.5] photo", 10) == [
        "steps 1-6: a cat photo",
        "steps 7-10: a dog photo",
    ]
    assert format_schedule("[a|b] :2 AND c", 4) == [
        "part 1 of 2, weight 2:",
        "  steps 1-2: a",
        "  step 3: b",
        "  step 4: a",
        "part 2 of 2, weight 1:",
        "  steps 1-4:  c",
    ]
    assert format_schedule("[a:b:25]", 20, 10) == [
        "first pass: 20 steps",
        "  steps 1-20: a",
        "hires pass: 10 steps",
        "  steps 1-6: a",
        "  steps 7-10: b",
    ]
    with pytest.raises(ValueError):
        format_schedule("a", 0)
