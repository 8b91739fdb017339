"""AUTOMATIC1111's prompt editing, alternation and AND, without torch.

A1111 (1.6 and later) turns a prompt into texts before any emphasis is parsed:

* ``a cat :1.2 AND a dog :0.8`` (composable diffusion): ``AND`` as a whole word splits the
  prompt into sub-prompts, each with an optional ``:weight`` at its very end (``split_and``).
* ``[from:to:when]``, ``[to:when]``, ``[from::when]`` (prompt editing) and ``[a|b|c]``
  (alternation, one option per step) give each sub-prompt a schedule: ``(end_step, text)``
  pairs, the text used up to and including ``end_step`` (``prompt_schedule``).

The texts keep emphasis (``(x:1.2)``, ``[x]``), ``BREAK`` and escapes (``\\[``) as written, for
``sdbatch.plan.prompts.parse_attention``. The rules follow A1111's ``modules/prompt_parser.py``
(``get_learned_conditioning_prompt_schedules``, ``get_multicond_prompt_list``), quirks
included; ``tests/data/a1111_prompt_schedules.json`` holds its outputs. In short:

* ``when`` with a ``.`` is a fraction of the steps (``0.25``; ``1.5`` in the hires pass means
  half of it), without one a step number (``5``, ``1e1``), truncated and capped at the steps.
* A bracket that opens nothing valid is plain text (``a [b`` or ``x]``), but a ``|`` outside
  an alternation, or a lone ``\\`` at the end of a line, makes the whole prompt unparsable
  for A1111, which then uses it unchanged, editing and all, as one text.
* Stray brackets right after an edit (``[a:b:3]]``, ``[a:b:3]((``) are ambiguous in A1111's
  grammar, and the lark version A1111 pins resolves that by Python's hash seed: the edit is
  applied in some runs of A1111 and left as text in others. Here the edit always wins, which
  is one of those outcomes (newer lark, with a fixed order, does not always pick it).
* A1111 fails (``OverflowError``, ``RecursionError``) on a ``when`` too big for an int and on
  brackets nested about 245 deep; we raise ``PromptSyntaxError`` for those (from 201 deep).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sdbatch.plan.prompts import PromptSyntaxError

__all__ = [
    "MAX_NESTING",
    "PromptSyntaxError",
    "format_schedule",
    "has_scheduling",
    "multicond_prompt_list",
    "prompt_schedule",
    "split_and",
    "text_at_step",
]

MAX_NESTING = 200  # deeper brackets: A1111 runs out of stack (at about 245), we raise

# The terminals of A1111's grammar: a run of text (a backslash escapes any character but a
# newline), lark's SIGNED_NUMBER (ASCII digits only) and whitespace.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
)
_SPACE = re.compile(r"\s*")
# Composable diffusion: AND between word boundaries; a trailing ":weight" (any Unicode digits,
# as A1111's \d) and trailing whitespace are cut off each part.
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


@dataclass
class _Edit:  # [before:after:when]; before is None for [after:when]
    before: list | None
    after: list
    when: str  # the number as written: "." in it makes it a fraction


@dataclass
class _Alternate:  # [a|b|c]
    options: list[list]


class _Frame:  # a bracket being parsed: its parts so far, split by ":" or "|"
    def __init__(self, kind: str, start: int):
        self.kind, self.start, self.parts, self.seps = kind, start, [[]], ""

    def split(self, sep: str) -> None:
        self.seps += sep
        self.parts.append([])


def _bracket(text: str, start: int, failed: set[int]) -> tuple[list, int, int] | None:
    """The bracket opening at ``start`` as nodes, its end and nesting depth; None if it does
    not close validly. Inside a bracket every bracket must be valid, so when this one fails,
    so do all still open (their starts go to ``failed``)."""
    stack = [_Frame(text[start], start)]
    pos, depth = start + 1, 1

    def close(nodes: list) -> tuple[list, int, int] | None:
        stack.pop()
        if not stack:
            return nodes, pos, depth
        stack[-1].parts[-1].extend(nodes)
        return None

    while pos < len(text):
        top, c, done = stack[-1], text[pos], None
        if c in "([":
            stack.append(_Frame(c, pos))
            depth = max(depth, len(stack))
            pos += 1
            continue
        if c == ":" and top.kind == "(" and not top.seps:
            top.split(":")
            pos += 1
        elif c == ":" and top.kind == "[" and "|" not in top.seps:
            number = _NUMBER.match(text, _SPACE.match(text, pos + 1).end())
            end = number and _SPACE.match(text, number.end()).end()
            if number and text.startswith("]", end):
                before = top.parts[0] if top.seps else None
                pos = end + 1
                done = close([_Edit(before, top.parts[-1], number.group())])
            elif top.seps:
                break  # a second ":" must be followed by the number
            else:
                top.split(":")
                pos += 1
        elif c == "|" and top.kind == "[" and ":" not in top.seps:
            top.split("|")
            pos += 1
        elif c == ")" and top.kind == "(":
            pos += 1
            inner = top.parts[0] + [":"] + top.parts[1] if top.seps else top.parts[0]
            done = close(["(", *inner, ")"])
        elif c == "]" and top.kind == "[" and top.seps != ":":
            pos += 1
            done = close([_Alternate(top.parts)] if top.seps else ["[", *top.parts[0], "]"])
        elif c not in "():|]" and (plain := _PLAIN.match(text, pos)):
            top.parts[-1].append(plain.group())
            pos = plain.end()
        else:
            break
        if done:
            return done
    failed.update(frame.start for frame in stack)
    return None


def _parse(text: str) -> list | None:
    """``text`` as a list of strings and edit/alternation nodes; None where A1111's parser
    gives up (it then uses the text unchanged)."""
    nodes: list = []
    failed: set[int] = set()
    pos = 0
    while pos < len(text):
        c = text[pos]
        if c in "([" and pos not in failed and (found := _bracket(text, pos, failed)):
            inner, pos, depth = found
            if depth > MAX_NESTING:
                raise PromptSyntaxError(
                    f"prompt {text[:40]!r}...: brackets nested more than {MAX_NESTING} deep"
                )
            nodes.extend(inner)
        elif c in "[]():":
            nodes.append(c)  # opens or closes nothing: plain text, as in A1111
            pos += 1
        elif plain := _PLAIN.match(text, pos):
            nodes.append(plain.group())
            pos = plain.end()
        else:  # "|" outside [a|b], or a backslash at the end of a line
            return None
    return nodes


def _walk(nodes: list) -> Iterator[_Edit | _Alternate]:
    """Every edit/alternation node, nested ones included (all branches)."""
    for node in nodes:
        if isinstance(node, _Edit):
            yield node
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _render(nodes: list, step: int, ends: dict[int, int], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            branch = node.before if step <= ends[id(node)] else node.after
            _render(branch or [], step, ends, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, ends, out)


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, *, use_old_scheduling: bool = False
) -> list[tuple[int, str]]:
    """The ``(end_step, text)`` pairs of one (sub-)prompt, as A1111's
    ``get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps, ...)[0]``.

    ``hires_steps`` asks for the hires-fix pass: then ``when`` counts on from the first pass
    (``[a:b:25]`` with 20 + 10 steps switches at hires step 5, ``[a:b:1.5]`` halfway through
    it, and ``[a:b:0.5]`` has long switched). ``use_old_scheduling`` is A1111's option of that
    name: any ``when`` below 1 is a fraction, others are steps, and the hires pass is scheduled
    like the first one. ``AND`` is not split here (see ``split_and``).
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, float_offset = 0, 0.0
    else:
        int_offset, float_offset, steps = steps, 1.0, hires_steps
    tree = _parse(prompt)
    if tree is None:
        return [(steps, prompt)]
    ends: dict[int, int] = {}
    bounds = {steps}
    for node in _walk(tree):
        if isinstance(node, _Alternate):
            bounds.update(range(1, steps + 1))
            continue
        value = float(node.when)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in node.when:
            value = (value - float_offset) * steps
        else:
            value -= int_offset
        try:
            ends[id(node)] = end = min(steps, int(value))
        except (OverflowError, ValueError):
            raise PromptSyntaxError(
                f"prompt {prompt!r}: step {node.when!r} is too large; write e.g. [a:b:0.5]"
            ) from None
        if end >= 1:
            bounds.add(end)
    schedule = []
    for end in sorted(bounds):
        out: list[str] = []
        _render(tree, end, ends, out)
        schedule.append((end, "".join(out)))
    return schedule


