"""Hires fix, variation seeds and RNG through real renders on the tiny model."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.run.runner import execute
from tests.conftest import quick_cfg


def images(out) -> dict:
    return {
        (r["prompt"], r["seed"], r["subseed"]): np.asarray(Image.open(out / r["image"]))
        for r in pq.read_table(out / "manifest").to_pylist()
    }


def test_hires_fix_renders_at_the_target_size_and_records_it(tmp_path):
    hires = {"scale": 2, "upscaler": "latent", "steps": 2, "denoise": 0.5}
    cfg = quick_cfg(prompt="a red circle", seeds=[1], steps=2, hires=hires)
    assert execute(cfg, tmp_path / "latent").written == 1
    (row,) = pq.read_table(tmp_path / "latent" / "manifest").to_pylist()
    png = tmp_path / "latent" / row["image"]
    assert Image.open(png).size == (128, 128)
    assert row["hires"] == "2x Latent, 2 steps, denoise 0.5" and (row["width"], row["height"]) == (
        64,
        64,
    )
    params = parse_infotext(read_png_infotext(png)).params
    assert params["Hires upscale"] == "2" and params["Hires upscaler"] == "Latent"
    lanczos = quick_cfg(prompt="a red circle", seeds=[1], steps=2,
                        hires={**hires, "scale": 1.5, "upscaler": "lanczos"})  # fmt: skip
    assert execute(lanczos, tmp_path / "lanczos").written == 1
    (row,) = pq.read_table(tmp_path / "lanczos" / "manifest").to_pylist()
    assert Image.open(tmp_path / "lanczos" / row["image"]).size == (96, 96)


def test_variation_strength_blends_between_seed_and_subseed(tmp_path):
    # Euler draws no noise after the first step, so the initial noise decides everything.
    base = quick_cfg(prompt="a red circle", sampler="Euler", steps=2, batch_size=1)
    execute({**base, "seeds": [1, 5]}, tmp_path / "plain")
    plain = images(tmp_path / "plain")
    execute({**base, "seeds": [1], "subseed": 5, "subseed_strength": 1.0}, tmp_path / "full")
    (full,) = images(tmp_path / "full").values()
    assert np.array_equal(full, plain[("a red circle", 5, None)])  # strength 1 = the subseed
    execute({**base, "seeds": [1], "subseed": 5, "subseed_strength": 0.3}, tmp_path / "part")
    (part,) = images(tmp_path / "part").values()
    seed1, seed5 = plain[("a red circle", 1, None)], plain[("a red circle", 5, None)]
    assert not np.array_equal(part, seed1) and not np.array_equal(part, seed5)
    # closer to the main seed's picture than to the subseed's at strength 0.3
    d1 = np.abs(part.astype(int) - seed1).mean()
    d5 = np.abs(part.astype(int) - seed5).mean()
    assert d1 < d5


def test_variation_seeds_batch_like_single_renders(tmp_path):
    cfg = quick_cfg(prompt="x", seeds={"start": 3, "count": 4}, subseed=50, subseed_strength=0.5)
    execute({**cfg, "batch_size": 1}, tmp_path / "b1")
    execute({**cfg, "batch_size": 4}, tmp_path / "b4")
    a, b = images(tmp_path / "b1"), images(tmp_path / "b4")
    assert a.keys() == b.keys() and len(a) == 4
    assert max(int(np.abs(a[k].astype(int) - b[k]).max()) for k in a) <= 1
