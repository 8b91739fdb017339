"""SDXL prompts as A1111 encodes them (sdbatch.render.encode), on the tiny SDXL pipeline.

Against diffusers' own ``encode_prompt`` where diffusers can say anything (short prompts
without emphasis), and against the rules A1111 follows where it cannot: emphasis per text
encoder with the mean restored per encoder and chunk, ``BREAK`` and 75-token chunks, the
pooled text of the first chunk, an empty negative prompt as zeros, and prompt editing across
texts of different chunk counts.
"""

from __future__ import annotations

import pytest
import torch

from sdbatch.plan.checkpoints import resolve_model
from sdbatch.render.pipeline import Renderer
from tests.integration.test_prompt_editing import job, unet_inputs

L = 32  # the tiny CLIP-L's width; OpenCLIP-G's 48 channels follow it
WORDS_75 = " ".join(["cat"] * 75)  # 75 tokens: one full chunk, which diffusers does not cut


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    from tests.integration.test_single_file import build_tiny_sdxl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_prompt_editing's renderer fixture
    folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    yield Renderer.load(resolve_model({"path": str(folder)}), device="cpu")
    torch.set_num_threads(threads)


def diffusers_embeds(xl, prompt, negative):
    with torch.inference_mode():
        return xl.pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative)


@pytest.mark.parametrize(
    "prompt, negative",
    [
        ("a red circle", "blurry"),
        ("portrait of a knight: silver armor, red hair", "lowres, bad hands"),
        (WORDS_75, "ugly"),
        ("a red circle", None),  # diffusers zeroes a missing negative; we zero an empty one
    ],
)
def test_plain_prompts_are_bit_identical_to_diffusers(xl, prompt, negative):
    ours = xl.embeddings(prompt, negative or "")
    ref = diffusers_embeds(xl, prompt, negative)
    assert [t.shape for t in ours] == [(1, 77, L + 48), (1, 77, L + 48), (1, 48), (1, 48)]
    for name, a, b in zip(("cond", "uncond", "pooled", "uncond pooled"), ours, ref, strict=True):
        assert torch.equal(a, b), name


def test_an_empty_negative_is_zeros_as_a1111_makes_it(xl):
    _, uncond, _, uncond_pooled = xl.embeddings("a red circle", "")
    assert not uncond.any() and not uncond_pooled.any()
    # diffusers encodes negative_prompt="" as text: what sdbatch did before
    assert diffusers_embeds(xl, "a red circle", "")[1].abs().max() > 0.5
    # padding after the zeroed chunk is the encoded empty prompt, as A1111 pads
    _, uncond, _, _ = xl.embeddings(WORDS_75 + " cat", "")
    empty = xl.text_embedding("", False)[0]
    assert not uncond[:, :77].any() and torch.equal(uncond[:, 77:], empty)


def test_weight_one_is_no_brackets(xl):
    for a, b in zip(xl.embeddings("a (red:1.0) circle", "(blurry:1.0)"),
                    xl.embeddings("a red circle", "blurry"), strict=True):  # fmt: skip
        assert torch.equal(a, b)


def test_emphasis_scales_each_encoder_and_restores_its_mean(xl):
    """A1111: z * w, then z * (old mean / new mean), per encoder's own 77 x C block; the
    pooled text is read before emphasis."""
    plain = xl.embeddings("a red circle", "blurry")
    weighted = xl.embeddings("a (red:1.5) circle", "blurry")
    assert not torch.equal(weighted[0], plain[0])
    assert torch.equal(weighted[2], plain[2]) and torch.equal(weighted[1], plain[1])
    w = torch.ones(1, 77, 1)
    w[0, 2] = 1.5  # BOS, "a", "red"
    for part in (slice(0, L), slice(L, None)):  # CLIP-L, then OpenCLIP-G
        z, got = plain[0][..., part], weighted[0][..., part]
        expected = z * w * (z.mean() / (z * w).mean())
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.mean(), z.mean(), rtol=1e-4, atol=1e-7)
    # one mean over both encoders' channels would be something else
    z = plain[0]
    assert not torch.allclose(weighted[0], z * w * (z.mean() / (z * w).mean()), atol=1e-4)
    # per chunk: a weight in the second chunk leaves the first alone and keeps its own mean
    plain = xl.embeddings("a red circle BREAK a blue square", "")[0]
    weighted = xl.embeddings("a red circle BREAK a (blue:1.4) square", "")[0]
    assert torch.equal(weighted[:, :77], plain[:, :77])
    assert not torch.equal(weighted[:, 77:], plain[:, 77:])
    for part in (slice(0, L), slice(L, None)):
        got, z = weighted[:, 77:, part], plain[:, 77:, part]
        torch.testing.assert_close(got.mean(), z.mean(), rtol=1e-4, atol=1e-7)