def text_at_step(schedule: Sequence[tuple[int, str]], step: int) -> str:
    """The text A1111 conditions on at denoiser call ``step`` (0-based): that of the first
    entry with ``step <= end_step`` (its ``reconstruct_cond_batch``), else the first entry.
    So ``[a:b:3]`` gives ``a`` for the first four calls, and ``[a|b]`` gives a, a, b, a, b..."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[0][1]


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The sub-prompts of ``a cat :1.2 AND a dog`` with their weights: ``[("a cat", 1.2),
    (" a dog", 1.0)]``. As in A1111, a part keeps its leading whitespace, loses its trailing
    whitespace, and a ``:number`` at the end is a weight even without AND (``a cat:1.5``)."""
    parts = []
    for part in _AND.split(prompt):
        text, weight = _WEIGHT.match(part).groups()
        parts.append((text, 1.0 if weight is None else float(weight)))
    return parts


def multicond_prompt_list(
    prompts: Sequence[str],
) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's ``get_multicond_prompt_list``: per prompt its ``(index, weight)`` pairs into
    one list of distinct sub-prompt texts, that list, and the index of each text."""
    index: dict[str, int] = {}
    result = [
        [(index.setdefault(text, len(index)), weight) for text, weight in split_and(prompt)]
        for prompt in prompts
    ]
    return result, list(index), index


def has_scheduling(prompt: str) -> bool:
    """True when A1111 does more than encode ``prompt`` as one text: an edit, an alternation,
    AND, or a trailing ``:weight``. False for everything else (and for prompts A1111 cannot
    parse, which it encodes unchanged), so those keep the plain single-text path."""
    if "[" not in prompt and ":" not in prompt and "AND" not in prompt:
        return False
    parts = _AND.split(prompt)
    if len(parts) > 1 or _WEIGHT.match(parts[0]).group(2) is not None:
        return True
    tree = _parse(prompt)
    return tree is not None and any(True for _ in _walk(tree))


def _runs(schedule: list[tuple[int, str]], steps: int, indent: str) -> list[str]:
    lines: list[str] = []
    first = 1
    for step in range(1, steps + 1):
        text = text_at_step(schedule, step - 1)
        if step == steps or text_at_step(schedule, step) != text:
            span = f"step {step}" if first == step else f"steps {first}-{step}"
            lines.append(f"{indent}{span}: {text}")
            first = step + 1
    return lines


def format_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, *, use_old_scheduling: bool = False
) -> list[str]:
    """Printable lines: which text A1111 uses at each sampling step (1-based denoiser calls,
    runs of equal text merged), per AND part with its weight, and for the hires pass too when
    ``hires_steps`` is given. ``steps``: the denoiser calls A1111 plans for (for most samplers
    the step count)."""
    if steps < 1 or (hires_steps is not None and hires_steps < 1):
        raise ValueError(f"steps must be at least 1, got {steps}, {hires_steps}")
    parts = split_and(prompt) if has_scheduling(prompt) else [(prompt, 1.0)]
    passes = [(None, steps, "")]
    if hires_steps is not None:
        passes = [(None, steps, "first pass: "), (hires_steps, hires_steps, "hires pass: ")]
    lines: list[str] = []
    for hires, count, title in passes:
        if title:
            lines.append(f"{title}{count} steps")
        for number, (text, weight) in enumerate(parts, 1):
            indent = "  " * bool(title)
            if len(parts) > 1 or weight != 1.0:
                lines.append(f"{indent}part {number} of {len(parts)}, weight {weight:g}:")
                indent += "  "
            schedule = prompt_schedule(text, steps, hires, use_old_scheduling=use_old_scheduling)
            lines += _runs(schedule, count, indent)
    return lines
