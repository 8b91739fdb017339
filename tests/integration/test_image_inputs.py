"""img2img and inpainting end to end on the embedded shapes model, judged by pixels.

The input pictures are drawn by sdbatch.shapes.world (the scenes the model was trained on):
a red circle on white and a blue square on black, 32x32. Thresholds, measured with
``pytest tests/integration/test_image_inputs.py`` on a CPU (and why they are what they are):

- img2img at denoise 0.05 (1 of 10 steps, A1111's rule) keeps the red circle on white in 4 of
  4 seeds against the prompt "a blue square on a black background"; at 0.9 (10 of 10) the
  prompt wins in 12 of 12. The test asks for 3 of 4 seeds each way (one miss allowed). From
  0.1 (2 steps) on, the tiny model already turns the circle into the prompt's square while
  keeping its colour and background (0 of 4 keep the shape), so 0.05 is the "low" strength.
- inpainting the right half: every pixel farther from the mask than its blur reaches is the
  input's own, exactly (A1111 pastes the input over the result through the blurred mask);
  inside the mask the prompt's blue-on-black replaces red-on-white: the mean change of the
  columns 20..31 is 119.4-120.3 levels of 255 over seeds 1-6 (denoise 0.9); the test asks
  for more than 90, far above what a kept picture would show (0).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.shapes.judge import judge
from sdbatch.shapes.world import Scene, render
from tests.conftest import run_cli

PROMPT = "a blue square on a black background"


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "masks").mkdir(parents=True)
    scenes = {
        "red_circle": Scene("circle", "red", "white", 0.55),
        "blue_square": Scene("square", "blue", "black", 0.55),
    }
    for name, scene in scenes.items():
        Image.fromarray(render(scene, 32)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a {scene.colour} {scene.shape} on a "
                                          f"{scene.background} background\n")  # fmt: skip
        mask = np.zeros((32, 32), np.uint8)
        mask[:, 16:] = 255  # the right half is repainted
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def _run(monkeypatch, capsys, out: Path, *args: str, steps: int = 10) -> str:
    code, stdout, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={out}", "run.device=cpu",
        "run.progress=false", "size=32x32", f"steps={steps}", "negative_prompt=", *args,
    )  # fmt: skip
    assert code == 0, err
    return stdout


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest").to_pylist()


def _pixels(out: Path, row: dict) -> np.ndarray:
    return np.asarray(Image.open(out / row["image"]).convert("RGB"), dtype=np.int16)


def _verdict(out: Path, row: dict) -> tuple:
    v = judge(_pixels(out, row).astype(np.uint8))
    return v["colour"], v["shape"], v["background"]


def test_low_denoise_keeps_the_picture_high_denoise_follows_the_prompt(
    pictures, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    src = pictures / "red_circle.png"
    stdout = _run(monkeypatch, capsys, out, f"init_images={src}", f"prompt={PROMPT}",
                  "denoise=[0.05,0.9]", "seeds={start:1,count:4}", "batch_size=8")  # fmt: skip
    assert "8 jobs = 1 prompts x 1 images x 2 denoise" in stdout
    rows = _rows(out)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    kept = [_verdict(out, r) == ("red", "circle", "white") for r in rows if r["denoise"] == 0.05]
    follows = [_verdict(out, r) == ("blue", "square", "black") for r in rows if r["denoise"] == 0.9]
    assert sum(kept) >= 3 and sum(follows) >= 3, (kept, follows)
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    for r in rows:
        assert r["init_image"] == str(src) and r["init_image_sha256"] == want
        assert r["mask"] is None and r["mask_sha256"] is None
        info = parse_infotext(read_png_infotext(out / r["image"]))
        assert info.params["Denoising strength"] == f"{r['denoise']:g}"
        assert "Mask blur" not in info.params and info.prompt == PROMPT


def test_inpainting_changes_the_masked_half_and_keeps_every_other_pixel(
    pictures, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    src = pictures / "red_circle.png"
    _run(monkeypatch, capsys, out, f"init_images={src}", f"masks={pictures / 'masks'}",
         f"prompt={PROMPT}", "denoise=0.9", "mask_blur=1", "seeds=[1,2]")  # fmt: skip
    before = np.asarray(Image.open(src).convert("RGB"), dtype=np.int16)
    rows = _rows(out)
    assert len(rows) == 2
    for r in rows:
        after = _pixels(out, r)
        # blur sigma 1: a 7-pixel kernel reaches 3 columns left of the edge at 16, and the
        # overlay doubles the blurred mask, so columns 0..12 are the input's own
        assert np.array_equal(after[:, :13], before[:, :13])
        change = np.abs(after[:, 20:] - before[:, 20:]).mean()
        assert change > 90, change
        assert r["mask"] == str(pictures / "masks" / "red_circle.png") and r["mask_sha256"]
        info = parse_infotext(r["infotext"])
        assert info.params["Mask blur"] == "1" and info.params["Denoising strength"] == "0.9"
    # replay: the infotext plus the picture and masks plan the same job again
    from sdbatch.plan.recipe import build_plan
    from sdbatch.views.replay import recipe_from_infotext

    replayed = recipe_from_infotext(rows[0]["infotext"], "replayed")
    values = {**replayed.values, "init_images": str(src), "masks": str(pictures / "masks")}
    (job,) = build_plan(values).jobs
    assert job.job_id == rows[0]["job_id"]


def test_resume_batches_and_edited_inputs(pictures, tmp_path, monkeypatch, capsys):
    """Half the batches (as a killed run leaves them), then the whole run in the same folder:
    only the rest renders, and the pictures match a run at another batch size to rounding.
    Editing one input re-renders only its jobs."""
    args = (f"init_images={pictures}", "prompt={caption}", "denoise=0.5", "seeds=[1]")
    ref, out = tmp_path / "ref", tmp_path / "out"
    _run(monkeypatch, capsys, ref, *args, "batch_size=4", steps=4)
    _run(monkeypatch, capsys, out, *args, "batch_size=1", "shard.index=0", "shard.count=2", steps=4)
    assert len(_rows(out)) == 1
    stdout = _run(monkeypatch, capsys, out, *args, "batch_size=1", steps=4)
    assert "done: 1 written, 1 skipped, 0 failed" in stdout
    a = {r["job_id"]: _pixels(ref, r) for r in _rows(ref)}
    b = {r["job_id"]: _pixels(out, r) for r in _rows(out)}
    assert a.keys() == b.keys() and len(a) == 2
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1
    prompts = {Path(r["init_image"]).stem: r["prompt"] for r in _rows(out)}
    assert prompts["red_circle"] == "a red circle on a white background"
    Image.fromarray(render(Scene("triangle", "blue", "black", 0.5), 32)).save(
        pictures / "blue_square.png"
    )
    stdout = _run(monkeypatch, capsys, out, *args, "batch_size=1", steps=4)
    assert "done: 1 written, 1 skipped, 0 failed" in stdout  # only the edited picture's job
    edited = [r for r in _rows(out) if r["job_id"] not in a]
    assert [Path(r["init_image"]).stem for r in edited] == ["blue_square"]


def test_only_masked_with_latent_nothing_keeps_the_inputs_size_and_pixels(
    pictures, tmp_path, monkeypatch, capsys
):
    """ "Only masked": the crop around a small mask is rendered at 32x32 and pasted back into
    the 64x64 input; outside the crop every pixel is the input's (mask_blur 0)."""
    big = Image.open(pictures / "red_circle.png").resize((64, 64), Image.Resampling.NEAREST)
    big.save(pictures / "big.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 40:56] = 255
    Image.fromarray(mask).save(tmp_path / "big_mask.png")
    out = tmp_path / "out"
    _run(monkeypatch, capsys, out, f"init_images={pictures / 'big.png'}",
         f"masks={tmp_path / 'big_mask.png'}", f"prompt={PROMPT}", "denoise=0.9",
         "mask_blur=0", "inpaint_full_res=true", "inpaint_full_res_padding=4",
         "inpainting_fill=latent nothing", "seeds=[1]")  # fmt: skip
    (row,) = _rows(out)
    after, before = _pixels(out, row), np.asarray(big, dtype=np.int16)
    assert after.shape == (64, 64, 3)
    outside = np.ones((64, 64), bool)
    outside[20:44, 36:60] = False  # the mask's box plus 4 pixels of padding
    assert np.array_equal(after[outside], before[outside])
    # measured 116-125 levels (seeds 1-3): the masked box starts from empty latents
    assert np.abs(after[24:40, 40:56] - before[24:40, 40:56]).mean() > 60
    info = parse_infotext(row["infotext"])
    assert info.params["Inpaint area"] == "Only masked"
    assert info.params["Masked area padding"] == "4"
    assert info.params["Masked content"] == "latent nothing"
