"""A1111 emphasis parsing and 75-token chunking (sdbatch.plan.prompts), with a fake tokenizer."""

from __future__ import annotations

import pytest

from sdbatch.errors import UserError
from sdbatch.plan.prompts import (
    BREAK_RUN,
    PromptChunk,
    PromptSyntaxError,
    chunk_tokens,
    is_break,
    parse_attention,
)

SEED_PROMPT = (
    "(best quality), (masterpiece), (high resolution), (1boy:1.3), "
    "(Extremely detailed and beautiful face:1.5), perfect anatomy, (full body shot:1.5), "
    "hyper detail, ultra detailed cloths, Incredibly detailed, red upper reather wear, sword, "
    "red hair, short cut hair, silver plate armor, blue jean, blue eyes"
)
SEED_NEGATIVE = (
    "lowres, ((bad anatomy)), ((bad hands)), text, missing finger, extra digits, fewer digits, "
    "blurry, ((mutated hands and fingers)), (poorly drawn face), ((mutation)), "
    "((deformed face)), (ugly), ((bad proportions)), ((extra limbs)), extra face, "
    "(double head), (extra head), ((extra feet)), monster, logo, cropped, worst quality, "
    "low quality, normal quality, jpeg, humpbacked, long body, long neck, ((jpeg artifacts)), "
    "((nsfw))"
)


def assert_runs(actual, expected):
    """Same texts in the same order, weights equal up to float rounding."""
    assert [t for t, _ in actual] == [t for t, _ in expected]
    assert [w for _, w in actual] == pytest.approx([w for _, w in expected], rel=1e-12)


# --- parse_attention: every example of A1111's docstring, exact floats included ---------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_a1111_docstring_examples(text, expected):
    # A1111 returns lists of [text, weight]; we return tuples, with bit-equal weights.
    assert parse_attention(text) == expected


def test_seed_prompt():
    assert_runs(
        parse_attention(SEED_PROMPT),
        [
            ("best quality", 1.1),
            (", ", 1.0),
            ("masterpiece", 1.1),
            (", ", 1.0),
            ("high resolution", 1.1),
            (", ", 1.0),
            ("1boy", 1.3),
            (", ", 1.0),
            ("Extremely detailed and beautiful face", 1.5),
            (", perfect anatomy, ", 1.0),
            ("full body shot", 1.5),
            (
                ", hyper detail, ultra detailed cloths, Incredibly detailed, red upper reather "
                "wear, sword, red hair, short cut hair, silver plate armor, blue jean, blue eyes",
                1.0,
            ),
        ],
    )


