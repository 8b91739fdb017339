"""AUTOMATIC1111-compatible prompt emphasis and 75-token chunking, without torch.

Recipes are written against AUTOMATIC1111 (A1111) habits: ``(word:1.3)``, ``((word))``,
``[word]``, ``BREAK`` and prompts longer than CLIP's 77 tokens. To give the same images as
A1111 we must split a prompt into the same weighted runs and the same 75-token chunks, quirks
included; this module does that part. It stays pure (no torch/numpy/transformers) so the CLI
and the unit tests can use it cheaply; ``sdbatch.render.encode`` turns the chunks into embeddings.

Behaviour follows A1111's ``modules/prompt_parser.py::parse_prompt_attention`` and
``modules/sd_hijack_clip.py::tokenize_line`` (SD 1.x, emphasis "Original",
``comma_padding_backtrack`` = 20). Textual-inversion embeddings take token positions as in
A1111: a run of tokens equal to an embedding's name becomes that many placeholder ids as the
embedding has vectors, recorded as a chunk "fix" (offset, name), never split across chunks,
and weighted like the text around it (``sdbatch.plan.embedding_files`` finds them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sdbatch.errors import UserError

__all__ = [
    "BREAK_RUN",
    "EmbeddingLookup",
    "PromptChunk",
    "PromptSyntaxError",
    "chunk_tokens",
    "is_break",
    "chunk_count",
    "parse_attention",
    "prompt_chunks",
]

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# The marker run A1111 inserts for the keyword BREAK. Its weight (-1) is a sentinel, and a
# surrounding bracket multiplies it like any other run (see ``is_break``).
BREAK_RUN: tuple[str, float] = ("BREAK", -1.0)

# One lexical item per match; the alternation order matters (escapes before brackets, the
# ":number)" closer before a bare ")"), exactly the order A1111's scanner tries them in.
_LEXER = re.compile(
    r"""
      (?P<escaped> \\[()\[\]\\] )              # \( \) \[ \] \\  -> the literal character
    | (?P<backslash> \\ )                      # any other backslash -> dropped (as A1111)
    | (?P<open_round> \( )
    | (?P<open_square> \[ )
    | :\s* (?P<weight> [+-]?[.\d]+ ) \s* \)    # "(text:1.3)" closer; may be a bad number
    | (?P<close_round> \) )
    | (?P<close_square> \] )
    | (?P<text> [^\\()\[\]:]+ | : )            # plain text, or a colon that is not a weight
    """,
    re.VERBOSE,
)

# BREAK is a whole, upper-case word; the whitespace around it is swallowed.
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


class PromptSyntaxError(UserError, ValueError):
    """A prompt A1111 itself cannot parse (it raises on ``(x:1.2.3)``); we say why instead."""


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(text, weight)`` runs the way A1111 does.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:w)`` multiplies by ``w``; nesting
    multiplies; unclosed brackets apply to the rest of the prompt; stray closers and a colon
    not followed by ``number)`` stay literal text; neighbouring runs with exactly equal
    weights merge; ``BREAK`` becomes the run ``("BREAK", -1.0)``.
    """
    runs: list[list] = []  # mutable [text, weight] pairs: brackets rescale them in place
    open_round: list[int] = []  # index into ``runs`` where each unclosed "(" started
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    def add_text(chunk: str) -> None:
        for i, part in enumerate(_BREAK.split(chunk)):
            if i:
                runs.append(list(BREAK_RUN))
            runs.append([part, 1.0])

    for match in _LEXER.finditer(text):
        kind, value = match.lastgroup, match.group(0)
        if kind == "escaped":
            runs.append([value[1], 1.0])
        elif kind == "backslash":
            runs.append(["", 1.0])  # A1111 keeps an empty run here; it merges away
        elif kind == "open_round":
            open_round.append(len(runs))
        elif kind == "open_square":
            open_square.append(len(runs))
        elif kind == "weight" and open_round:
            scale_from(open_round.pop(), _to_weight(match.group("weight"), text))
        elif kind == "close_round" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif kind == "close_square" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:  # text, ":", or a closer with nothing open: literal text
            add_text(value)

    # Unclosed brackets reach to the end of the prompt: all round ones first, then square
    # ones (the order only matters for the last bit of the floats, which decides merging).
    for start in open_round:
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)

    if not runs:
        return [("", 1.0)]

    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged]


