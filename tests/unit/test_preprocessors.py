"""ControlNet's canny module against OpenCV called as the extension calls it (pure, ms)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from sdbatch.plan.preprocessors import canny, preprocess, preprocess_image
from sdbatch.shapes.world import Scene, render


def extension_canny(img: np.ndarray, res: int, low: int, high: int) -> np.ndarray:
    """PreprocessorCanny of sd-webui-controlnet, step by step: short side to ``res`` (cubic
    up), edge-padded to multiples of 64, cv2.Canny, padding cut, grey to RGB."""
    h_raw, w_raw = img.shape[:2]
    k = res / min(h_raw, w_raw)
    h, w = round(h_raw * k), round(w_raw * k)
    big = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(big, [[0, -h % 64], [0, -w % 64], [0, 0]], mode="edge")
    edges = cv2.Canny(padded, low, high)[:h, :w]
    return np.stack([edges] * 3, axis=2)


@pytest.fixture
def picture() -> np.ndarray:
    """A 128-pixel shapes-world picture: 4x up to 512 keeps its outline sharp enough for
    the default thresholds (32 pixels blown up 16x have none above 100)."""
    return render(Scene("circle", "red", "white", 0.55), 128)


def test_canny_is_the_extensions_canny_bit_for_bit(picture):
    got = canny(picture)
    assert got.shape == (512, 512, 3) and got.dtype == np.uint8
    assert np.array_equal(got, extension_canny(picture, 512, 100, 200))
    assert set(np.unique(got)) == {0, 255}  # white edges on black
    assert np.array_equal(got[..., 0], got[..., 2])
    assert 0.001 < (got[..., 0] == 255).mean() < 0.05  # an outline, not a fill
    small = render(Scene("circle", "red", "white", 0.55), 32)
    assert not canny(small).any()  # as in the extension: 16x bicubic leaves soft edges
    assert np.array_equal(canny(small, 64), extension_canny(small, 64, 100, 200))
    assert canny(small, 64).any()


def test_a_picture_not_a_multiple_of_64_is_padded_by_its_edge_and_cut_back():
    wide = np.full((30, 50, 3), 255, np.uint8)
    wide[:, 40:] = 0  # a dark band up to the right edge: no edge where the padding starts
    got = canny(wide, 256, 100, 200)
    assert got.shape == (256, round(50 * 256 / 30), 3)
    assert np.array_equal(got, extension_canny(wide, 256, 100, 200))
    assert not got[:, -3:].any()


def test_thresholds_and_resolution_change_the_map(picture):
    soft = render(Scene("circle", "red", "white", 0.55), 64)  # 8x up: edges of all strengths
    low, default, high = (canny(soft, 512, a, b) for a, b in [(1, 2), (100, 200), (250, 255)])
    assert (low > 0).sum() > (default > 0).sum() > (high > 0).sum() > 0
    assert np.array_equal(high, extension_canny(soft, 512, 250, 255))
    default = canny(picture)
    assert np.array_equal(canny(picture, 512, 200, 100), default)  # cv2 swaps them
    assert canny(picture, 256).shape == (256, 256, 3)
    assert not np.array_equal(canny(picture, 256), default[::2, ::2])


def test_none_hands_the_picture_over_and_pil_pictures_go_through(picture):
    assert preprocess("none", picture, ()) is picture
    im = Image.fromarray(picture)
    assert preprocess_image("none", im, ()) is im
    out = preprocess_image("canny", im, (128, 100, 200))
    assert out.size == (128, 128) and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), extension_canny(picture, 128, 100, 200))


def test_the_preprocess_tool_writes_the_map_a_run_uses(picture, tmp_path, capsys):
    from sdbatch import tools
    from sdbatch.plan.image_ops import resize_image

    Image.fromarray(picture).save(tmp_path / "in.png")

    def tool(*argv: str) -> int:
        with pytest.raises(SystemExit) as exc:
            tools.main(["preprocess", str(tmp_path / "in.png"), *argv])
        return exc.value.code

    assert tool("-o", str(tmp_path / "e.png"), "--threshold-a", "50") == 0
    assert "(512x512, module canny, processor_res 512, threshold_a 50" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e.png")), canny(picture, 512, 50))
    assert tool("-o", str(tmp_path / "s.png"), "--size", "48x32", "--processor-res", "256") == 0
    want = resize_image("Crop and resize", Image.fromarray(canny(picture, 256)), 48, 32)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), np.asarray(want))
    capsys.readouterr()
    assert tool("-o", str(tmp_path / "x.png"), "--threshold-b", "256") == 2
    err = capsys.readouterr().err
    assert err == "error: --threshold-b: 256.0 is not allowed; an integer in 1..255\n"
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "raw, job, resize, want",
    [
        # a 64x32 picture (W x H) for a 32x32 job: k0 = 32/32 = 1, k1 = 32/64 = 0.5, short side 32
        ((64, 32), (32, 32), "Resize and Fill", 16),  # min(k0, k1) * 32
        ((64, 32), (32, 32), "Crop and Resize", 32),  # max(k0, k1) * 32
        ((64, 32), (32, 32), "Just Resize", 32),
        # 640x480 for 512x768: k0 = 768/480 = 1.6, k1 = 512/640 = 0.8, short side 480
        ((640, 480), (512, 768), "Resize and Fill", 384),
        ((640, 480), (512, 768), "Crop and Resize", 768),
        # 300x200 for 512x512: k0 = 2.56, k1 = 1.7067: 341.33 rounds to 341
        ((300, 200), (512, 512), "Resize and Fill", 341),
        ((300, 200), (512, 512), "Just Resize", 512),
        ((16, 16), (4096, 4096), "Crop and Resize", 4096),  # not held to the slider's 2048
        ((1000, 1), (64, 64), "Resize and Fill", 1),  # 0.064 rounds to 0: at least 1
    ],
)
def test_pixel_perfect_resolution_is_the_extensions(raw, job, resize, want):
    from sdbatch.plan.preprocessors import pixel_perfect_resolution, unit_settings

    (raw_w, raw_h), (w, h) = raw, job
    assert pixel_perfect_resolution(raw_h, raw_w, h, w, resize) == want
    assert unit_settings((512, 100, 200), True, raw, job, resize) == (want, 100, 200)
    assert unit_settings((512, 100, 200), False, raw, job, resize) == (512, 100, 200)
    assert unit_settings((), True, raw, job, resize) == ()  # module none: nothing to set


def test_the_preprocess_tool_computes_pixel_perfect_from_size(picture, tmp_path, capsys):
    from sdbatch import tools

    wide = np.concatenate([picture, picture[:, ::-1]], axis=1)  # 256x128
    Image.fromarray(wide).save(tmp_path / "in.png")

    def tool(*argv: str) -> int:
        with pytest.raises(SystemExit) as exc:
            tools.main(["preprocess", str(tmp_path / "in.png"), *argv])
        return exc.value.code

    # 256x128 to 256x256, Resize and Fill: min(256/128, 256/256) * 128 = 128
    fill = ("--size", "256x256", "--resize-mode", "Resize and Fill")
    assert tool("-o", str(tmp_path / "p.png"), "--pixel-perfect", *fill) == 0
    said = capsys.readouterr().out
    assert (
        "module canny, processor_res 128, threshold_a 100, threshold_b 200, pixel perfect" in said
    )
    assert tool("-o", str(tmp_path / "r.png"), "--processor-res", "128", *fill) == 0
    perfect = np.asarray(Image.open(tmp_path / "p.png"))
    assert np.array_equal(perfect, np.asarray(Image.open(tmp_path / "r.png")))
    assert tool("-o", str(tmp_path / "d.png"), *fill) == 0  # processor_res 512: other edges
    assert not np.array_equal(perfect, np.asarray(Image.open(tmp_path / "d.png")))
    capsys.readouterr()
    assert tool("-o", str(tmp_path / "x.png"), "--pixel-perfect") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pixel-perfect: True is not allowed; given with --size WxH")
    assert err.count("\n") == 1 and not (tmp_path / "x.png").exists()
    assert tool("-o", str(tmp_path / "x.png"), "--module", "none", "--pixel-perfect") == 2
    assert (
        "--pixel-perfect: True is not allowed; false with module: none" in capsys.readouterr().err
    )