def test_seed_negative():
    sep = (", ", 1.0)
    assert_runs(
        parse_attention(SEED_NEGATIVE),
        [
            ("lowres, ", 1.0),
            ("bad anatomy", 1.21),
            sep,
            ("bad hands", 1.21),
            (", text, missing finger, extra digits, fewer digits, blurry, ", 1.0),
            ("mutated hands and fingers", 1.21),
            sep,
            ("poorly drawn face", 1.1),
            sep,
            ("mutation", 1.21),
            sep,
            ("deformed face", 1.21),
            sep,
            ("ugly", 1.1),
            sep,
            ("bad proportions", 1.21),
            sep,
            ("extra limbs", 1.21),
            (", extra face, ", 1.0),
            ("double head", 1.1),
            sep,
            ("extra head", 1.1),
            sep,
            ("extra feet", 1.21),
            (
                ", monster, logo, cropped, worst quality, low quality, normal quality, jpeg, "
                "humpbacked, long body, long neck, ",
                1.0,
            ),
            ("jpeg artifacts", 1.21),
            sep,
            ("nsfw", 1.21),
        ],
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", [("", 1.0)]),
        ("((x))", [("x", 1.21)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("[[x]]", [("x", 1 / 1.21)]),
        ("(x:1.3)", [("x", 1.3)]),
        ("(x: 1.3 )", [("x", 1.3)]),  # spaces around the number are allowed
        ("(x:+.5)", [("x", 0.5)]),
        ("(x:-1)", [("x", -1.0)]),
        ("((x:2))", [("x", 2.2)]),
        ("[(x:2)]", [("x", 2 / 1.1)]),
        ("(red:1.0)", [("red", 1.0)]),
        ("a (red:1.0) b", [("a red b", 1.0)]),  # equal weights merge back into one run
        # A colon not followed by "number)" is plain text; the bracket still gives 1.1.
        ("(x:abc)", [("x:abc", 1.1)]),
        ("(x:)", [("x:", 1.1)]),
        ("a:b", [("a:b", 1.0)]),
        # ":number)" with no "(" open is literal text, not a weight.
        ("x:1.3)", [("x:1.3)", 1.0)]),
        # Unbalanced: open brackets reach the end, stray closers are text.
        ("((a)", [("a", 1.21)]),
        ("a (b", [("a ", 1.0), ("b", 1.1)]),
        ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
        ("a) b]", [("a) b]", 1.0)]),
        ("(a [b", [("a ", 1.1), ("b", 1.1 / 1.1)]),
        ("(a:1.3", [("a:1.3", 1.1)]),
        # Escapes.
        ("\\(x\\) \\[y\\] \\\\ z", [("(x) [y] \\ z", 1.0)]),
        ("(\\(x\\))", [("(x)", 1.1)]),
        ("a\\b", [("ab", 1.0)]),  # a backslash before anything else vanishes
        ("a\\", [("a", 1.0)]),
        # Non-ASCII text passes through untouched.
        (
            "(빨간 머리:1.2), 😀 [웃음]",
            [("빨간 머리", 1.2), (", 😀 ", 1.0), ("웃음", 1 / 1.1)],
        ),
        ("(((🐱)))", [("🐱", 1.331)]),
    ],
)
def test_parse_cases(text, expected):
    assert_runs(parse_attention(text), expected)


def test_bad_number_after_colon_is_a_user_error():
    # A1111 crashes on float("1.2.3"); we raise a one-line error instead.
    with pytest.raises(PromptSyntaxError, match="1.2.3"):
        parse_attention("(x:1.2.3)")
    assert issubclass(PromptSyntaxError, UserError)
    assert issubclass(PromptSyntaxError, ValueError)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a BREAK b", [("a", 1.0), BREAK_RUN, ("b", 1.0)]),
        ("a\nBREAK\tb", [("a", 1.0), BREAK_RUN, ("b", 1.0)]),
        ("BREAK", [("", 1.0), BREAK_RUN, ("", 1.0)]),
        ("a BREAK,b", [("a", 1.0), BREAK_RUN, (",b", 1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), BREAK_RUN, ("", 1.0), BREAK_RUN, ("b", 1.0)]),
        # Only the whole, upper-case word.
        ("BREAKFAST break Break", [("BREAKFAST break Break", 1.0)]),
        ("a_BREAK", [("a_BREAK", 1.0)]),
        # Inside brackets A1111 multiplies the marker too: it is no longer a BREAK.
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ],
)
def test_break(text, expected):
    assert_runs(parse_attention(text), expected)


def test_is_break():
    assert is_break(BREAK_RUN)
    assert is_break(("BREAK", -1))
    assert not is_break(("BREAK", -1.1))
    assert not is_break(("BREAK", 1.0))


COMMA = 0
PAD = -1


def fake_tokenize(texts: list[str]) -> list[list[int]]:
    """'w12' -> 12, ',' -> COMMA, 'x' -> 1000; commas split like CLIP splits them."""
    out = []
    for text in texts:
        ids = []
        for word in text.replace(",", " , ").split():
            if word == ",":
                ids.append(COMMA)
            elif word.startswith("w") and word[1:].isdigit():
                ids.append(int(word[1:]))
            else:
                ids.append(1000 + len(word))
        out.append(ids)
    return out


def words(start: int, stop: int) -> str:
    return " ".join(f"w{i}" for i in range(start, stop))


def chunks_of(text: str, **kw) -> list[PromptChunk]:
    return chunk_tokens(parse_attention(text), fake_tokenize, COMMA, **kw)


def test_75_tokens_fit_one_chunk():
    (chunk,) = chunks_of(words(1, 76))
    assert chunk.tokens == list(range(1, 76))
    assert chunk.weights == [1.0] * 75


def test_76th_token_opens_a_second_chunk():
    first, second = chunks_of(words(1, 77))
    assert first.tokens == list(range(1, 76))
    assert second.tokens == [76]


