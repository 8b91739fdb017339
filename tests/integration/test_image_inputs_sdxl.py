"""img2img and inpainting reuse the loaded weights (``from_pipe``), on SD 1.x (the embedded
model) and on the tiny SDXL pipeline: the img2img and inpaint pipelines hold the very same
UNet, VAE and text encoders, render without NaNs, change the picture, and (inpainting) keep
the unmasked pixels; an image does not depend on its batch-mates."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from sdbatch.plan.checkpoints import resolve_model
from sdbatch.plan.image_inputs import ImageInput, ImageOptions, InputFile
from sdbatch.render.pipeline import Renderer
from sdbatch.shapes.world import Scene, render
from tests.integration.test_prompt_editing import job


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def renderer(request, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if request.param == "sd1":
        model = resolve_model({})
    else:
        from tests.integration.test_single_file import build_tiny_sdxl

        folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
        model = resolve_model({"path": str(folder)})
    yield Renderer.load(model, device="cpu")
    torch.set_num_threads(threads)


def _file(tmp_path, masked: bool) -> InputFile:
    path = tmp_path / "in.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(path)
    mask_path = tmp_path / "mask.png"
    m = np.zeros((32, 32), np.uint8)
    m[:, 16:] = 255
    Image.fromarray(m).save(mask_path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if not masked:
        return InputFile(str(path), sha)
    mask_sha = hashlib.sha256(mask_path.read_bytes()).hexdigest()
    return InputFile(str(path), sha, str(mask_path), mask_sha)


def _jobs(renderer, file, seeds=(1, 2)):
    image = ImageInput(file, 0.8, ImageOptions(mask_blur=1))
    return [job(renderer, "a blue square", seed, steps=4, image=image) for seed in seeds]


@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
def test_image_passes_share_the_weights_and_keep_what_they_must(renderer, tmp_path, masked):
    file = _file(tmp_path, masked)
    out = renderer.render(_jobs(renderer, file))
    assert not any(nan for _, nan in out)
    pipe = renderer._inpaint_pipe if masked else renderer._img2img_pipe
    assert pipe is not None and pipe is not renderer.pipe
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name) is getattr(renderer.pipe, name)
    source = np.asarray(Image.open(file.path).convert("RGB"), dtype=np.int16)
    for pixels, _ in out:
        assert pixels.shape == (32, 32, 3)
        assert np.abs(pixels.astype(np.int16) - source).max() > 10  # it rendered something
        if masked:  # blur 1 reaches 3 columns; the overlay doubles it: 0..12 are the input's
            assert np.array_equal(pixels[:, :13].astype(np.int16), source[:, :13])
    # batch-invariance: the second image alone is the second image of the pair (to rounding)
    [(alone, _)] = renderer.render(_jobs(renderer, file, seeds=(2,)))
    assert np.abs(alone.astype(int) - out[1][0].astype(int)).max() <= 1


def test_a_picture_changed_after_planning_fails_its_batch_with_a_reason(renderer, tmp_path):
    from sdbatch.render.image_inputs import ChangedInput

    file = _file(tmp_path, masked=False)
    Image.new("RGB", (32, 32), (0, 0, 0)).save(file.path)  # edited after the plan hashed it
    with pytest.raises(ChangedInput, match="in.png changed since the plan was made"):
        renderer.render(_jobs(renderer, file))


@pytest.mark.parametrize(("denoise", "calls"), [(0.05, 1), (0.5, 6), (0.75, 8), (1.0, 10)])
def test_img2img_runs_a1111s_number_of_steps(renderer, tmp_path, denoise, calls):
    """A1111's img2img tab, 10 steps of Euler: int(min(denoise, 0.999) * 10) + 1 UNet calls
    (each one batched pass of cond and uncond)."""
    if renderer.model.family != "sd1":
        pytest.skip("the step rule does not depend on the model; SD 1.x is enough")
    file = _file(tmp_path, masked=False)
    image = ImageInput(file, denoise, ImageOptions())
    seen = []
    hook = renderer.pipe.unet.register_forward_hook(lambda *a: seen.append(1))
    try:
        renderer.render([job(renderer, "a red circle", 1, steps=10, image=image)])
    finally:
        hook.remove()
    assert len(seen) == calls
