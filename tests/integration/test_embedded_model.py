"""The embedded ``sdbatch-tiny`` model: every offline test and demo stands on it.

Checks that it is a real, loadable SD-1.x diffusers folder (real CLIP tokenizer, complete
weights, no network), that renders are reproducible from a seed, and that it stays small
enough to ship in the wheel.
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
from sdbatch.models.build_tiny import folder_bytes

# diffusers 0.42 renamed from_pretrained's torch_dtype to dtype; older ones only know torch_dtype.
pytestmark = pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")

# The exact SD-1.x-like shapes cost ~8.4 MiB: the 49408x32 fp16 token embedding (3.0 MiB),
# the UNet (2.7), the VAE (1.3) and vocab.json + merges.txt (1.3). The bound leaves a little
# room but still fails on fp32 weights (~12.6 MiB) or an extra tokenizer.json (~+2 MiB).
MAX_FOLDER_BYTES = 9 * 2**20

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
        "a photo of a cat",
        height=64,
        width=64,
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
    assert EMBEDDED_MODEL_NAME == "sdbatch-tiny"


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
    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_folder_is_small():
    size = folder_bytes(EMBEDDED_MODEL_PATH)
    assert size < MAX_FOLDER_BYTES, f"{size / 2**20:.2f} MiB"
