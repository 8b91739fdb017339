"""Textual-inversion vectors, loaded once per file and placed where A1111 places them.

The plan decided which embeddings a job uses (``sdbatch.plan.embedding_files``; they travel as
``job.networks.embeddings``). Here each file is loaded once per renderer (safetensors, or a
pickle through ``torch.load(weights_only=True)``: the plan already applied the weights policy)
and read as A1111's ``load_from_file`` reads it: ``string_to_param``'s one tensor, SDXL's
``clip_l`` / ``clip_g`` pair, or a file's single tensor (diffusers' ``{token: vector}``).

Chunking puts placeholder ids where an embedding goes and records a fix (offset, name) per
chunk (``sdbatch.plan.prompts``). While an encoder runs, a forward hook on its token-embedding
layer overwrites the looked-up vectors at ``offset + 1`` (BOS) with the embedding's vectors, as
A1111's ``EmbeddingsWithFixes`` does; position embeddings are added after, and emphasis weights
apply to those positions' outputs like any token's. Each encoder takes the tensor of its own
width: SD 1.x the single 768-wide one, SDXL's CLIP-L ``clip_l`` and OpenCLIP-G ``clip_g``.
Chunks without fixes run with no hook at all, so plain prompts stay bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdbatch.plan.embedding_files import SDXL_KEYS, build_lookup
from sdbatch.plan.networks import EmbeddingUse
from sdbatch.plan.prompts import EmbeddingLookup, PromptChunk

__all__ = ["EmbeddingStore", "EncoderEmbeddings", "load_vectors", "placed", "with_embeddings"]


def load_vectors(path: str | Path) -> dict[str, torch.Tensor]:
    """Key -> float32 ``(vectors, width)`` tensor(s) of an embedding file: ``{"": t}`` for one
    term, ``{"clip_l": l, "clip_g": g}`` for SDXL. Raises ValueError for anything else."""
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data: dict = load_file(str(p), device="cpu")
    else:
        data = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: not a textual-inversion embedding (no dict of tensors)")
    if all(isinstance(data.get(k), torch.Tensor) for k in SDXL_KEYS):
        return {k: _rows(data[k]) for k in SDXL_KEYS}
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        tensors = list(params.values()) if isinstance(params, dict) else []
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(tensors) != 1:
        raise ValueError(f"{p}: A1111 reads one term per embedding file, found {len(tensors)}")
    return {"": _rows(tensors[0])}


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to(dtype=torch.float32)
    return t.unsqueeze(0) if t.dim() == 1 else t


@dataclass
class EncoderEmbeddings:
    """What one text encoder needs: A1111's ids lookup for its tokenizer, and each
    embedding's vectors of its width."""

    lookup: EmbeddingLookup
    vectors: dict[str, torch.Tensor]


@dataclass
class EmbeddingStore:
    """The embedding files a renderer has loaded (once each, by path), and the set the current
    batch uses: only those replace words, so a text encodes as its own plan said."""

    loaded: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # path -> tensors
    active: dict[str, str] = field(default_factory=dict)  # name -> path, this batch's
    _per_encoder: dict[tuple, EncoderEmbeddings] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        """What encoded texts depend on: the active (name, path) pairs; () when none."""
        return tuple(sorted(self.active.items()))

    def use(self, uses: Iterable[EmbeddingUse]) -> None:
        """Make ``uses`` the active set, loading files not loaded yet."""
        self.active = {}
        for u in uses:
            if u.path not in self.loaded:
                self.loaded[u.path] = load_vectors(u.path)
            self.active[u.name] = u.path

    def for_encoder(self, tokenizer, model: torch.nn.Module) -> EncoderEmbeddings | None:
        """The lookup and vectors for one encoder, or None when no embedding is active."""
        if not self.active:
            return None
        width = model.get_input_embeddings().embedding_dim
        key = (self.key, id(tokenizer), id(model), width)
        if key not in self._per_encoder:
            vectors, counts = {}, {}
            for name, path in self.active.items():
                by_key = self.loaded[path]
                t = next((v for v in by_key.values() if v.shape[-1] == width), None)
                if t is not None:
                    vectors[name], counts[name] = t, _count(by_key)

            def tokenize(texts: list[str]) -> list[list[int]]:
                out = tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)
                return out["input_ids"]

            self._per_encoder[key] = EncoderEmbeddings(build_lookup(counts, tokenize), vectors)
        return self._per_encoder[key]


def with_embeddings(encoders: list, store: EmbeddingStore) -> list:
    """``sdbatch.render.encode.TextEncoder`` s with the store's embeddings for each attached."""
    if not store.active:
        return encoders
    return [
        dataclasses.replace(e, embeddings=store.for_encoder(e.tokenizer, e.model)) for e in encoders
    ]


def _count(by_key: dict[str, torch.Tensor]) -> int:
    """How many token positions an embedding takes: A1111 counts ``clip_g``'s rows for SDXL."""
    return int(by_key.get("clip_g", next(iter(by_key.values()))).shape[0])


@contextlib.contextmanager
def placed(
    model: torch.nn.Module, chunks: Sequence[PromptChunk], embeddings: EncoderEmbeddings | None
) -> Iterator[None]:
    """While ``model`` encodes one row per chunk, its token embeddings at each fix's
    ``offset + 1`` are the embedding's vectors (cut at the chunk's end, as A1111 cuts)."""
    rows = [(r, o, n) for r, c in enumerate(chunks) for o, n in c.fixes]
    if not rows or embeddings is None:
        yield
        return

    def hook(_module, _inputs, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        for row, offset, name in rows:
            emb = embeddings.vectors[name]
            n = min(out.shape[1] - offset - 1, emb.shape[0])
            out[row, offset + 1 : offset + 1 + n] = emb[:n].to(device=out.device, dtype=out.dtype)
        return out

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
