"""Prompt embeddings with AUTOMATIC1111's emphasis and unlimited length, for SD 1.x and SDXL.

diffusers' own ``encode_prompt`` truncates at 77 tokens and reads ``(word:1.3)`` as text.
This module encodes the chunks from ``sdbatch.plan.prompts`` the way A1111's
``FrozenCLIPEmbedderWithCustomWords`` does: every chunk of 75 tokens goes through CLIP as
BOS + 75 + EOS on its own, the token embeddings are multiplied by their weights and rescaled
so their mean is unchanged (emphasis "Original"), and the chunks are concatenated along the
sequence axis. The result is passed to a pipeline as ``prompt_embeds`` /
``negative_prompt_embeds`` (SDXL: also the pooled pair).

SDXL, as A1111 runs it (``sd_hijack_clip``, ``sd_hijack_open_clip``, ``sd_models_xl`` and
sgm's ``GeneralConditioner``): each of the two text encoders (CLIP-L, OpenCLIP-G) chunks the
prompt with its own tokenizer and applies emphasis to its own output (the mean restored per
encoder and chunk); both read the penultimate layer without the final LayerNorm, and their
outputs are joined along the channels. The pooled text embedding is OpenCLIP-G's projection
at the EOS position of the *first* chunk. A negative prompt whose texts are all empty is
zeros, hidden states and pooled alike (A1111's ``force_zero_negative_prompt``; diffusers
zeroes only ``negative_prompt=None``). Clip skip does not apply to SDXL (A1111's
``sdxl_clip_l_skip`` is off by default; the model config refuses other values).

Padding: A1111 pads a chunk with EOS, then (for encoders whose pad token differs, SD 2.x and
SDXL's OpenCLIP-G) overwrites everything after the first EOS with the pad token. diffusers pads
with ``tokenizer.pad_token_id`` after the EOS. We build BOS + text + EOS + pad-token filler,
which equals both, so a short prompt without emphasis gives embeddings bit-identical to
``pipe.encode_prompt`` (SD 1.x and SDXL).

``encode_chunk_ids`` is the one place where token ids become vectors, for one encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdbatch.plan.prompts import CHUNK_LEN, PromptChunk, chunk_count, prompt_chunks
from sdbatch.render.embeddings import placed

__all__ = [
    "CHUNK_LEN",
    "TextEncoder",
    "chunk_count",
    "encode_chunk_ids",
    "encode_pair",
    "encode_prompt_pair",
    "encode_text",
    "encode_texts",
    "pipeline_encoders",
    "prompt_chunks",
]


@dataclass(frozen=True)
class TextEncoder:
    """One CLIP text encoder and which of its outputs A1111 reads."""

    tokenizer: Any  # a transformers CLIPTokenizer
    model: torch.nn.Module  # CLIPTextModel, or CLIPTextModelWithProjection (``pooled``)
    skip: int = 1  # hidden layer, counted from the end as A1111's clip skip (1 = last)
    final_norm: bool = True  # apply the final LayerNorm to an earlier layer (SD 1.x does)
    pooled: bool = False  # also return each chunk's projected EOS vector (SDXL's OpenCLIP-G)
    embeddings: Any = None  # EncoderEmbeddings (sdbatch.render.embeddings): TI words, vectors


def pipeline_encoders(pipe, family: str, clip_skip: int = 1) -> list[TextEncoder]:
    """A pipeline's text encoders as A1111 reads them: SD 1.x one, SDXL two (CLIP-L, absent
    in refiner-style pipelines, then OpenCLIP-G), both at the penultimate layer, un-normed."""
    if family != "sdxl":
        return [TextEncoder(pipe.tokenizer, pipe.text_encoder, clip_skip)]
    out = []
    if getattr(pipe, "text_encoder", None) is not None:
        out.append(TextEncoder(pipe.tokenizer, pipe.text_encoder, 2, final_norm=False))
    out.append(TextEncoder(pipe.tokenizer_2, pipe.text_encoder_2, 2, False, pooled=True))
    return out


Encoded = tuple[torch.Tensor, torch.Tensor | None]  # (1, 77k, C), pooled (1, P) or None


def encode_pair(
    encoders: list[TextEncoder],
    prompt: str,
    negative: str,
    *,
    zero_empty_negative: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(cond, uncond, pooled, uncond_pooled)``: hidden states ``(1, 77 * k, C)`` with the
    same ``k`` (the shorter side padded with encoded empty-prompt chunks, as A1111's "pad
    prompt/negative prompt to be same length" option pads: diffusers needs one shape for
    both halves), pooled ``(1, P)`` or None where no encoder pools (SD 1.x).

    ``zero_empty_negative`` (SDXL): an empty negative is zeros, its first chunk and its pooled
    vector; padding chunks after it stay encoded empty prompts, as A1111 pads."""
    k = max(_chunk_count(encoders, prompt), _chunk_count(encoders, negative))
    cond, pooled = _encode(encoders, prompt, k)
    uncond, uncond_pooled = _encode(encoders, negative, k)
    if zero_empty_negative and negative == "":
        uncond, uncond_pooled = _zero_first_chunk(uncond), torch.zeros_like(uncond_pooled)
    device, dtype = _target(encoders, device, dtype)
    return tuple(
        None if t is None else t.to(device=device, dtype=dtype)
        for t in (cond, uncond, pooled, uncond_pooled)
    )  # type: ignore[return-value]


