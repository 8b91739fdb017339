"""Prompt embeddings with AUTOMATIC1111's emphasis and unlimited length, for SD 1.x.

diffusers' own ``encode_prompt`` truncates at 77 tokens and reads ``(word:1.3)`` as text.
This module encodes the chunks from ``sdbatch.plan.prompts`` the way A1111's
``FrozenCLIPEmbedderWithCustomWords`` does: every chunk of 75 tokens goes through CLIP as
BOS + 75 + EOS on its own, the token embeddings are multiplied by their weights and rescaled
so their mean is unchanged (emphasis "Original"), and the chunks are concatenated along the
sequence axis. The result is passed to a pipeline as ``prompt_embeds`` /
``negative_prompt_embeds``.

Padding: A1111 pads a chunk with EOS, then (for models whose tokenizer has a distinct pad
token, i.e. SD 2.x) overwrites everything after the first EOS with the pad token. diffusers
pads with ``tokenizer.pad_token_id`` after the EOS. We build BOS + text + EOS + pad-token
filler: for SD 1.x the pad token *is* EOS, so this equals both A1111 and diffusers, and a
short prompt without emphasis gives embeddings bit-identical to ``pipe.encode_prompt``.
"""

from __future__ import annotations

import torch

from sdbatch.plan.prompts import CHUNK_LEN, PromptChunk, chunk_count, prompt_chunks

__all__ = ["CHUNK_LEN", "chunk_count", "encode_prompt_pair", "encode_text", "prompt_chunks"]


def encode_prompt_pair(
    tokenizer,
    text_encoder,
    prompt: str,
    negative: str,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(cond, uncond)``, each ``(1, 77 * k, hidden)`` with the same ``k``.

    ``clip_skip`` counts as in A1111 (1 = last layer, 2 = penultimate; diffusers'
    ``clip_skip`` is this minus one). The side with fewer chunks is padded with encoded
    empty-prompt chunks, as A1111 does with its "Pad prompt/negative prompt to be same
    length" option. That option is off by default in A1111, which then runs cond and uncond
    through the UNet separately at their own lengths; diffusers' pipelines need equal
    shapes, so long prompts can differ slightly from default-A1111 images.
    """
    device, dtype = _target(text_encoder, clip_skip, device, dtype)
    cond_chunks = prompt_chunks(tokenizer, prompt)
    uncond_chunks = prompt_chunks(tokenizer, negative)
    k = max(len(cond_chunks), len(uncond_chunks))
    cond_chunks += [PromptChunk() for _ in range(k - len(cond_chunks))]
    uncond_chunks += [PromptChunk() for _ in range(k - len(uncond_chunks))]
    cond = _encode_chunks(tokenizer, text_encoder, cond_chunks, clip_skip)
    uncond = _encode_chunks(tokenizer, text_encoder, uncond_chunks, clip_skip)
    return cond.to(device=device, dtype=dtype), uncond.to(device=device, dtype=dtype)


def encode_text(
    tokenizer,
    text_encoder,
    text: str,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One text on its own: ``(1, 77 * k, hidden)`` with ``k`` its own chunk count.

    For per-step conditioning (``sdbatch.render.conditioning``), which pads texts to each
    other step by step. ``encode_text("")`` is A1111's empty-prompt chunk, the padding it
    puts after the shorter of cond and uncond. The values equal ``encode_prompt_pair``'s side
    for the same text when that side needed no padding (the same ids in the same batch).
    """
    device, dtype = _target(text_encoder, clip_skip, device, dtype)
    z = _encode_chunks(tokenizer, text_encoder, prompt_chunks(tokenizer, text), clip_skip)
    return z.to(device=device, dtype=dtype)


def _target(text_encoder, clip_skip: int, device, dtype) -> tuple[torch.device, torch.dtype]:
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1 (1 = last CLIP layer), got {clip_skip}")
    device = torch.device(device) if device is not None else text_encoder.device
    return device, dtype if dtype is not None else text_encoder.dtype


def _chunk_ids(tokenizer, chunk: PromptChunk) -> tuple[list[int], list[float]]:
    """BOS + text + EOS + filler (pad token) = 77 ids, and their weights (1.0 off the text)."""
    filler = CHUNK_LEN - len(chunk.tokens)
    ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id
    ids += [tokenizer.eos_token_id if pad is None else pad] * filler  # None: A1111's SD1 rule
    weights = [1.0, *chunk.weights, 1.0] + [1.0] * filler
    return ids, weights


def _encode_chunks(tokenizer, text_encoder, chunks: list[PromptChunk], clip_skip: int):
    """Encode all chunks of one prompt in one batch, apply emphasis, join them: (1, 77k, C)."""
    rows = [_chunk_ids(tokenizer, c) for c in chunks]
    enc_device = text_encoder.device
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=enc_device)
    weights = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=enc_device)

    with torch.no_grad():  # harmless under inference_mode, saves memory without it
        if clip_skip == 1:
            z = text_encoder(ids)[0]  # last_hidden_state, after final_layer_norm
        else:
            out = text_encoder(ids, output_hidden_states=True)
            # Earlier layers have no final norm; A1111 and diffusers both apply it.
            z = _final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
        z = _emphasize(z, weights)
    return z.reshape(1, -1, z.shape[-1])


def _final_layer_norm(text_encoder) -> torch.nn.Module:
    """transformers 5 flattened CLIPTextModel (``.final_layer_norm``); 4.x nests it in
    ``.text_model``. (diffusers 0.42's own clip_skip path assumes 4.x and fails on 5.)"""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis, per chunk: z * w, then rescale to z's old mean.

    The mean is over the whole 77 x C block, BOS and padding included, as A1111 takes it.
    It divides by that mean, so an encoder whose output mean is ~0 (a random-init CLIP,
    whose final LayerNorm is the identity) gives inf/NaN; trained CLIP does not.

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
