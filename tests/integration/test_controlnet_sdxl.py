"""ControlNet on SDXL: the tiny SDXL pipeline (test_single_file.build_tiny_sdxl) with a tiny
ControlNet made from its UNet (``ControlNetModel.from_unet``, zero convolutions filled with
seeded noise as in test_controlnet), saved as a ``.safetensors`` file in a ControlNet folder
with its config beside it (the tiny layout is not the full-size one the shipped SDXL config
describes). Weight 0 gives exactly the picture without ControlNet (diffusers' SDXL ControlNet
pipeline over the same components, its residuals all zeros), weight 1 changes it; img2img,
inpainting, the hires pass and AND take a unit; a non-Balanced mode changes the picture; an
SD 1.x ControlNet on the SDXL checkpoint is a one-line error naming the unit's model. About
11 s on a 2-core CPU (6 s of it building the tiny SDXL pipeline; 14 renders of one 32x32
image at 4 steps, or 2 and a 64x64 hires pass).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdbatch.errors import RecipeError
from sdbatch.plan.recipe import build_plan
from sdbatch.render.pipeline import Renderer
from sdbatch.shapes.world import Scene, render
from tests.conftest import quick_cfg
from tests.integration.test_controlnet import tiny_controlnet


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """(tmp root, ControlNet folder, the renderer of the tiny SDXL model)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from sdbatch.plan.checkpoints import resolve_model
    from tests.integration.test_single_file import build_tiny_sdxl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("xlcn")
    folder = build_tiny_sdxl(root / "tiny-sdxl")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    # the tiny VAE halves the picture: a two-layer condition embedding halves it too
    cn = tiny_controlnet(unet, (16, 32))
    models = root / "models" / "ControlNet"
    models.mkdir(parents=True)
    save_file(cn.state_dict(), models / "tiny_xl.safetensors")
    cn.save_config(models / "tiny_xl.config")
    pic = np.zeros((32, 32, 3), np.uint8)
    pic[8:24, 4:14] = 255
    Image.fromarray(pic).save(root / "cond.png")
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(root / "pic.png")
    renderer = Renderer.load(resolve_model({"path": str(folder)}), device="cpu")
    yield root, models, renderer
    torch.set_num_threads(threads)


def _render(xl, units: list, **over) -> np.ndarray:
    root, models, renderer = xl
    fields = {"prompt": "a red circle", "negative_prompt": "blurry", "seeds": [1],
              "size": "32x32", "steps": 4, "cfg": 5, **over}  # fmt: skip
    cfg = quick_cfg(
        model={"path": str(renderer.model.path)},
        folders={"controlnet": str(models)},
        controlnet=units,
        **fields,
    )
    jobs = build_plan(cfg, recipe_dirs=[root]).jobs
    assert len(jobs) == 1
    [(pixels, nan)] = renderer.render(jobs)
    assert not nan
    return pixels.astype(np.int16)


def _unit(xl, **over) -> dict:
    return {"model": "tiny_xl", "image": str(xl[0] / "cond.png"), **over}


def test_an_sdxl_unit_steers_the_picture_and_weight_zero_is_the_plain_picture(xl):
    plain = _render(xl, [])
    assert np.array_equal(_render(xl, [_unit(xl, weight=0)]), plain)
    on = _render(xl, [_unit(xl)])
    assert np.abs(on - plain).mean() > 2
    renderer = xl[2]
    (pipe,) = renderer._controlnet_pipes.values()
    assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(pipe, name) is getattr(renderer.pipe, name)  # no second copy
    prompt = _render(xl, [_unit(xl, control_mode="My prompt is more important")])
    assert np.abs(prompt - on).mean() > 1
    # AND: its wrapper's rows take SDXL's pooled text and size conditioning to the ControlNet
    both = "a red circle AND a blue square"
    assert np.array_equal(
        _render(xl, [_unit(xl, weight=0)], prompt=both), _render(xl, [], prompt=both)
    )


@pytest.mark.parametrize("kind", ["img2img", "inpaint", "hires"])
def test_img2img_inpainting_and_hires_take_an_sdxl_unit(xl, kind):
    masked = kind == "inpaint"
    img = {"init_images": str(xl[0] / "pic.png"), "denoise": 0.8}
    if kind == "hires":  # the hires pass is SDXL's img2img with the unit at 64x64
        img = {"hires": {"scale": 2, "steps": 2, "denoise": 0.5}, "steps": 2}
    if masked:
        mask = np.zeros((32, 32), np.uint8)
        mask[:, 16:] = 255
        Image.fromarray(mask).save(xl[0] / "mask.png")
        img |= {"masks": str(xl[0] / "mask.png"), "mask_blur": 0}
    plain = _render(xl, [], **img)
    on = _render(xl, [_unit(xl)], **img)
    assert np.abs(on - plain).mean() > 2
    assert np.array_equal(_render(xl, [_unit(xl, weight=0)], **img), plain)
    if masked:  # the unmasked half is the input's own
        kept = np.asarray(Image.open(xl[0] / "pic.png").convert("RGB"), np.int16)
        assert np.array_equal(on[:, :16], kept[:, :16])


def test_an_sd1_controlnet_on_the_sdxl_checkpoint_is_one_line_naming_the_units_model(xl):
    root, models, renderer = xl
    header = {"controlnet_cond_embedding.conv_in.weight": {"dtype": "U8", "shape": [1],
                                                          "data_offsets": [0, 1]}}  # fmt: skip
    raw = json.dumps(header).encode()
    (models / "sd15_canny.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0")
    with pytest.raises(RecipeError) as err:
        _render(xl, [_unit(xl), _unit(xl, model="sd15_canny")])
    text = str(err.value)
    assert text.startswith("controlnet[1].model: 'sd15_canny' is not allowed; an SDXL ControlNet")
    assert "sd15_canny is an SD 1.x ControlNet" in text and "\n" not in text


def test_an_sdxl_file_without_a_config_beside_it_loads_with_the_shipped_sdxl_config(
    tmp_path, monkeypatch
):
    """No config beside the file: the shipped SDXL ControlNet config (nothing fetched)."""
    from diffusers import ControlNetModel

    from sdbatch.render.controlnet import CONFIG, load_controlnet

    seen = {}

    def from_single_file(path, config=None, **kwargs):
        seen.update(path=path, config=config, offline=kwargs.get("local_files_only"))
        return torch.nn.Identity()

    monkeypatch.setattr(ControlNetModel, "from_single_file", from_single_file)
    path = tmp_path / "xl.safetensors"
    from safetensors.torch import save_file

    save_file({"add_embedding.linear_1.weight": torch.zeros(1)}, path)
    load_controlnet(str(path), "cpu", torch.float32, False, "sdxl")
    assert Path(seen["config"]) == CONFIG["sdxl"] and seen["offline"] is True
