"""Variation seeds with image inputs: A1111 blends the noise img2img adds to the picture's
latents with the variation seed's noise (the slerp txt2img's start noise gets), so
``subseed_strength`` works with ``init_images`` and ``masks`` as in txt2img. Each check is
what a user sees: strength 0 is the picture without a variation seed (and no ``Variation
seed`` field), a strength above 0 changes the picture and depends on the variation seed,
renders the same again, and the infotext and the manifest carry it. Five runs of one or two
32x32 pictures at 2 steps: about 12 s on a 2-core CPU, most of it loading the model per run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.shapes.world import Scene, render
from tests.conftest import run_cli


def _run(monkeypatch, capsys, out: Path, *args: str) -> dict[object, np.ndarray]:
    """Render on the embedded model; subseed (None when unused) -> pixels."""
    code, _, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={out}", "run.device=cpu",
        "run.progress=false", "size=32x32", "steps=2", "seeds=[1]", "denoise=0.6",
        "prompt=a blue square on a black background", *args,
    )  # fmt: skip
    assert code == 0, err
    rows = pq.read_table(out / "manifest").to_pylist()
    return {r["subseed"]: np.asarray(Image.open(out / r["image"]), np.int16) for r in rows}


def test_variation_seeds_reach_img2img_and_inpainting(tmp_path, monkeypatch, capsys):
    """Seed 1 at subseed_strength 0.5: ``seeds=[1,2]`` gives variation seeds 5 and 6 (A1111's
    rule: every image keeps the first seed, the variation seed steps)."""
    pic = tmp_path / "pic.png"
    Image.fromarray(render(Scene("circle", "red", "white", 0.55), 32)).save(pic)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    img = f"init_images={pic}"
    (plain,) = _run(monkeypatch, capsys, tmp_path / "plain", img).values()
    zero = _run(monkeypatch, capsys, tmp_path / "zero", img, "subseed=5", "subseed_strength=0")
    assert list(zero) == [None] and np.array_equal(zero[None], plain)
    half = ("subseed_strength=0.5",)
    both = _run(monkeypatch, capsys, tmp_path / "both", img, "subseed=5", "seeds=[1,2]", *half)
    assert sorted(both) == [5, 6]
    for got in both.values():
        assert np.abs(got - plain).mean() > 2
    assert np.abs(both[5] - both[6]).mean() > 2
    again = _run(monkeypatch, capsys, tmp_path / "again", img, "subseed=5", "seeds=[1,2]", *half)
    for sub in (5, 6):
        assert np.array_equal(again[sub], both[sub]), sub  # the same pictures again
    rows = pq.read_table(tmp_path / "both" / "manifest").to_pylist()
    row = next(r for r in rows if r["subseed"] == 5)
    params = parse_infotext(read_png_infotext(tmp_path / "both" / row["image"])).params
    assert params["Variation seed"] == "5" and params["Variation seed strength"] == "0.5"
    assert params["Denoising strength"] == "0.6" and row["subseed_strength"] == 0.5
    inpaint = (img, f"masks={tmp_path / 'mask.png'}", "mask_blur=0", "subseed=5", "seeds=[1,2]")
    varied = _run(monkeypatch, capsys, tmp_path / "inpaint", *inpaint, *half)
    kept = np.asarray(Image.open(pic).convert("RGB"), np.int16)
    for got in varied.values():
        assert np.array_equal(got[:, :16], kept[:, :16])  # unmasked: the input's own
    # the masked half follows the variation seed (both images have seed 1)
    assert np.abs(varied[5][:, 16:] - varied[6][:, 16:]).mean() > 2
