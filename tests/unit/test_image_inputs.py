"""Image inputs, plan side (no torch): A1111's resize modes and mask preparation, masks matched
by name, captions, A1111's img2img step rule, and job ids (txt2img ids unchanged; an edited
picture changes only its own jobs' ids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdbatch.errors import RecipeError
from sdbatch.plan.image_inputs import a1111_steps, input_files, parse_options
from sdbatch.plan.image_ops import (
    MaskOptions,
    apply_overlay,
    binary_mask,
    blur_mask,
    crop_region,
    expand_crop_region,
    gaussian_kernel,
    prepare,
    resize_image,
)
from sdbatch.plan.recipe import build_plan
from sdbatch.plan.schema import as_config
from tests.conftest import quick_cfg

RED, GREEN, BLUE = (220, 30, 30), (20, 160, 40), (30, 60, 230)


def _two_halves(w: int, h: int, a=RED, b=BLUE, vertical: bool = True) -> Image.Image:
    im = np.zeros((h, w, 3), np.uint8)
    if vertical:
        im[:, : w // 2], im[:, w // 2 :] = a, b
    else:
        im[: h // 2], im[h // 2 :] = a, b
    return Image.fromarray(im)


def test_just_resize_stretches_to_the_size():
    out = resize_image("Just resize", _two_halves(40, 20), 16, 24)
    assert out.size == (16, 24)
    a = np.asarray(out)
    assert tuple(a[12, 2]) == RED and tuple(a[12, 13]) == BLUE


def test_crop_and_resize_cuts_the_sides_of_a_wide_picture():
    # 80x20: red | green | green | blue quarters; into 20x20 the middle half is kept
    im = np.zeros((20, 80, 3), np.uint8)
    im[:, :20], im[:, 20:60], im[:, 60:] = RED, GREEN, BLUE
    a = np.asarray(resize_image("Crop and resize", Image.fromarray(im), 20, 20))
    assert a.shape == (20, 20, 3)
    assert np.abs(a.astype(int) - GREEN).max() <= 2  # no red or blue left


def test_resize_and_fill_stretches_the_edge_rows_into_the_bands():
    # 40x20 (green top row, red below) into 20x20: scaled to 20x10 at rows 5..14; the bands
    # above and below repeat the first and last rows
    im = np.zeros((20, 40, 3), np.uint8)
    im[:] = RED
    im[:4] = GREEN
    a = np.asarray(resize_image("Resize and fill", Image.fromarray(im), 20, 20)).astype(int)
    assert a.shape == (20, 20, 3)
    # Lanczos mixes a little of the next row into the edge row: green within 12 levels
    assert np.abs(a[:5] - GREEN).max() <= 12 and np.abs(a[15:] - RED).max() <= 12
    assert np.abs(a[10] - RED).max() <= 12


def test_an_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError):
        resize_image("Stretch", _two_halves(8, 8), 8, 8)
    cfg = as_config(quick_cfg(resize_mode="Stretch"))
    with pytest.raises(RecipeError, match="resize_mode.*Just resize, Crop and resize"):
        parse_options(cfg)


def test_options_take_a1111_names_and_api_indexes():
    cfg = as_config(
        quick_cfg(resize_mode=1, inpainting_mask_invert=1, inpainting_fill="Latent Noise")
    )
    o = parse_options(cfg)
    assert (o.resize_mode, o.invert, o.fill) == ("Crop and resize", True, "latent noise")
    cfg = as_config(quick_cfg(inpainting_fill="blur"))
    with pytest.raises(RecipeError, match="inpainting_fill"):
        parse_options(cfg)


def test_mask_is_rounded_from_alpha_or_grey_and_blurred_with_a1111s_kernel():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, 4:, 3] = 200  # alpha above 128 on the right
    assert np.asarray(binary_mask(Image.fromarray(rgba))).tolist()[0] == [0] * 4 + [255] * 4
    grey = Image.fromarray(np.full((4, 4), 100, np.uint8))
    assert np.asarray(binary_mask(grey)).max() == 0  # 100 <= 128: not masked
    k = gaussian_kernel(4)
    assert len(k) == 21 and k.sum() == pytest.approx(1)  # 2 * int(2.5 * 4 + 0.5) + 1
    step = np.zeros((1, 40), np.uint8)
    step[:, 20:] = 255
    row = np.asarray(blur_mask(Image.fromarray(step), 4))[0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and row[19] + row[20] == 255  # symmetric edge
    assert np.all(np.diff(row) >= 0) and 0 < row[15] < 40


def test_only_masked_crop_is_the_box_plus_padding_grown_to_the_jobs_aspect():
    m = np.zeros((64, 64), np.uint8)
    m[10:14, 20:40] = 255  # 20 wide, 4 tall
    region = crop_region(Image.fromarray(m), 2)
    assert region == (18, 8, 42, 16)
    assert expand_crop_region(region, 32, 32, 64, 64) == (18, 0, 42, 24)  # 24x24, kept inside
    assert crop_region(Image.fromarray(np.zeros((8, 8), np.uint8)), 4) is None


def _scene() -> tuple[Image.Image, Image.Image]:
    picture = _two_halves(32, 32, RED, (255, 255, 255))
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 16:28] = 255
    return picture, Image.fromarray(m)


def test_unmasked_pixels_come_back_from_the_overlay_exactly():
    picture, mask = _scene()
    prep = prepare(picture, mask, 32, 32, "Just resize", MaskOptions(blur=2), factor=4)
    assert prep.latent_mask.shape == (8, 8) and set(np.unique(prep.latent_mask)) <= {0.0, 1.0}
    rendered = Image.new("RGB", (32, 32), GREEN)
    out = np.asarray(apply_overlay(rendered, prep)).astype(int)
    src = np.asarray(picture).astype(int)
    far = np.ones((32, 32), bool)
    far[2:30, 10:32] = False  # the mask, its blur and the doubled overlay mask's reach
    assert np.array_equal(out[far], src[far])
    assert np.abs(out[14:18, 20:24] - GREEN).max() == 0  # the middle of the mask: all new


def test_only_masked_renders_the_crop_and_pastes_it_back_at_the_inputs_size():
    picture, mask = _scene()
    big = picture.resize((64, 64), Image.Resampling.NEAREST)
    big_mask = mask.resize((64, 64), Image.Resampling.NEAREST)
    opts = MaskOptions(blur=0, full_res=True, padding=4)
    prep = prepare(big, big_mask, 32, 32, "Just resize", opts, factor=4)
    assert prep.image.size == (32, 32) and prep.paste_to == (24, 12, 40, 40)
    out = apply_overlay(Image.new("RGB", (32, 32), GREEN), prep)
    assert out.size == (64, 64)
    a, src = np.asarray(out).astype(int), np.asarray(big).astype(int)
    outside = np.ones((64, 64), bool)
    outside[16:48, 32:56] = False
    assert np.array_equal(a[outside], src[outside])
    assert np.abs(a[30:34, 40:48] - GREEN).max() == 0


def test_fill_paints_the_hole_with_the_colours_around_it():
    picture = Image.new("RGB", (32, 32), BLUE)
    picture.paste(Image.new("RGB", (8, 8), RED), (12, 12))
    m = np.zeros((32, 32), np.uint8)
    m[10:22, 10:22] = 255
    prep = prepare(picture, Image.fromarray(m), 32, 32, "Just resize",
                   MaskOptions(blur=0, fill="fill"), factor=4)  # fmt: skip
    hole = np.asarray(prep.image).astype(int)[14:18, 14:18]
    assert np.abs(hole - BLUE).max() < 40  # the red square is gone: blue flows in


def test_a1111_runs_int_min_denoise_0999_times_steps_plus_one_steps():
    assert a1111_steps(20, 0.5)[0] == 11  # t_enc 10: sigmas[9:], 11 denoiser steps
    assert a1111_steps(20, 0.75)[0] == 16
    assert a1111_steps(20, 1.0) == (20, 1.0)  # min(1, 0.999) * 20 -> 19 + 1
    assert a1111_steps(8, 0.0)[0] == 1
    for steps in (1, 7, 20, 50):
        for d in np.linspace(0, 1, 41):
            n, strength = a1111_steps(steps, float(d))
            assert int(steps * strength) == n == min(int(min(d, 0.999) * steps) + 1, steps)


def _inputs(root: Path) -> Path:
    pics, masks = root / "pics", root / "masks"
    pics.mkdir(parents=True)
    masks.mkdir()
    for name, colour in (("a", RED), ("b", BLUE)):
        Image.new("RGB", (32, 32), colour).save(pics / f"{name}.png")
        Image.new("L", (32, 32), 255).save(masks / f"{name}.png")
    (pics / "a.txt").write_text("a red square\nplain\n")
    (pics / "notes.md").write_text("not a picture")
    return root


def _plan(tmp_path: Path, **kw):
    cfg = quick_cfg(**{"size": "32x32", "seeds": [1], "prompt": ["x"], **kw})
    return build_plan(cfg, recipe_dirs=[tmp_path])


def test_folder_glob_and_list_name_the_same_pictures_relative_to_the_recipe_folder(tmp_path):
    root = _inputs(tmp_path)
    by_folder = input_files(as_config(quick_cfg(init_images="pics")), [root], captions=True)
    by_glob = input_files(as_config(quick_cfg(init_images="pics/*.png")), [root], captions=True)
    listed = [str(root / "pics/a.png"), "pics/b.png"]
    by_list = input_files(as_config(quick_cfg(init_images=listed)), [root], captions=True)
    assert [f.name for f in by_folder] == ["a.png", "b.png"]
    assert [f.sha256 for f in by_glob] == [f.sha256 for f in by_folder]
    assert [f.sha256 for f in by_list] == [f.sha256 for f in by_folder]
    assert by_folder[0].caption == "a red square, plain" and by_folder[1].caption is None


def test_masks_match_pictures_by_stem_or_one_mask_serves_all(tmp_path):
    root = _inputs(tmp_path)
    (root / "masks/b.png").rename(root / "masks/b.webp.png")  # stem 'b.webp': no match for b
    with pytest.raises(RecipeError, match=r"masks: 'b' .*pics/b.png has none"):
        input_files(as_config(quick_cfg(init_images="pics", masks="masks")), [root], True)
    one = input_files(
        as_config(quick_cfg(init_images="pics", masks="masks/a.png")), [root], captions=False
    )
    assert {f.mask for f in one} == {str(root / "masks/a.png")}
    with pytest.raises(RecipeError, match="masks only together with init_images"):
        input_files(as_config(quick_cfg(masks="masks")), [root], captions=False)


def test_bad_pictures_are_one_line_naming_field_and_file(tmp_path):
    root = _inputs(tmp_path)
    (root / "pics/c.png").write_bytes(b"not a png")
    with pytest.raises(RecipeError, match=r"init_images: '.*c.png' .*not one"):
        _plan(root, init_images="pics")
    with pytest.raises(RecipeError, match=r"init_images: 'nope/\*.png' .*not found"):
        _plan(root, init_images="nope/*.png")
    with pytest.raises(RecipeError, match="denoise: 2 .*0..1"):
        _plan(root, init_images="pics/a.png", denoise=2)


def test_caption_fills_the_template_and_a_missing_one_is_an_error_when_used(tmp_path):
    root = _inputs(tmp_path)
    plan = _plan(root, init_images="pics/a.png", prompt=None, template="{caption}, {style}",
                 vars={"style": ["oil"]})  # fmt: skip
    (job,) = plan.jobs
    assert job.prompt == "a red square, plain, oil" and job.template == "{caption}, {style}"
    assert dict(job.vars) == {"style": "oil", "caption": "a red square, plain"}
    with pytest.raises(RecipeError, match=r"init_images: '.*b.png' .*caption file"):
        _plan(root, init_images="pics", prompt="{caption}")
    assert len(_plan(root, init_images="pics", prompt="no caption used").jobs) == 2


def test_txt2img_ids_do_not_change_and_image_ids_follow_the_pictures_content(tmp_path):
    root = _inputs(tmp_path)
    plain = [j.job_id for j in _plan(root).jobs]
    assert [j.job_id for j in _plan(root, denoise=0.3, mask_blur=9).jobs] == plain
    before = {j.image.file.name: j.job_id for j in _plan(root, init_images="pics").jobs}
    assert len(set(before.values())) == 2 and not set(before.values()) & set(plain)
    Image.new("RGB", (32, 32), GREEN).save(root / "pics/b.png")  # edit one picture
    after = {j.image.file.name: j.job_id for j in _plan(root, init_images="pics").jobs}
    assert after["a.png"] == before["a.png"] and after["b.png"] != before["b.png"]
    # mask options join the id only with a mask; denoise always (with a picture)
    no_mask = {j.job_id for j in _plan(root, init_images="pics", mask_blur=9).jobs}
    assert no_mask == set(after.values())
    masked = {j.job_id for j in _plan(root, init_images="pics", masks="masks").jobs}
    blurred = {j.job_id for j in _plan(root, init_images="pics", masks="masks", mask_blur=9).jobs}
    assert len(masked | blurred | no_mask) == 6
    swept = _plan(root, init_images="pics", denoise=[0.3, 0.6])
    assert len({j.job_id for j in swept.jobs}) == 4
    assert "4 jobs = 1 prompts x 2 images x 2 denoise" in swept.describe()


def test_batches_hold_one_strength_and_pictures_of_either_kind(tmp_path):
    root = _inputs(tmp_path)
    plan = _plan(root, init_images="pics", denoise=[0.3, 0.6], seeds=[1, 2], batch_size=8)
    assert [len(b.jobs) for b in plan.batches] == [4, 4]
    for b in plan.batches:
        assert len({j.image.denoise for j in b.jobs}) == 1
        assert {j.image.file.name for j in b.jobs} == {"a.png", "b.png"}
