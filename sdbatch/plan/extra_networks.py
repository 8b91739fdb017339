"""A1111's extra-network tags in prompts (``<lora:name:0.7>``, ``<lyco:...>``, ``<hypernet:...>``).

sdbatch does not load LoRA, LyCORIS or hypernetworks yet, so a prompt that carries such a tag
makes a different picture than A1111 does (the network is not applied; the tag's text is
encoded as written, where A1111 removes it). Until it does, every distinct tag is a
plan-time warning on one line (``run.strict_prompts=true`` makes it an error). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TAG = re.compile(r"<(lora|lyco|hypernet):([^<>]*)>", re.IGNORECASE)
KINDS = {"lora": "LoRA", "lyco": "LyCORIS", "hypernet": "hypernetwork"}


def extra_network_tags(texts: Iterable[str]) -> list[str]:
    """The distinct extra-network tags in ``texts``, in order of first appearance."""
    seen: dict[str, None] = {}
    for text in texts:
        for m in TAG.finditer(text):
            seen.setdefault(m.group(0), None)
    return list(seen)


def tag_warning(field: str, tag: str) -> str:
    kind = KINDS[TAG.match(tag).group(1).lower()]
    return (
        f"{field}: {tag} is an A1111 {kind} tag; sdbatch does not load {kind} files yet: it is "
        f"not applied and its text goes to the text encoder as written "
        f"(run.strict_prompts=true makes this an error)"
    )