def test_padding_to_chunk_length():
    first, second = chunks_of(words(1, 77), pad_token=PAD)
    assert len(first.tokens) == len(second.tokens) == 75
    assert second.tokens == [76] + [PAD] * 74
    assert second.weights == [1.0] * 75


def test_comma_back_off_moves_the_tail_to_the_next_chunk():
    # 70 words, comma at index 70, then 10 more: the 4 words after the comma that still
    # fitted move on, so the phrase "w71 .. w80" is not cut in two.
    first, second = chunks_of(words(1, 71) + ", " + words(71, 81))
    assert first.tokens == [*range(1, 71), COMMA]
    assert second.tokens == list(range(71, 81))


@pytest.mark.parametrize("n_before, moves", [(55, True), (54, False)])
def test_comma_back_off_limit_is_20_tokens(n_before, moves):
    # Comma at index n_before; the chunk is full at 75: distance 75 - index <= 20 moves.
    first, second = chunks_of(words(1, n_before + 1) + ", " + words(100, 130))
    if moves:
        assert first.tokens == [*range(1, n_before + 1), COMMA]
        assert second.tokens == list(range(100, 130))
    else:
        assert len(first.tokens) == 75
        assert first.tokens[-1] == 100 + 75 - n_before - 2
        assert second.tokens[0] == first.tokens[-1] + 1


def test_comma_back_off_can_be_disabled():
    first, second = chunks_of(words(1, 71) + ", " + words(71, 81), backtrack=0)
    assert len(first.tokens) == 75
    assert second.tokens == list(range(75, 81))


def test_moved_tokens_keep_their_weights():
    first, second = chunks_of(words(1, 71) + ", (" + words(71, 81) + ":1.5)")
    assert first.weights == [1.0] * 71
    assert second.weights == [1.5] * 10


def test_comma_as_last_token_of_a_full_chunk():
    first, second = chunks_of(words(1, 75) + ", " + words(75, 80))
    assert first.tokens == [*range(1, 75), COMMA]
    assert second.tokens == list(range(75, 80))


def test_weights_follow_runs():
    (chunk,) = chunks_of("(w1:1.5) w2 [w3], w4")
    assert chunk.tokens == [1, 2, 3, COMMA, 4]
    assert chunk.weights == pytest.approx([1.5, 1.0, 1 / 1.1, 1.0, 1.0])


def test_break_ends_the_chunk():
    first, second = chunks_of("w1 w2 BREAK w3")
    assert (first.tokens, second.tokens) == ([1, 2], [3])


def test_break_at_start_gives_an_empty_first_chunk():
    first, second = chunks_of("BREAK w1")
    assert (first.tokens, second.tokens) == ([], [1])


def test_break_at_end_adds_nothing():
    assert [c.tokens for c in chunks_of("w1 BREAK")] == [[1]]


def test_break_inside_a_full_run_and_after_75():
    chunks = chunks_of(words(1, 80) + " BREAK w90")
    assert [c.tokens for c in chunks] == [list(range(1, 76)), [76, 77, 78, 79], [90]]


def test_break_inside_brackets_is_encoded_as_a_word():
    # A1111 quirk: the marker's -1 became -1.1, so "BREAK" is tokenized with that weight.
    (chunk,) = chunks_of("(w1 BREAK w2)")
    assert chunk.tokens == [1, 1005, 2]
    assert chunk.weights == pytest.approx([1.1, -1.1, 1.1])


def test_empty_prompt_gives_one_empty_chunk():
    assert chunks_of("") == [PromptChunk([], [])]
    (padded,) = chunks_of("", pad_token=PAD)
    assert padded.tokens == [PAD] * 75


def test_brackets_only_prompt_gives_one_empty_chunk():
    assert chunks_of("(()) [ ]") == [PromptChunk([], [])]


def test_seed_prompts_fit_one_chunk_with_a_word_tokenizer():
    assert len(chunks_of(SEED_PROMPT)) == 1
    first, second = chunks_of(SEED_NEGATIVE)  # 84 fake tokens
    assert (len(first.tokens), len(second.tokens)) == (74, 10)
    assert first.tokens[-1] == COMMA  # "long neck," stays whole; "jpeg artifacts" moves on