def encode_texts(
    encoders: list[TextEncoder],
    text: str,
    *,
    zero: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Encoded:
    """One text on its own, at its own chunk count: ``((1, 77 * k, C), pooled or None)``.

    For per-step conditioning (``sdbatch.render.conditioning``), which pads texts to each
    other step by step. ``zero`` (only meaningful for ``""``): A1111's zeroed SDXL negative."""
    hidden, pooled = _encode(encoders, text, _chunk_count(encoders, text))
    if zero:
        hidden = torch.zeros_like(hidden)
        pooled = None if pooled is None else torch.zeros_like(pooled)
    device, dtype = _target(encoders, device, dtype)
    pooled = None if pooled is None else pooled.to(device=device, dtype=dtype)
    return hidden.to(device=device, dtype=dtype), pooled


def encode_prompt_pair(
    tokenizer,
    text_encoder,
    prompt: str,
    negative: str,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD 1.x: ``(cond, uncond)``, each ``(1, 77 * k, hidden)`` with the same ``k``.

    ``clip_skip`` counts as in A1111 (1 = last layer, 2 = penultimate; diffusers'
    ``clip_skip`` is this minus one). Padding as ``encode_pair``. That A1111 option is off by
    default, and A1111 then runs cond and uncond through the UNet separately at their own
    lengths, so long prompts can differ slightly from default-A1111 images.
    """
    encoders = [TextEncoder(tokenizer, text_encoder, _check_skip(clip_skip))]
    cond, uncond, _, _ = encode_pair(encoders, prompt, negative, device=device, dtype=dtype)
    return cond, uncond


def encode_text(
    tokenizer,
    text_encoder,
    text: str,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """SD 1.x, one text on its own: ``(1, 77 * k, hidden)`` with ``k`` its own chunk count.

    ``encode_text("")`` is A1111's empty-prompt chunk, the padding it puts after the shorter
    of cond and uncond. The values equal ``encode_prompt_pair``'s side for the same text when
    that side needed no padding (the same ids in the same batch).
    """
    encoders = [TextEncoder(tokenizer, text_encoder, _check_skip(clip_skip))]
    return encode_texts(encoders, text, device=device, dtype=dtype)[0]


def encode_chunk_ids(
    encoder: TextEncoder, ids: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` chunks through one encoder: ids and weights ``(n, 77)`` -> hidden states
    ``(n, 77, C)`` with emphasis applied, and the pooled vectors ``(n, P)`` (or None).

    The pooled vector is read before emphasis, as A1111 reads it."""
    model = encoder.model
    with torch.no_grad():  # harmless under inference_mode, saves memory without it
        if encoder.skip == 1:
            # last_hidden_state, after final_layer_norm (diffusers' SD 1.x call, as it is)
            out = model(ids)
            z = out.last_hidden_state
        else:
            out = model(ids, output_hidden_states=True)
            z = out.hidden_states[-encoder.skip]
            if encoder.final_norm:  # earlier layers have no final norm; SD 1.x applies it
                z = _final_layer_norm(model)(z)
        pooled = out.text_embeds if encoder.pooled else None
        return _emphasize(z, weights), pooled


def _check_skip(clip_skip: int) -> int:
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1 (1 = last CLIP layer), got {clip_skip}")
    return clip_skip


def _target(encoders: list[TextEncoder], device, dtype) -> tuple[torch.device, torch.dtype]:
    model = encoders[-1].model  # diffusers casts SDXL's embeddings to text_encoder_2's dtype
    device = torch.device(device) if device is not None else model.device
    return device, dtype if dtype is not None else model.dtype


def _chunk_count(encoders: list[TextEncoder], text: str) -> int:
    """The most chunks any encoder's tokenizer cuts ``text`` into (SDXL's two tokenizers share
    one vocabulary, so they agree; the max keeps the channel concatenation well-formed)."""
    return max(len(prompt_chunks(e.tokenizer, text, _lookup(e))) for e in encoders)


def _lookup(encoder: TextEncoder):
    return None if encoder.embeddings is None else encoder.embeddings.lookup


def _encode(encoders: list[TextEncoder], text: str, k: int) -> Encoded:
    """``text`` padded to ``k`` chunks with empty ones, through every encoder, joined along
    the channels: ``(1, 77k, sum C)``; the pooled vector of the first chunk (A1111's
    ``zs[0].pooled``) from the encoder that pools."""
    hidden, pooled = [], None
    for encoder in encoders:
        chunks = prompt_chunks(encoder.tokenizer, text, _lookup(encoder))
        chunks += [PromptChunk() for _ in range(k - len(chunks))]
        ids, weights = _chunk_rows(encoder, chunks)
        with placed(encoder.model, chunks, encoder.embeddings):  # no-op without embeddings
            z, chunk_pooled = encode_chunk_ids(encoder, ids, weights)
        hidden.append(z.reshape(1, -1, z.shape[-1]))
        if chunk_pooled is not None and pooled is None:
            pooled = chunk_pooled[:1]
    return (hidden[0] if len(hidden) == 1 else torch.cat(hidden, dim=-1)), pooled


def _chunk_rows(encoder: TextEncoder, chunks: list[PromptChunk]):
    """The ``(n, 77)`` ids and weights of ``chunks``, on the encoder's device."""
    rows = [_chunk_ids(encoder.tokenizer, c) for c in chunks]
    device = encoder.model.device
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
    weights = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=device)
    return ids, weights


def _chunk_ids(tokenizer, chunk: PromptChunk) -> tuple[list[int], list[float]]:
    """BOS + text + EOS + filler (pad token) = 77 ids, and their weights (1.0 off the text)."""
    filler = CHUNK_LEN - len(chunk.tokens)
    ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id
    ids += [tokenizer.eos_token_id if pad is None else pad] * filler  # None: A1111's SD1 rule
    weights = [1.0, *chunk.weights, 1.0] + [1.0] * filler
    return ids, weights


def _zero_first_chunk(hidden: torch.Tensor) -> torch.Tensor:
    out = hidden.clone()
    out[:, : CHUNK_LEN + 2] = 0
    return out


def _final_layer_norm(text_encoder) -> torch.nn.Module:
    """transformers 5 flattened CLIPTextModel (``.final_layer_norm``); 4.x nests it in
    ``.text_model``. (diffusers 0.42's own clip_skip path assumes 4.x and fails on 5.)"""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis, per chunk: z * w, then rescale to z's old mean.

    The mean is over the whole 77 x C block of one encoder, BOS and padding included, as
    A1111 takes it. It divides by that mean, so an encoder whose output mean is ~0 (a
    random-init CLIP, whose final LayerNorm is the identity) gives inf/NaN; trained CLIP
    does not.

    Chunks whose weights are all 1.0 are returned untouched (A1111 computes z * 1 * m/m,
    the same values), so unweighted prompts stay bit-identical to diffusers. As in A1111,
    the weighted product is formed in float32 (its multipliers are float32 and type
    promotion lifts a half-precision z); the caller casts to the output dtype.
    """
    weighted = (weights != 1.0).any(dim=1)
    if not bool(weighted.any()):
        return z
    old_mean = z.mean(dim=(1, 2), keepdim=True).float()
    scaled = z.float() * weights.unsqueeze(-1)
    scaled = scaled * (old_mean / scaled.mean(dim=(1, 2), keepdim=True))
    return torch.where(weighted[:, None, None], scaled, z.float())
