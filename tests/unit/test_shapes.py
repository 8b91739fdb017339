"""The shapes world and its judge (numpy + Pillow, no torch).

The judge is what every accuracy number of the embedded model rests on, so it is validated
here on generator images whose answers are known: clean, and blurred + noisy like a soft
model output.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from sdbatch.shapes import judge as J
from sdbatch.shapes import world
from sdbatch.shapes.plot import plot_losses


def test_no_torch_imported():
    code = "import sys, sdbatch.shapes, sdbatch.shapes.plot; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_generator_is_deterministic():
    a, sa = world.batch(7, 3, 16)
    b, sb = world.batch(7, 3, 16)
    c, _ = world.batch(7, 4, 16)
    assert sa == sb and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (16, 32, 32, 3) and a.dtype == np.uint8
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    assert world.sample_scene(rng1) == world.sample_scene(rng2)


def test_render_is_anti_aliased_and_inside_the_margin():
    scene = world.Scene("circle", "red", "white", size=0.6, x=0.5, y=0.5)
    img = world.render(scene, 32).astype(int)
    distinct = {tuple(p) for p in img.reshape(-1, 3)}
    assert len(distinct) > 3  # edge pixels are blends, not just two colours
    ring = np.concatenate(
        [
            img[:2].reshape(-1, 3),
            img[-2:].reshape(-1, 3),
            img[:, :2].reshape(-1, 3),
            img[:, -2:].reshape(-1, 3),
        ]
    )
    assert (ring == 255).all()
    assert tuple(img[16, 16]) == world.COLOURS["red"]
    for s in world.batch(0, 0, 200)[1]:  # every sampled shape keeps clear of the border
        assert world.MARGIN - 1e-9 <= s.x - s.size / 2 and s.x + s.size / 2 <= 1 - world.MARGIN
        assert world.MARGIN - 1e-9 <= s.y - s.size / 2 and s.y + s.size / 2 <= 1 - world.MARGIN


def test_render_any_resolution():
    scene = world.Scene("triangle", "blue", "black", 0.5, 0.5, 0.5)
    assert world.render(scene, 64).shape == (64, 64, 3)
    assert J.judge(world.render(scene, 64))["shape"] == "triangle"


def test_captions():
    s = world.Scene("circle", "red", "white")
    assert world.caption(s) == "a red circle on a white background"
    assert world.caption(s, "tags") == "red circle, white background"
    with pytest.raises(ValueError, match="caption style"):
        world.caption(s, "poem")
    words = set(world.vocabulary())
    for combo, style in itertools.product(world.ALL_COMBOS, world.CAPTION_STYLES):
        text = world.caption(world.Scene(combo[1], combo[0], combo[2]), style)
        assert set(text.replace(",", " , ").split()) <= words


def test_heldout_split_is_disjoint_and_covers_every_pair():
    train, held = set(world.TRAIN_COMBOS), set(world.HELDOUT_COMBOS)
    assert not train & held
    assert train | held == set(world.ALL_COMBOS) and len(world.ALL_COMBOS) == 54
    assert len(held) == 9
    for i, j in itertools.combinations(range(3), 2):  # every pair still seen in training
        pairs = {(c[i], c[j]) for c in world.ALL_COMBOS}
        assert pairs == {(c[i], c[j]) for c in train}
    for s in world.batch(1, 0, 500)[1]:
        assert s.combo not in world.HELDOUT
    assert all(s.combo in world.HELDOUT for s in world.batch(1, 0, 50, split="heldout")[1])


def test_palette_is_well_separated():
    lab = {k: J.to_lab(v) for k, v in world.COLOURS.items()}
    closest = min(np.linalg.norm(lab[a] - lab[b]) for a, b in itertools.combinations(lab, 2))
    assert closest > 50  # CIELAB units; red/orange-style neighbours are ~45


def test_judge_clean_generator_images():
    images, scenes = world.batch(2024, 0, 2000, split="all")
    acc = J.accuracy([J.judge(im) for im in images], scenes)
    assert acc["all"] >= 0.99, acc  # measured: 100%


@pytest.mark.parametrize(
    ("blur", "noise", "at_least"),
    [(1.0, 8.0, 0.99), (1.5, 16.0, 0.97)],  # measured on 2,000: 100% and 99.7% (shape)
)
def test_judge_blurred_noisy_images(blur, noise, at_least):
    images, scenes = world.batch(99, 1, 600, split="all")
    rng = np.random.default_rng(0)
    verdicts = [J.judge(J.degrade(im, blur, noise, rng)) for im in images]
    acc = J.accuracy(verdicts, scenes)
    assert acc["all"] >= at_least, acc
    assert acc["colour"] == 1.0 and acc["background"] == 1.0


def test_judge_sees_nothing_in_a_plain_or_noisy_background():
    flat = np.full((32, 32, 3), 128, np.uint8)
    for img in (flat, J.degrade(flat, 0, 16, np.random.default_rng(1))):
        v = J.judge(img)
        assert v["background"] == "gray" and v["shape"] is None and v["confidence"] == 0.0
    assert J.correct(J.judge(flat), world.Scene("circle", "red", "gray"))["all"] is False


def test_judge_accepts_float_images_and_reports_confidence():
    scene = world.Scene("square", "green", "gray", 0.5, 0.5, 0.5)
    img = world.render(scene).astype(np.float32) / 255.0  # as pipelines return them
    v = J.judge(img)
    assert (v["colour"], v["shape"], v["background"]) == ("green", "square", "gray")
    assert 0.5 < v["confidence"] <= 1.0
    assert set(v["scores"]) == {"colour", "shape", "background"}


def test_shape_decision_boundaries():
    assert J.classify_shape(0.785, 0.0)[0] == "circle"
    assert J.classify_shape(0.95, 0.0)[0] == "square"
    assert J.classify_shape(0.7, 0.08)[0] == "triangle"  # a blurred triangle: fill drifts up
    assert J.classify_shape(J.SQUARE_FILL, 0.0)[1] == 0.0  # on the boundary: no confidence


def test_largest_blob():
    m = np.zeros((8, 8), bool)
    m[1:3, 1:3] = True  # 4 pixels
    m[5:8, 4:8] = True  # 12 pixels
    blob = J.largest_blob(m)
    assert blob.sum() == 12 and not blob[1, 1]


def test_loss_plot(tmp_path):
    hist = [(i, "vae", 1.0 / (i + 1)) for i in range(50)]
    hist += [(i, "unet", 0.5 + 0.1 * np.sin(i)) for i in range(50, 120)]
    path = plot_losses(hist, tmp_path / "loss.png")
    assert path.stat().st_size > 1000
    assert plot_losses([], tmp_path / "empty.png").is_file()
