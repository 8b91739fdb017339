"""A1111-style prompt encoding (sdbatch.render.encode) against diffusers, on a tiny random pipeline.

The components are built here the way diffusers' own pipeline tests build them, so the test
depends only on the committed CLIP tokenizer files, not on any other model folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.render.encode import chunk_count, encode_prompt_pair, encode_text, prompt_chunks
from tests.tiny import tiny_unet, tiny_vae

TOKENIZER_DIR = EMBEDDED_MODEL_PATH / "tokenizer"
CPU = torch.device("cpu")


def build_pipe(tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    unet = tiny_unet()
    vae = tiny_vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=64,  # the embedded UNet's cross-attention width
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=49408,
        )
    )
    # Random init leaves the final LayerNorm the identity, so every token's output has mean 0
    # and A1111's mean restoration divides ~0 by ~0 (inf/NaN). Trained CLIP's LayerNorm has a
    # real gain and bias; give the tiny one some too.
    with torch.no_grad():
        norm = final_norm(text_encoder)
        norm.weight.normal_(1.0, 0.1, generator=torch.Generator().manual_seed(1))
        norm.bias.normal_(0.1, 0.2, generator=torch.Generator().manual_seed(2))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_norm(text_encoder) -> torch.nn.Module:
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm  # transformers 4/5


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def pipe(tokenizer) -> StableDiffusionPipeline:
    return build_pipe(tokenizer)


def ours(pipe, prompt, negative="", **kw):
    with torch.inference_mode():
        return encode_prompt_pair(pipe.tokenizer, pipe.text_encoder, prompt, negative, **kw)


def diffusers_embeds(pipe, prompt, negative="", clip_skip=None):
    with torch.inference_mode():
        return pipe.encode_prompt(prompt, CPU, 1, True, negative, clip_skip=clip_skip)


def n_tokens(tokenizer, text) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


WORDS_75 = " ".join(["cat"] * 75)
PLAIN = [
    ("a red cat, sitting on a mat", ""),
    ("portrait of a knight: silver armor, red hair", "lowres, blurry, bad hands"),
    ("", ""),
    (WORDS_75, "ugly"),  # exactly 75 tokens: diffusers does not truncate yet
]


@pytest.mark.parametrize("prompt, negative", PLAIN)
def test_no_emphasis_is_bit_identical_to_diffusers(pipe, prompt, negative):
    cond, uncond = ours(pipe, prompt, negative)
    ref_cond, ref_uncond = diffusers_embeds(pipe, prompt, negative)
    assert cond.shape == uncond.shape == (1, 77, 64)
    assert torch.equal(cond, ref_cond)
    assert torch.equal(uncond, ref_uncond)


def test_75_word_prompt_is_75_tokens(tokenizer):
    assert n_tokens(tokenizer, WORDS_75) == 75
    assert chunk_count(tokenizer, WORDS_75) == 1
    assert chunk_count(tokenizer, WORDS_75 + " cat") == 2


def test_clip_skip_2_is_penultimate_layer_with_final_norm(pipe):
    # What diffusers' encode_prompt(clip_skip=1) computes; diffusers 0.42 itself cannot run it
    # with transformers 5 (it looks for text_encoder.text_model, which 5 removed).
    cond, uncond = ours(pipe, "a red cat", "blurry", clip_skip=2)
    for text, got in (("a red cat", cond), ("blurry", uncond)):
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt")
        with torch.inference_mode():
            hidden = pipe.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states
            assert torch.equal(got, final_norm(pipe.text_encoder)(hidden[-2]))
    assert not torch.equal(cond, ours(pipe, "a red cat", "blurry")[0])


def test_distinct_pad_token_matches_diffusers():
    # SD 2.x tokenizers pad with "!" (id 0), not EOS: the filler after EOS must follow.
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")
    assert tok.pad_token_id != tok.eos_token_id
    pipe = build_pipe(tok)
    cond, uncond = ours(pipe, "a red cat", "blurry")
    ref_cond, ref_uncond = diffusers_embeds(pipe, "a red cat", "blurry")
    assert torch.equal(cond, ref_cond) and torch.equal(uncond, ref_uncond)


def test_weight_one_is_the_same_as_no_brackets(pipe):
    assert torch.equal(ours(pipe, "(red:1.0)")[0], ours(pipe, "red")[0])
    assert torch.equal(ours(pipe, "a (red:1.0) cat")[0], ours(pipe, "a red cat")[0])


def test_weight_changes_embeddings_and_keeps_the_mean(pipe, tokenizer):
    plain = ours(pipe, "a red cat")[0]
    weighted = ours(pipe, "a (red:1.5) cat")[0]
    assert not torch.equal(plain, weighted)
    assert not torch.equal(ours(pipe, "(red:1.5)")[0], ours(pipe, "red")[0])
    # Same tokens, so the raw CLIP output is `plain`: weighted = plain * w * (m0 / m1).
    (chunk,) = prompt_chunks(tokenizer, "a (red:1.5) cat")
    w = torch.tensor([1.0, *chunk.weights, 1.0] + [1.0] * (75 - len(chunk.tokens)))
    assert w[2] == 1.5 and w.sum() == 77.5
    product = plain * w[None, :, None]
    expected = product * (plain.mean() / product.mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted.mean(), plain.mean(), rtol=1e-5, atol=1e-7)


def test_long_prompt_gets_two_chunks_and_negative_is_padded(pipe, tokenizer):
    long_prompt = " ".join(["cat"] * 100)
    assert n_tokens(tokenizer, long_prompt) == 100
    assert chunk_count(tokenizer, long_prompt) == 2
    assert chunk_count(tokenizer, "") == 1
    cond, uncond = ours(pipe, long_prompt, "")
    assert cond.shape == uncond.shape == (1, 154, 64)
    # Chunk 1 is what diffusers sees after truncating to 75 tokens; the negative's extra
    # chunk is an encoded empty prompt. allclose: chunks are encoded as one batch of 2.
    ref_cond, ref_uncond = diffusers_embeds(pipe, long_prompt, "")
    torch.testing.assert_close(cond[:, :77], ref_cond, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(uncond[:, :77], ref_uncond, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(uncond[:, 77:], ref_uncond, rtol=1e-6, atol=1e-6)
    # Chunk 2 is 25 "cat"s as its own 77-token block.
    torch.testing.assert_close(cond[:, 77:], diffusers_embeds(pipe, " ".join(["cat"] * 25))[0])
    # Padding also works the other way round.
    short_cond, long_uncond = ours(pipe, "cat", long_prompt)
    assert short_cond.shape == long_uncond.shape == (1, 154, 64)


def test_encode_text_is_one_side_of_a_pair_unpadded(pipe):
    """Per-step conditioning encodes each text alone: what encode_prompt_pair gives a side
    that needs no padding, its own chunk count, and "" is the chunk that pads the other."""
    long_prompt = " ".join(["cat"] * 100)

    def alone(text):
        with torch.inference_mode():
            return encode_text(pipe.tokenizer, pipe.text_encoder, text)

    assert torch.equal(alone("a (red:1.2) cat"), ours(pipe, "a (red:1.2) cat", "blurry")[0])
    cond, uncond = ours(pipe, long_prompt, "")
    assert alone(long_prompt).shape == (1, 154, 64)
    assert torch.equal(alone(long_prompt), cond)
    torch.testing.assert_close(uncond[:, 77:], alone(""), rtol=1e-6, atol=1e-6)  # batch of 2
    assert alone("").shape == (1, 77, 64)


def test_dtype_and_device(pipe):
    cond, uncond = ours(pipe, "(red:1.2) cat", "blurry", dtype=torch.float16, device="cpu")
    assert cond.dtype == uncond.dtype == torch.float16
    assert cond.device == CPU


def test_clip_skip_must_be_positive(pipe):
    with pytest.raises(ValueError, match="clip_skip"):
        ours(pipe, "cat", clip_skip=0)


def render(pipe, prompt, negative="blurry") -> np.ndarray:
    cond, uncond = ours(pipe, prompt, negative)
    with torch.inference_mode():
        return pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            num_inference_steps=2,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(0),
        ).images


def test_pipeline_images(pipe):
    red = render(pipe, "red")
    assert red.shape == (1, 64, 64, 3)
    assert np.array_equal(render(pipe, "(red:1.0)"), red)
    emphasized = render(pipe, "(red:1.5)")
    assert np.isfinite(emphasized).all()
    assert not np.array_equal(emphasized, red)
    # Our embeddings for a plain prompt reproduce diffusers' own prompt handling exactly.
    with torch.inference_mode():
        direct = pipe(
            "red",
            negative_prompt="blurry",
            num_inference_steps=2,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(0),
        ).images
    assert np.array_equal(direct, red)
