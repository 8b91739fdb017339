"""Model upscalers for hires fix: sdbatch's ESRGAN-family module against spandrel's outputs,
tiling, and a recipe whose hires fix runs an upscaler file (tests/data/upscalers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdbatch import config
from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.render.upscalers import detect, load_state, model_upscale, run_tiled, upscale_to
from tests.conftest import run_cli

DATA = Path(__file__).resolve().parents[1] / "data" / "upscalers"
# file -> (architecture, scale, unshuffle) as spandrel detected them (make_oracle.py)
FILES = {
    "esrgan_old_x4_nf8_nb1.pth": ("RRDBNet", 4, 1),
    "realesrgan_x2plus_nf8_nb1.safetensors": ("RRDBNet", 2, 2),
    "compact_x4_nf8_nc4.safetensors": ("SRVGGNetCompact", 4, 1),
}


def oracle(name: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    with safe_open(DATA / f"{Path(name).stem}.spandrel.safetensors", "pt") as f:
        return f.get_tensor("input"), f.get_tensor("output"), f.metadata()


@pytest.mark.parametrize("name", FILES)
def test_architecture_and_output_match_spandrel(name):
    x, want, meta = oracle(name)
    arch, model = detect(load_state(DATA / name))
    assert (arch.name, arch.scale, arch.unshuffle) == FILES[name]
    assert str(arch.scale) == meta["scale"] and ("unshuffle" in meta["tags"]) == (
        arch.unshuffle > 1
    )
    with torch.no_grad():
        got = model.eval()(x).clamp(0, 1)  # spandrel (so A1111) clamps to [0, 1]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


def test_tiles_agree_with_one_piece():
    x = torch.rand(1, 3, 44, 52, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for name, tolerance in (
            ("compact_x4_nf8_nc4.safetensors", 1e-6),  # reach 6 px < 16 px of context: equal
            # these reach further than the context: seams differ (measured 6e-8 and 4e-7 with
            # these random weights; trained models can differ more)
            ("esrgan_old_x4_nf8_nb1.pth", 1e-5),
            ("realesrgan_x2plus_nf8_nb1.safetensors", 1e-5),
        ):
            model = detect(load_state(DATA / name))[1].eval()
            whole, tiled = model(x), run_tiled(model, x, tile=16, context=16)
            assert tiled.shape == whole.shape
            assert (tiled - whole).abs().max().item() < tolerance, name


def test_resize_follows_a1111s_loop():
    """A 2x model asked for 3x runs twice (64 -> 128 -> 256), then Lanczos down to 192."""
    model = detect(load_state(DATA / "realesrgan_x2plus_nf8_nb1.safetensors"))[1].eval()
    calls = []

    def step(image, _scale):
        calls.append(image.size)
        return model_upscale(model, image)

    out = upscale_to(Image.new("RGB", (64, 48), (90, 30, 200)), 192, 144, step)
    assert calls == [(64, 48), (128, 96)] and out.size == (192, 144)


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    root = tmp_path / "a1111"
    (root / "models" / "RealESRGAN").mkdir(parents=True)
    (root / "models" / "ESRGAN").mkdir()
    shutil.copy(DATA / "realesrgan_x2plus_nf8_nb1.safetensors",
                root / "models" / "RealESRGAN" / "RealESRGAN_x2plus.safetensors")  # fmt: skip
    shutil.copy(DATA / "esrgan_old_x4_nf8_nb1.pth", root / "models" / "ESRGAN" / "4x-Tiny.pth")
    (root / "models" / "VAE").mkdir()  # the embedded model's VAE, brighter: a VAE by name
    vae = load_file(EMBEDDED_MODEL_PATH / "vae" / "diffusion_pytorch_model.safetensors")
    vae["decoder.conv_out.bias"] += 0.2
    save_file(vae, root / "models" / "VAE" / "bright.safetensors")
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "upscaled.yaml").write_text(
        "name: upscaled\nprompt: a red circle on a white background\nseeds: 1\nsteps: 2\n"
        "size: 32x32\nbatch_size: 1\nmodel: {vae: bright}\n"
        "hires: {scale: 2, upscaler: R-ESRGAN 2x+, steps: 2, denoise: 0.5}\n"
    )
    monkeypatch.setenv("SDBATCH_RECIPES", str(folder))
    monkeypatch.setenv("SDBATCH_A1111", str(root))
    monkeypatch.chdir(tmp_path)
    config.register_configs()
    yield tmp_path
    monkeypatch.delenv("SDBATCH_RECIPES")
    config.register_configs()


def render(
    monkeypatch, capsys, out: Path, *args: str, recipe: str = "upscaled"
) -> tuple[np.ndarray, dict, Path]:
    code, _, err = run_cli(monkeypatch, capsys, f"+recipe={recipe}", f"output.dir={out}",
                           "run.device=cpu", "run.progress=false", *args)  # fmt: skip
    assert code == 0, err
    (row,) = pq.read_table(out / "manifest").to_pylist()
    png = out / row["image"]
    return np.asarray(Image.open(png)), row, png


def test_a_recipe_runs_hires_fix_through_a_model_upscaler(recipes, monkeypatch, capsys):
    pixels, row, real = render(monkeypatch, capsys, recipes / "real")
    params = parse_infotext(read_png_infotext(real)).params
    assert pixels.shape == (64, 64, 3) and params["Hires upscaler"] == "R-ESRGAN 2x+"
    assert params["VAE"] == "bright.safetensors"
    assert row["hires"] == "2x R-ESRGAN 2x+, 2 steps, denoise 0.5"
    lanczos, *_ = render(monkeypatch, capsys, recipes / "lanczos", "hires.upscaler=Lanczos")
    assert np.abs(pixels.astype(int) - lanczos).mean() > 1  # the model's picture, not a resize
    # the .pth pickle loads with model.allow_pickle on the command line (refused without it:
    # tests/integration/test_bad_input.py)
    esrgan, row, png = render(monkeypatch, capsys, recipes / "esrgan", "hires.upscaler=4x-Tiny",
                              "model.allow_pickle=true")  # fmt: skip
    assert parse_infotext(read_png_infotext(png)).params["Hires upscaler"] == "4x-Tiny"
    assert np.abs(esrgan.astype(int) - pixels).mean() > 1
    # replay maps the upscaler and the VAE back to files in SDBATCH_A1111's folders, and the
    # replayed recipe draws the same picture
    from sdbatch import tools

    replayed = recipes / "recipes" / "replayed.yaml"
    try:
        code = tools.main(["replay", str(real), "-o", str(replayed)])
    except SystemExit as exc:
        code = exc.code
    _, err = capsys.readouterr()
    text = replayed.read_text()
    assert code in (0, None) and "  upscaler: R-ESRGAN 2x+\n" in text, err
    assert "  vae: bright\n" in text and "VAE" not in err and "upscaler" not in err
    config.register_configs()
    again, *_ = render(monkeypatch, capsys, recipes / "again", recipe="replayed")
    np.testing.assert_array_equal(again, pixels)
