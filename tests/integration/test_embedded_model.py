"""The embedded ``sdbatch-shapes`` model: every offline test and demo stands on it.

Checks that it is a real, loadable SD-1.x diffusers folder (real CLIP tokenizer, complete
weights, no network), that renders are reproducible from a seed, that it stays small enough to
ship in the wheel, and, through the real ``sdbatch`` command, that it draws what the prompt
says (judged from the PNGs' pixels): a regression in prompt encoding, samplers or guidance
shows up here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from transformers import CLIPTokenizer

from sdbatch.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PATH
from sdbatch.shapes.clip_files import folder_bytes
from sdbatch.shapes.judge import judge
from tests.conftest import BIN, sdbatch_env

# diffusers 0.42 renamed from_pretrained's torch_dtype to dtype; older ones only know torch_dtype.
pytestmark = pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")

# ~11.6 MiB: the 49408x64 fp16 token table (6.0 MiB), the UNet (2.8), the VAE (1.3),
# vocab.json + merges.txt (1.3). The bound fails on fp32 weights or an extra tokenizer.json.
MAX_FOLDER_BYTES = 13 * 2**20

WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}


def _no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")


def load(**kwargs) -> StableDiffusionPipeline:
    """Load the folder with the network cut off (offline env *and* sockets that refuse)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        pipe = StableDiffusionPipeline.from_pretrained(
            EMBEDDED_MODEL_PATH, local_files_only=True, safety_checker=None, **kwargs
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return load(torch_dtype=torch.float32)


def render(pipe: StableDiffusionPipeline, seed: int) -> np.ndarray:
    out = pipe(
        "a red circle on a white background",
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return out.images


def test_tokenizer_is_real_clip_bpe():
    tok = CLIPTokenizer.from_pretrained(EMBEDDED_MODEL_PATH / "tokenizer")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tok.pad_token_id == tok.eos_token_id == 49407


def test_models_package_does_not_import_torch():
    """The CLI resolves the default model path before it decides to load torch."""
    code = (
        "import sys, sdbatch.models as m\n"
        "print(m.EMBEDDED_MODEL_PATH)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [str(EMBEDDED_MODEL_PATH), "False"]
    assert EMBEDDED_MODEL_NAME == "sdbatch-shapes"


def test_model_index_is_sd1_without_safety_checker():
    index = json.loads((EMBEDDED_MODEL_PATH / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False


def test_loads_offline_with_every_weight(pipe):
    """Every parameter and persistent buffer comes from the file: none left at random init."""
    for name, filename in WEIGHT_FILES.items():
        model = getattr(pipe, name)
        with safe_open(EMBEDDED_MODEL_PATH / name / filename, framework="pt") as f:
            stored = set(f.keys())
        assert set(model.state_dict()) == stored, name
        assert {p.dtype for p in model.parameters()} == {torch.float32}, name
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.safety_checker is None


@pytest.mark.parametrize(("kwargs", "dtype"), [({"torch_dtype": torch.float16}, torch.float16),
                                              ({}, torch.float32)])  # fmt: skip
def test_load_dtypes(kwargs, dtype):
    """fp16 on request; with no dtype all components agree on fp32 (mixed dtypes would crash)."""
    loaded = load(**kwargs)
    for name in WEIGHT_FILES:
        assert {p.dtype for p in getattr(loaded, name).parameters()} == {dtype}, name


def test_same_seed_same_image_other_seed_other_image(pipe):
    first, again, other = render(pipe, 1), render(pipe, 1), render(pipe, 2)
    assert first.shape == (1, 32, 32, 3)
    assert np.isfinite(first).all()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_folder_is_small():
    size = folder_bytes(EMBEDDED_MODEL_PATH)
    assert size < MAX_FOLDER_BYTES, f"{size / 2**20:.2f} MiB"


COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")
SHAPES = ("circle", "square", "triangle")


def draw(out, *overrides: str) -> dict[str, np.ndarray]:
    """Run ``sdbatch`` on the 18 (colour, shape) prompts, white background; prompt -> pixels."""
    from PIL import Image

    args = [
        "+recipe=shapes_demo", f"output.dir={out}", "run.device=cpu", "seeds=[1]", "grids=[]",
        *overrides,
    ]  # fmt: skip
    proc = subprocess.run(
        [str(BIN / "sdbatch"), *args], env=sdbatch_env(), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from sdbatch.outputs.infotext import read_png_infotext

    images = {}
    for png in sorted((out / "images").glob("*.png")):
        prompt = read_png_infotext(png).splitlines()[0]
        images[prompt] = np.asarray(Image.open(png).convert("RGB"))
    assert len(images) == 18
    return images


@pytest.fixture(scope="module")
def cfg7(tmp_path_factory):
    return draw(tmp_path_factory.mktemp("cfg7"))


@pytest.fixture(scope="module")
def cfg1(tmp_path_factory):
    return draw(tmp_path_factory.mktemp("cfg1"), "cfg=1")


def scores(images: dict[str, np.ndarray]) -> dict[str, int]:
    """How many of the pictures show the prompt's colour, shape, background, all three."""
    verdicts = {p: judge(img) for p, img in images.items()}
    right = {
        p: (f"a {v['colour']} " in p, f" {v['shape']} on" in p, v["background"] == "white")
        for p, v in verdicts.items()
    }
    return {
        "colour": sum(r[0] for r in right.values()),
        "shape": sum(r[1] for r in right.values()),
        "background": sum(r[2] for r in right.values()),
        "all": sum(all(r) for r in right.values()),
    }


def test_draws_the_colour_and_shape_the_prompt_names(cfg7):
    """Measured at the commit of this model: 18/18 colours, shapes and white backgrounds
    (DPM++ 2M Karras, 20 steps, CFG 7, seeds 1, 2 and 3 alike). The bounds leave room for
    rounding on other CPUs but fail when prompts stop reaching the model (1/6 chance colours)."""
    got = scores(cfg7)
    assert got["colour"] >= 16, got
    assert got["shape"] >= 14, got
    assert got["background"] >= 17, got


def test_guidance_makes_the_pictures_follow_the_prompt(cfg7, cfg1):
    """The model was trained on noisy captions, so at CFG 1 it samples them: measured 7/18
    all three right at CFG 1 vs 18/18 at CFG 7 (seed 1; seeds 2 and 3: 5 and 4 vs 18). Fails
    when guidance stops being applied (CFG 7 would equal CFG 1) or is applied backwards."""
    seven, one = scores(cfg7), scores(cfg1)
    assert seven["all"] >= 16, seven
    assert one["all"] <= seven["all"] - 4, (one, seven)


def test_same_command_same_pixels_and_guidance_takes_the_negative_prompt(cfg7, cfg1, tmp_path):
    """Same seed, same PNG pixels; at CFG 7 the negative prompt changes the picture (it is the
    unconditional half of guidance), at CFG 1 guidance is off and it changes nothing."""
    again = draw(tmp_path / "again")
    assert all(np.array_equal(cfg7[p], again[p]) for p in cfg7)
    neg7 = draw(tmp_path / "neg7", "negative_prompt=yellow")
    assert sum(not np.array_equal(cfg7[p], neg7[p]) for p in cfg7) >= 17
    neg1 = draw(tmp_path / "neg1", "cfg=1", "negative_prompt=yellow")
    assert all(np.array_equal(cfg1[p], neg1[p]) for p in cfg1)
    assert sum(not np.array_equal(cfg7[p], cfg1[p]) for p in cfg7) >= 17


def test_emphasis_moves_the_colour_of_two_colour_captions():
    """A1111 weights reach the model: in ``a (red:1.4) (blue:0.7) circle ...`` the first colour
    wins more often than with the weights swapped. Measured by ``make eval-tiny`` on 6 pairs x
    12 seeds: first colour 49/72 vs 11/72, second colour 19/72 vs 54/72 (plain: 26/72 and
    36/72). Here the same measurement (`eval_tiny.emphasis`) on 4 seeds with weights 2 / 0.5
    and 0.5 / 2 (measured: first colour 22/24 vs 0/24, second 2/24 vs 24/24)."""
    from sdbatch.plan.checkpoints import resolve_model
    from sdbatch.render.pipeline import Renderer
    from sdbatch.shapes.evaluate import emphasis

    model = resolve_model({})
    renderer = Renderer.load(model, device="cpu")
    up, down = emphasis(renderer, model, seeds=4, steps=20, size=32,
                        weights=[(2.0, 0.5), (0.5, 2.0)])  # fmt: skip
    assert up["images"] == down["images"] == 24
    assert up["first"] >= down["first"] + 6, (up, down)
    assert down["second"] >= up["second"] + 6, (up, down)
