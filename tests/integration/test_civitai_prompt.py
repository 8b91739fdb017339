"""The whole of what a Civitai prompt asks for, in one run: a LoRA tag, an embedding in the
negative prompt, hires fix through a model upscaler and a VAE named by its stem, all found in
an A1111-shaped folder; then replay of the PNG renders the same picture again."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from sdbatch import config, tools
from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from tests.conftest import ROOT, run_cli

UPSCALERS = ROOT / "tests" / "data" / "upscalers"
WEBUI = ROOT / "examples" / "webui"
RECIPE = """\
name: civitai
prompt: "masterpiece, (a blue circle:1.1) on a white background <lora:orange:0.8>"
negative_prompt: "fuchsia, (worst quality:1.4)"
sampler: DPM++ 2M
steps: 4
size: 32x32
seeds: 7
batch_size: 1
model: {vae: bright}
hires: {scale: 2, upscaler: R-ESRGAN 2x+, steps: 2, denoise: 0.5}
"""


@pytest.fixture
def webui(tmp_path, monkeypatch):
    root = tmp_path / "webui"
    shutil.copytree(WEBUI, root)
    (root / "models" / "RealESRGAN").mkdir()
    shutil.copy(UPSCALERS / "realesrgan_x2plus_nf8_nb1.safetensors",
                root / "models" / "RealESRGAN" / "RealESRGAN_x2plus.safetensors")  # fmt: skip
    (root / "models" / "VAE").mkdir()
    vae = load_file(EMBEDDED_MODEL_PATH / "vae" / "diffusion_pytorch_model.safetensors")
    vae["decoder.conv_out.bias"] += 0.2  # another VAE than the model's own
    save_file(vae, root / "models" / "VAE" / "bright.safetensors")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "civitai.yaml").write_text(RECIPE)
    monkeypatch.setenv("SDBATCH_RECIPES", str(recipes))
    monkeypatch.setenv("SDBATCH_A1111", str(root))
    monkeypatch.chdir(tmp_path)
    config.register_configs()
    yield tmp_path
    monkeypatch.delenv("SDBATCH_RECIPES")
    config.register_configs()


def render(monkeypatch, capsys, recipe: str, out: Path, *args: str):
    code, _, err = run_cli(monkeypatch, capsys, f"+recipe={recipe}", f"output.dir={out}",
                           "run.device=cpu", "run.progress=false", *args)  # fmt: skip
    assert code == 0, err
    (row,) = pq.read_table(out / "manifest").to_pylist()
    return np.asarray(Image.open(out / row["image"])), row, out / row["image"]


def test_civitai_prompt_runs_and_replays_to_the_same_picture(webui, monkeypatch, capsys):
    pixels, row, png = render(monkeypatch, capsys, "civitai", webui / "first")
    params = parse_infotext(read_png_infotext(png)).params
    assert pixels.shape == (64, 64, 3)
    assert params["Lora hashes"].startswith("orange: ") and params["TI hashes"].startswith(
        "fuchsia: "
    )
    assert params["Hires upscaler"] == "R-ESRGAN 2x+" and params["VAE"] == "bright.safetensors"
    assert [(x["name"], x["te_weight"]) for x in row["loras"]] == [("orange", 0.8)]
    assert [x["name"] for x in row["embeddings"]] == ["fuchsia"]
    # without the LoRA tag, the embedding and the VAE the picture is another one
    plain, *_ = render(monkeypatch, capsys, "civitai", webui / "plain",
                       "prompt='masterpiece, (a blue circle:1.1) on a white background'",
                       "negative_prompt='(worst quality:1.4)'", "model.vae=null")  # fmt: skip
    assert np.abs(plain.astype(int) - pixels).mean() > 2
    replayed = webui / "recipes" / "replayed.yaml"
    try:
        code = tools.main(["replay", str(png), "-o", str(replayed)])
    except SystemExit as exc:
        code = exc.code
    _, err = capsys.readouterr()
    assert code in (0, None), err
    assert "warning" not in err.lower(), err  # every file was found again
    config.register_configs()
    again, *_ = render(monkeypatch, capsys, "replayed", webui / "again")
    np.testing.assert_array_equal(again, pixels)