def test_break_and_long_prompts_make_chunks(xl):
    """BREAK closes a chunk; 100 tokens are 75 + 25: 154 tokens, the pooled text is the first
    chunk's, and the negative is padded with empty-prompt chunks."""
    red, blue = xl.text_embedding("a red circle", False), xl.text_embedding("a blue square", False)
    cond, uncond, pooled, _ = xl.embeddings("a red circle BREAK a blue square", "blurry")
    assert cond.shape == uncond.shape == (1, 154, L + 48)
    torch.testing.assert_close(cond, torch.cat([red[0], blue[0]], dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, red[1], rtol=0, atol=1e-6)  # batched: last bits
    empty = xl.text_embedding("", False)[0]
    torch.testing.assert_close(uncond[:, 77:], empty, rtol=0, atol=1e-6)

    long = " ".join(["cat"] * 100)
    cond, _, pooled, _ = xl.embeddings(long, "")
    assert cond.shape == (1, 154, L + 48)
    first, _, first_pooled, _ = diffusers_embeds(xl, WORDS_75, None)
    torch.testing.assert_close(cond[:, :77], first, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, first_pooled, rtol=0, atol=1e-6)
    tail = xl.text_embedding(" ".join(["cat"] * 25), False)[0]
    torch.testing.assert_close(cond[:, 77:], tail, rtol=0, atol=1e-6)


def test_editing_between_texts_of_different_lengths(xl):
    """``[short:long:0.5]``: each call gets its text at its own length; an empty negative is
    zeros, padded with the empty prompt's chunk where the cond is two chunks long."""
    long = ", ".join(["a blue circle"] * 30)  # 120 tokens: 2 chunks
    calls = unet_inputs(xl, [job(xl, f"[a red circle:{long}:0.5]", steps=4, cfg=5.0)])
    short, longer = xl.text_embedding("a red circle", False)[0], xl.text_embedding(long, False)[0]
    empty = xl.text_embedding("", False)[0]
    # A1111 switches after call when * steps (calls 0-2 of 4 are the first text)
    assert [rows.shape[1] for rows in calls] == [77, 77, 77, 154]
    for rows, cond in zip(calls, [short, short, short, longer], strict=True):
        assert torch.equal(rows[1:], cond)
        assert not rows[0, :77].any()
        assert torch.equal(rows[0, 77:], empty[0, : rows.shape[1] - 77])
    # and a plain prompt with emphasis and BREAK renders (no NaN) and differs from plain
    out = xl.render([job(xl, "a (red:1.3) circle BREAK white", steps=4, cfg=5.0),
                     job(xl, "a red circle", steps=4, cfg=5.0)])  # fmt: skip
    assert not out[0][1] and not out[1][1] and (out[0][0] != out[1][0]).any()


def test_tools_prompt_counts_chunks_for_both_sdxl_encoders(tmp_path):
    import shutil

    from sdbatch.models import EMBEDDED_MODEL_PATH
    from tests.integration.test_tools_prompt import tools

    for name in ("tokenizer", "tokenizer_2"):  # a diffusers SDXL folder's two tokenizers
        shutil.copytree(EMBEDDED_MODEL_PATH / "tokenizer", tmp_path / name)
    res = tools("prompt", "--model", str(tmp_path), "a (red:1.2) car BREAK blue sky")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "  a red:1.2 car" in lines
    assert lines[-1] == (
        "2 chunks (154 tokens for each of SDXL's CLIP-L and OpenCLIP-G, joined along the channels)"
    )


def test_an_empty_negative_renders_as_diffusers_renders_a_missing_one(xl):
    """The pixels: sdbatch with ``negative_prompt: ""`` is diffusers' own call with no negative
    prompt (zeros), and not the call with ``""`` (which sdbatch used to match)."""
    import numpy as np

    [(pixels, nan)] = xl.render([job(xl, "a red circle", steps=2, cfg=5.0)])
    assert not nan

    def direct(negative):
        with torch.inference_mode():  # the renderer left its Euler scheduler on the pipe
            image = xl.pipe(
                prompt="a red circle", negative_prompt=negative, num_inference_steps=2,
                guidance_scale=5.0, width=32, height=32, output_type="np",
                generator=[torch.Generator("cpu").manual_seed(1)],
            ).images[0]  # fmt: skip
        return (image * 255).round().clip(0, 255).astype(np.uint8)

    np.testing.assert_array_equal(pixels, direct(None))
    assert (pixels != direct("")).any()