def _to_weight(number: str, prompt: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise PromptSyntaxError(
            f"prompt {prompt!r}: {number!r} after ':' is not a number; write e.g. (word:1.3)"
        ) from None


def is_break(run: tuple[str, float]) -> bool:
    """True for A1111's BREAK marker. Inside brackets its -1 is rescaled (``(a BREAK b)``
    gives -1.1), and A1111 then no longer sees a BREAK: the word is encoded as text."""
    return run[0] == BREAK_RUN[0] and run[1] == BREAK_RUN[1]


@dataclass
class PromptChunk:
    """Up to ``chunk_len`` token ids and their weights; BOS/EOS are added by the encoder.
    ``fixes``: (offset in ``tokens``, embedding name) where an embedding's vectors replace the
    placeholder ids (A1111's ``PromptChunkFix``; the encoder adds 1 for BOS)."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)


# A1111's ``ids_lookup``: first token id -> [(name's token ids, name, vector count)], longest
# name first (``sdbatch.plan.embedding_files.build_lookup`` makes one).
EmbeddingLookup = Mapping[int, Sequence[tuple[tuple[int, ...], str, int]]]
PLACEHOLDER_ID = 0  # what A1111 puts in the ids where an embedding's vectors go


def _embedding_at(
    ids: Sequence[int], position: int, embeddings: EmbeddingLookup | None
) -> tuple[str, int, int] | None:
    """(name, vectors, tokens matched) of the embedding whose name starts at ``position``."""
    if not embeddings:
        return None
    for name_ids, name, vectors in embeddings.get(ids[position], ()):
        if tuple(ids[position : position + len(name_ids)]) == name_ids:
            return name, vectors, len(name_ids)
    return None


def chunk_tokens(
    runs: Sequence[tuple[str, float]],
    tokenize: Callable[[list[str]], list[list[int]]],
    comma_token: int,
    chunk_len: int = 75,
    backtrack: int = 20,
    *,
    pad_token: int | None = None,
    embeddings: EmbeddingLookup | None = None,
) -> list[PromptChunk]:
    """Cut weighted runs into chunks of ``chunk_len`` tokens, as A1111's ``tokenize_line``.

    ``tokenize`` maps texts to token ids without BOS/EOS. A chunk closes when full or at a
    BREAK. When a chunk fills up and its last comma is at most ``backtrack`` tokens back, the
    tokens after that comma move to the next chunk (so a phrase is not cut in two); 0
    disables this. A prompt without tokens still gives one (empty) chunk.

    With ``pad_token`` every chunk is padded to ``chunk_len`` with it (weight 1.0), which is
    A1111's layout; without it chunks keep only their real tokens, so the encoder knows where
    the text ends.

    With ``embeddings``, a run of a text's tokens equal to an embedding's name (longest name
    first) becomes ``vectors`` placeholder ids at the text's weight and a fix; an embedding
    that would not fit in the chunk starts the next one. When the comma back-off moves tokens
    to the next chunk, their fixes move with them (A1111 leaves them behind, writing the
    vectors over the old chunk's padding; we keep them where their tokens went).
    """
    token_lists = tokenize([text for text, _ in runs])
    chunks: list[PromptChunk] = []
    current = PromptChunk()
    last_comma = -1  # index of the last comma in ``current``; -1: none since it was opened

    def close_chunk() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current = PromptChunk()
        last_comma = -1

    for run, ids in zip(runs, token_lists, strict=True):
        if is_break(run):
            close_chunk()  # even an empty chunk: "BREAK x" starts with a blank chunk
            continue
        weight = run[1]
        position = 0
        while position < len(ids):
            token = ids[position]
            full = len(current.tokens) == chunk_len
            if token == comma_token:
                last_comma = len(current.tokens)  # a comma arriving at a full chunk opens
                # the next one, and A1111 then forgets it (the close below resets it)
            elif backtrack and full and last_comma != -1 and chunk_len - last_comma <= backtrack:
                cut = last_comma + 1
                fixes = [(o - cut, n) for o, n in current.fixes if o >= cut]
                moved = PromptChunk(current.tokens[cut:], current.weights[cut:], fixes)
                del current.tokens[cut:], current.weights[cut:]
                current.fixes = [(o, n) for o, n in current.fixes if o < cut]
                close_chunk()
                current = moved
            if len(current.tokens) == chunk_len:
                close_chunk()
            found = _embedding_at(ids, position, embeddings)
            if found is None:
                current.tokens.append(token)
                current.weights.append(weight)
                position += 1
                continue
            name, vectors, matched = found
            if len(current.tokens) + vectors > chunk_len:
                close_chunk()
            current.fixes.append((len(current.tokens), name))
            current.tokens += [PLACEHOLDER_ID] * vectors
            current.weights += [weight] * vectors
            position += matched

    if current.tokens or not chunks:
        close_chunk()

    if pad_token is not None:
        for chunk in chunks:
            missing = chunk_len - len(chunk.tokens)
            chunk.tokens += [pad_token] * missing
            chunk.weights += [1.0] * missing
    return chunks


CHUNK_LEN = 75  # text tokens per chunk; CLIP sees 77 with BOS and EOS
COMMA_BACKTRACK = 20  # A1111's default ``comma_padding_backtrack``


def prompt_chunks(
    tokenizer, prompt: str, embeddings: EmbeddingLookup | None = None
) -> list[PromptChunk]:
    """The unpadded 75-token chunks of ``prompt`` (at least one). ``tokenizer`` is a
    transformers CLIPTokenizer (passed in: this module imports no tokenizer library);
    ``embeddings`` as in `chunk_tokens`."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # unknown tokens map to unk: check
    if tokenizer.convert_ids_to_tokens(comma) != ",</w>":
        comma = -1  # no comma token: never backs off

    def tokenize(texts: list[str]) -> list[list[int]]:
        # verbose=False: long texts are fine here, they are chunked, not truncated.
        out = tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)
        return out["input_ids"]

    return chunk_tokens(
        parse_attention(prompt), tokenize, comma, CHUNK_LEN, COMMA_BACKTRACK, embeddings=embeddings
    )


def chunk_count(tokenizer, prompt: str) -> int:
    """How many 77-token blocks ``prompt`` needs. Prompts with different counts give
    embeddings of different lengths, so they cannot share one UNet forward pass."""
    return len(prompt_chunks(tokenizer, prompt))
