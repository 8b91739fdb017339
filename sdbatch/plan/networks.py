"""The extra networks one job uses: LoRA files named by its prompt's tags, embeddings named by
words of its prompt and negative prompt. Pure: no torch.

The plan resolves them once per (model, prompt) from A1111's folders
(``sdbatch.plan.model_folders``); `Networks` then travels with the `Job`. Each file's hash joins
the job id (the pixels depend on the file's bytes), jobs share a forward pass only when their
LoRA sets and weights agree (`Networks.batch_key`), and `Networks.infotext` gives A1111's
``Lora hashes`` / ``TI hashes`` fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoraUse:
    """One ``<lora:NAME:...>`` tag, resolved."""

    name: str  # the name as A1111 writes it in "Lora hashes" (the tag's name)
    path: str  # the file in the LoRA folder
    hash: str  # A1111's short hash of the file (sdbatch.plan.lora_files)
    te_weight: float = 1.0  # text-encoder multiplier
    unet_weight: float = 1.0  # UNet multiplier (A1111: the TE weight unless given)


@dataclass(frozen=True, slots=True)
class EmbeddingUse:
    """A textual-inversion embedding a prompt or negative prompt names by its file stem."""

    name: str  # the file stem, the word in the prompt
    path: str
    hash: str  # A1111's short hash, as "TI hashes" writes it


@dataclass(frozen=True, slots=True)
class Networks:
    loras: tuple[LoraUse, ...] = ()
    embeddings: tuple[EmbeddingUse, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.loras or self.embeddings)

    def key(self) -> str:
        """The job-id part: every file's hash and weights; empty when none, so jobs without
        extra networks keep their ids."""
        if not self:
            return ""
        loras = [[u.name, u.hash, repr(u.te_weight), repr(u.unet_weight)] for u in self.loras]
        embeddings = [[u.name, u.hash] for u in self.embeddings]
        return json.dumps({"lora": loras, "ti": embeddings}, separators=(",", ":"))

    def batch_key(self) -> tuple:
        """Jobs share a forward pass only with the same LoRA files at the same weights
        (embeddings are tokens: any mix of them shares a pass)."""
        return tuple((u.path, u.hash, u.te_weight, u.unet_weight) for u in self.loras)

    def infotext(self) -> dict[str, str]:
        """A1111's ``Lora hashes`` and ``TI hashes`` values, ``name: hash, ...``. Unquoted: the
        infotext writer quotes a value holding ":" or "," once, as A1111's ``quote()`` does
        (A1111 stores the bare list and quotes it when it writes the line). Names lose their
        ":" and ",", as A1111's ``remove_symbols`` drops them."""
        out: dict[str, str] = {}
        drop = str.maketrans("", "", ":,")
        if self.loras:
            seen = dict.fromkeys(f"{u.name.translate(drop)}: {u.hash}" for u in self.loras)
            out["Lora hashes"] = ", ".join(seen)
        if self.embeddings:
            seen = dict.fromkeys(f"{u.name.translate(drop)}: {u.hash}" for u in self.embeddings)
            out["TI hashes"] = ", ".join(seen)
        return out


def parse_hash_list(value: str) -> list[tuple[str, str]]:
    """A1111's ``Lora hashes`` / ``TI hashes`` value (``name: hash, name: hash``) as (name,
    lowercase hash) pairs; A1111 drops ':' and ',' from the names, so they split cleanly."""
    pairs = []
    for item in value.split(","):
        name, sep, digest = item.strip().rpartition(":")
        if sep and name.strip() and digest.strip():
            pairs.append((name.strip(), digest.strip().lower()))
    return pairs


def resolve_networks(
    prompt: str,
    negative: str,
    family: str,
    folders: dict | None,
    allow_pickle: bool,
    model: object | None = None,
) -> Networks:
    """The extra networks ``prompt`` / ``negative`` name, for a model of ``family``.

    LoRA: ``<lora:...>`` / ``<lyco:...>`` tags of the prompt (sdbatch.plan.lora_files).
    Embeddings: words of either text that match a file stem in the embeddings folder
    (sdbatch.plan.embedding_files); ``model`` (the plan's `Model`) tells their expected
    vector width. Errors are one-line `RecipeError`s on ``prompt`` / ``negative_prompt``.
    """
    from sdbatch.plan.lora_files import resolve_loras  # it builds LoraUse (imports this module)

    loras = resolve_loras(prompt, family, folders, allow_pickle)
    from sdbatch.plan.embedding_files import resolve_embeddings

    embeddings = tuple(
        EmbeddingUse(*use)
        for use in resolve_embeddings(prompt, negative, family, folders, allow_pickle, model)
    )
    return Networks(loras, embeddings)
