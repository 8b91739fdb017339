"""A1111's extra-network tags in prompts (``<lora:name:0.7>``, ``<lyco:...>``, ``<hypernet:...>``).

A1111 removes every ``<word:args>`` tag from the prompt before it parses emphasis and prompt
schedules (``modules/extra_networks.parse_prompt``: the pattern ``<(\\w+):([^>]+)>``, replaced by
nothing), then hands each kind's tags to that kind's extension. sdbatch does the same:
`strip_tags` is the text the text encoder sees, `parse_tags` what the LoRA resolver
(``sdbatch.plan.lora_files``) reads. The job keeps the tags in its prompt (A1111 writes them in
the infotext too).

What is not applied is never silent: a hypernetwork tag or a tag of a kind A1111 has no
extension for is removed (as A1111 removes it) with a plan-time warning; a tag in the negative
prompt stays text, as in A1111 (it parses the positive prompt only), with a warning too.
``run.strict_prompts=true`` makes each of these an error. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's re_extra_net
LORA_KINDS = ("lora", "lyco")  # A1111's built-in Lora extension registers "lyco" as an alias
KINDS = {"lora": "LoRA", "lyco": "LyCORIS", "hypernet": "hypernetwork"}


@dataclass(frozen=True, slots=True)
class Tag:
    text: str  # the whole tag as written, ``<lora:detail:0.7>``
    kind: str  # ``lora``, ``lyco``, ``hypernet``, ... (as written)
    items: tuple[str, ...]  # the arguments, split at ":" as A1111 splits them


def parse_tags(text: str) -> list[Tag]:
    """Every extra-network tag of ``text``, in order."""
    return [Tag(m.group(0), m.group(1), tuple(m.group(2).split(":"))) for m in TAG.finditer(text)]


def strip_tags(text: str) -> str:
    """``text`` as A1111 encodes it: every extra-network tag removed (nothing else changes)."""
    return TAG.sub("", text)


def is_lora(tag: Tag) -> bool:
    return tag.kind in LORA_KINDS


def extra_network_tags(texts: Iterable[str]) -> list[str]:
    """The distinct extra-network tags in ``texts``, in order of first appearance."""
    seen: dict[str, None] = {}
    for text in texts:
        for m in TAG.finditer(text):
            seen.setdefault(m.group(0), None)
    return list(seen)


def unapplied_tags(prompts: Iterable[str], negatives: Iterable[str]) -> list[tuple[str, str]]:
    """(field, tag) for each distinct tag that is not applied: in prompts every tag but LoRA /
    LyCORIS ones (those are loaded), in negative prompts every tag."""
    found = [
        ("prompt", t)
        for t in extra_network_tags(prompts)
        if TAG.match(t).group(1) not in LORA_KINDS
    ]
    return found + [("negative_prompt", t) for t in extra_network_tags(negatives)]


def tag_warning(field: str, tag: str) -> str:
    """One line saying what happens to a tag sdbatch does not apply (see `unapplied_tags`)."""
    kind = TAG.match(tag).group(1)
    what = KINDS.get(kind.lower(), f"extra network ({kind!r})")
    if field == "negative_prompt":
        return (
            f"{field}: {tag} is an A1111 {what} tag in the negative prompt; A1111 does not apply "
            f"tags there, and its text goes to the text encoder as written (as in A1111)"
        )
    if kind == "hypernet":
        detail = "sdbatch does not load hypernetworks"
    elif kind.lower() in KINDS:
        detail = f"A1111 only knows the lowercase <{kind.lower()}:...>"
    else:
        detail = "A1111 has no such extra network and skips it"
    return (
        f"{field}: {tag} is an A1111 {what} tag; {detail}: it is removed from the text (as "
        f"A1111 removes it) and not applied (run.strict_prompts=true makes this an error)"
    )
