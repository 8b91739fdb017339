"""The shipped example ControlNet moves the shape where its condition says, judged from pixels.

``examples/webui/models/ControlNet/shapes_position.safetensors`` (``make train-controlnet``,
sdbatch.shapes.train_controlnet) was trained to put the shapes model's shape in the white box
of a position mask. Rendered through the CLI over the example masks in
``examples/inputs/positions`` (5 boxes: the corners and the centre), 3 prompts and 2 seeds:
at weight 1 the shape's centre (the judge's foreground blob) lies within a few pixels of its
box's centre, and colour, shape and background are still the prompt's; at weight 0 the
picture of a prompt and seed is the same whichever box the job was given, so it does not
follow the condition. Times on a 2-core CPU: a few seconds (two runs of 30 32x32 images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from sdbatch.outputs.reading import value
from sdbatch.shapes.judge import judge
from sdbatch.shapes.train_controlnet import shape_centre
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "webui" / "models" / "ControlNet"
POSITIONS = ROOT / "examples" / "inputs" / "positions"
PROMPTS = {
    "a red circle on a white background": ("red", "circle", "white"),
    "a blue triangle on a gray background": ("blue", "triangle", "gray"),
    "a magenta square on a white background": ("magenta", "square", "white"),
}
# measured (the print below; pytest -s): weight 1: mean 1.47 px, max 3.34, 27 of 30 judged
# right; weight 0: mean 7.65 px, max 12.78, the model's own placement
MAX_NEAR, FAR_FACTOR, MIN_RIGHT = 5.0, 3.0, 24


def _mask_centre(path: Path) -> tuple[float, float]:
    m = np.asarray(Image.open(path).convert("L"), np.float64)
    ys, xs = np.indices(m.shape)
    return float((xs * m).sum() / m.sum()), float((ys * m).sum() / m.sum())


def _render(monkeypatch, capsys, out: Path, weight: float) -> list[dict]:
    """One run over every prompt, mask and seed: one row per image (prompt, seed, mask, pixels)."""
    unit = f"[{{model:shapes_position,image:'{POSITIONS}',weight:{weight}}}]"
    code, _, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={out}", "run.device=cpu",
        "run.progress=false", "size=32x32", "steps=8", "sampler=DPM++ 2M", "cfg=7",
        "negative_prompt=", "seeds=[1,2]", "prompt=[" + ",".join(PROMPTS) + "]",
        f"folders.controlnet={MODELS}", f"controlnet={unit}", "batch_size=30",
    )  # fmt: skip
    assert code == 0, err
    return [
        {
            "prompt": r["prompt"],
            "seed": r["seed"],
            "mask": Path(r["controlnet"][0]["image"]),
            "pixels": np.asarray(Image.open(out / r["image"]).convert("RGB")),
            "row": r,
        }
        for r in pq.read_table(out / "manifest").to_pylist()
    ]


def _distance(row: dict) -> float:
    centre = shape_centre(row["pixels"])
    assert centre is not None, (row["prompt"], row["seed"], row["mask"].name)
    return float(np.hypot(*np.subtract(centre, _mask_centre(row["mask"]))))


def _judged_right(rows: list[dict]) -> int:
    """How many pictures the judge reads as their prompt's colour, shape and background."""
    verdicts = ((judge(r["pixels"]), PROMPTS[r["prompt"]]) for r in rows)
    return sum((v["colour"], v["shape"], v["background"]) == want for v, want in verdicts)


