"""ControlNet end to end on the embedded shapes model with a tiny ControlNet made from its UNet.

The ControlNet is ``ControlNetModel.from_unet`` of the shapes UNet with its zero convolutions
(and the condition embedding's last layer) filled with seeded noise, so it pushes the picture
somewhere (an untrained one, not a learnt control). What the tests check is the plumbing a
user relies on: weight 1 changes pixels, weight 0 and ``guidance_end: 0`` give exactly the
picture without ControlNet (diffusers multiplies every residual by the weight, and a unit
outside its window has weight 0; adding zeros leaves the UNet's sums as they were), the
PNG's infotext and the manifest name the unit, and a ``.safetensors`` file loads offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.plan.controlnet import a1111_short_hash
from sdbatch.shapes.world import Scene, render
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory) -> Path:
    """models/ControlNet with the tiny ControlNet as a diffusers folder and as one file."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    from sdbatch.models import EMBEDDED_MODEL_PATH

    root = tmp_path_factory.mktemp("a1111") / "models" / "ControlNet"
    unet = UNet2DConditionModel.from_pretrained(EMBEDDED_MODEL_PATH, subfolder="unet")
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in cn.controlnet_cond_embedding.conv_out.parameters():
            p.normal_(0, 0.5)
        for m in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
            for p in m.parameters():
                p.normal_(0, 0.05)
    cn.save_pretrained(root / "tiny_cn")
    save_file(cn.state_dict(), root / "tiny_file.safetensors")
    cn.save_config(root / "tiny_file.config")  # the config beside a single file
    cond = root.parent.parent / "cond"
    cond.mkdir()
    pic = np.zeros((32, 32, 3), np.uint8)
    pic[8:24, 4:14] = 255
    Image.fromarray(pic).save(cond / "left.png")
    return root


def _run(monkeypatch, capsys, out: Path, cn: Path, units: str, *args: str) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={out}", "run.device=cpu",
        "run.progress=false", "size=32x32", "steps=6", "negative_prompt=", "seeds=[1,2]",
        "prompt=a red circle on a white background", f"folders.controlnet={cn}",
        f"controlnet={units}", *args,
    )  # fmt: skip
    assert code == 0, err


def _images(out: Path) -> dict[int, np.ndarray]:
    rows = pq.read_table(out / "manifest").to_pylist()
    return {r["seed"]: np.asarray(Image.open(out / r["image"]), np.int16) for r in rows}


def _unit(cn: Path, model: str = "tiny_cn", **extra) -> str:
    cond = cn.parent.parent / "cond" / "left.png"
    fields = [f"model:{model}", f"image:'{cond}'", *(f"{k}:{v}" for k, v in extra.items())]
    return "[{" + ",".join(fields) + "}]"


def test_weight_one_changes_pixels_weight_zero_and_an_empty_window_do_not(
    controlnet_dir, tmp_path, monkeypatch, capsys
):
    cn = controlnet_dir
    _run(monkeypatch, capsys, tmp_path / "plain", cn, "[]")
    plain = _images(tmp_path / "plain")
    _run(monkeypatch, capsys, tmp_path / "w1", cn, _unit(cn))
    on = _images(tmp_path / "w1")
    for seed in plain:
        assert np.abs(on[seed] - plain[seed]).mean() > 2, seed
    # two units (diffusers' MultiControlNetModel): one at weight 0, one with an empty window
    both = _unit(cn, weight=0)[:-1] + "," + _unit(cn, "tiny_file", guidance_end=0)[1:]
    _run(monkeypatch, capsys, tmp_path / "off", cn, both)
    off = _images(tmp_path / "off")
    for seed in plain:
        assert np.array_equal(off[seed], plain[seed]), seed
    # the single .safetensors file (config beside it) is the same model: the same pixels
    _run(monkeypatch, capsys, tmp_path / "file", cn, _unit(cn, model="tiny_file"))
    same = _images(tmp_path / "file")
    for seed in plain:
        assert np.array_equal(same[seed], on[seed]), seed
    out = tmp_path / "file"
    rows = pq.read_table(out / "manifest").to_pylist()
    h = a1111_short_hash(cn / "tiny_file.safetensors")
    text = read_png_infotext(out / rows[0]["image"])
    assert (
        f'ControlNet 0: "Module: none, Model: tiny_file [{h}], Weight: 1.0, Resize Mode: Crop and '
        "Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, "
        'Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"'
    ) in text
    assert parse_infotext(text).params["ControlNet 0"].startswith("Module: none, Model: tiny_file")
    units = rows[0]["controlnet"]
    assert len(units) == 1
    assert units[0]["model"] == "tiny_file" and units[0]["hash"] == h
    assert units[0]["weight"] == 1.0 and units[0]["start"] == 0.0 and units[0]["end"] == 1.0
    assert units[0]["image"].endswith("left.png") and len(units[0]["image_sha256"]) == 64
    two = pq.read_table(tmp_path / "off" / "manifest").to_pylist()[0]["controlnet"]
    assert [u["model"] for u in two] == ["tiny_cn", "tiny_file"]
    assert [u["end"] for u in two] == [1.0, 0.0]


def test_img2img_and_inpainting_take_controlnet(controlnet_dir, tmp_path, monkeypatch, capsys):
    cn = controlnet_dir
    pic = tmp_path / "pic.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(pic)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    img = (f"init_images={pic}", "denoise=0.8")
    _run(monkeypatch, capsys, tmp_path / "plain", cn, "[]", *img)
    plain = _images(tmp_path / "plain")
    _run(monkeypatch, capsys, tmp_path / "w1", cn, _unit(cn), *img)
    on = _images(tmp_path / "w1")
    _run(monkeypatch, capsys, tmp_path / "w0", cn, _unit(cn, weight=0), *img)
    off = _images(tmp_path / "w0")
    for seed in plain:
        assert np.abs(on[seed] - plain[seed]).mean() > 2, seed
        assert np.array_equal(off[seed], plain[seed]), seed
    _run(monkeypatch, capsys, tmp_path / "inpaint", cn, _unit(cn), *img,
         f"masks={tmp_path / 'mask.png'}", "mask_blur=0")  # fmt: skip
    kept = np.asarray(Image.open(pic).convert("RGB"), np.int16)
    for seed, got in _images(tmp_path / "inpaint").items():
        assert np.array_equal(got[:, :16], kept[:, :16]), seed  # unmasked: the input's own
        assert np.abs(got[:, 16:] - on[seed][:, 16:]).mean() < 255