def test_the_shape_goes_where_the_mask_says_at_weight_1_and_not_at_weight_0(
    tmp_path, monkeypatch, capsys
):
    on = _render(monkeypatch, capsys, tmp_path / "w1", 1.0)
    off = _render(monkeypatch, capsys, tmp_path / "w0", 0.0)
    assert len(on) == len(off) == 30
    # the grid's and --where's name for a unit (sdbatch.outputs.reading.value): the dry run's
    assert value(on[0]["row"], "controlnet") == f"shapes_position ({on[0]['mask'].name}, 1)"
    assert sorted({r["mask"].name for r in on}) == sorted(p.name for p in POSITIONS.glob("*.png"))
    near, far = [_distance(r) for r in on], [_distance(r) for r in off]
    right, base = _judged_right(on), _judged_right(off)
    print(f"weight 1: mean {np.mean(near):.2f} px, max {max(near):.2f}, {right}/30 judged right; "
          f"weight 0: mean {np.mean(far):.2f} px, max {max(far):.2f}, {base}/30")  # fmt: skip
    assert max(near) < MAX_NEAR, near
    assert np.mean(far) > FAR_FACTOR * np.mean(near), (near, far)
    assert right >= MIN_RIGHT, right
    # at weight 0 the mask changes nothing: one picture per prompt and seed, whatever the box
    by_job: dict[tuple, list[np.ndarray]] = {}
    for r in off:
        by_job.setdefault((r["prompt"], r["seed"]), []).append(r["pixels"])
    for key, pictures in by_job.items():
        assert len(pictures) == 5 and all(np.array_equal(p, pictures[0]) for p in pictures), key


def test_controlnet_runs_resume_shard_and_do_not_depend_on_the_batch(tmp_path, monkeypatch, capsys):
    """One prompt x the five masks x one seed: shard 0 of 2 at batch 2 (the half a killed run
    leaves), then the whole run in the same folder at batch 3 renders only the rest; the pixels
    equal a one-batch run's to rounding; a rerun writes nothing; editing one condition image
    re-renders only its job (the job id holds each condition image's content hash)."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in POSITIONS.glob("*.png"):
        (masks / p.name).write_bytes(p.read_bytes())
    unit = f"[{{model:shapes_position,image:'{masks}',weight:1}}]"
    common = ("+recipe=quick", "run.device=cpu", "run.progress=false", "size=32x32", "steps=4",
              "sampler=DPM++ 2M", "negative_prompt=", "seeds=[3]",
              "prompt=[a blue triangle on a gray background]", f"folders.controlnet={MODELS}",
              f"controlnet={unit}")  # fmt: skip

    def run(out: Path, *extra: str) -> str:
        code, stdout, err = run_cli(monkeypatch, capsys, *common, f"output.dir={out}", *extra)
        assert code == 0, err
        return stdout

    def pictures(out: Path) -> dict[str, np.ndarray]:
        rows = pq.read_table(out / "manifest").to_pylist()
        assert len({r["job_id"] for r in rows}) == len(rows)  # no row twice
        return {r["job_id"]: np.asarray(Image.open(out / r["image"]), np.int16) for r in rows}

    ref, out = tmp_path / "ref", tmp_path / "out"
    run(ref, "batch_size=5")
    run(out, "batch_size=2", "shard.index=0", "shard.count=2")
    half = pictures(out)
    assert 0 < len(half) < 5
    assert f"done: {5 - len(half)} written, {len(half)} skipped" in run(out, "batch_size=3")
    a, b = pictures(ref), pictures(out)
    assert a.keys() == b.keys() and len(a) == 5
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1
    assert "done: 0 written, 5 skipped" in run(out, "batch_size=3")
    box = np.zeros((32, 32), np.uint8)
    box[2:12, 20:30] = 255  # top_right.png moved: its job alone renders again
    Image.fromarray(box).save(masks / "top_right.png")
    assert "done: 1 written, 4 skipped" in run(out, "batch_size=3")
    (new,) = [r for r in pq.read_table(out / "manifest").to_pylist() if r["job_id"] not in a]
    assert Path(new["controlnet"][0]["image"]).name == "top_right.png"


def test_the_demo_recipes_unit_takes_keys_it_does_not_set_from_the_command_line(
    monkeypatch, capsys
):
    """controlnet_demo's unit sets model, image and weight; ``controlnet.0.control_mode=...``
    on the command line sets its mode too (no ``++`` needed), and the dry run names it."""
    monkeypatch.chdir(ROOT)  # the recipe's folders.controlnet is relative to the repository
    code, out, err = run_cli(
        monkeypatch, capsys, "+recipe=controlnet_demo", "run.dry_run=true", "run.show_jobs=1",
        "controlnet.0.control_mode=My prompt is more important", "controlnet.0.weight=0.5",
    )  # fmt: skip
    assert code == 0, err
    assert "ControlNet shapes_position (bottom_left.png, 0.5, My prompt is more important)" in out
