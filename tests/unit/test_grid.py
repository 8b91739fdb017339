"""Grids, animations and the gallery's data, on synthetic runs of solid-colour PNGs (no torch)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from sdbatch.errors import UserError
from sdbatch.outputs import reading as row_tools
from sdbatch.outputs.infotext import format_infotext, parse_infotext, read_png_infotext
from sdbatch.outputs.manifest import SCHEMA, Manifest
from sdbatch.tools import main
from sdbatch.views import animate as anim
from sdbatch.views import fonts, grid
from sdbatch.views.gallery import gallery_data, script_json

NOW = datetime(2026, 11, 25, tzinfo=timezone.utc)
STYLES = ["a", "b", "c"]
CFGS = [5.0, 7.0]
COLOURS = {
    ("a", 5.0): (255, 0, 0), ("b", 5.0): (0, 255, 0), ("c", 5.0): (0, 0, 255),
    ("a", 7.0): (255, 255, 0), ("b", 7.0): (0, 255, 255), ("c", 7.0): (255, 0, 255),
}  # fmt: skip


def make_run(root: Path, specs: list[dict], size: int = 64) -> Path:
    """An output folder: images/<job>.png in each spec's ``colour`` plus manifest rows."""
    rows = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        colour = spec.pop("colour", None)
        style = spec.pop("style", "a")
        job = spec.pop("job_id", f"{i:016x}")
        row = {f.name: None for f in SCHEMA}
        row.update(
            job_id=job, recipe="r", prompt=f"a cat, {style}", negative_prompt="blurry",
            template="a cat, {style}", vars=[("style", style)], sampler="Euler a", steps=20,
            cfg=7.0, seed=1, width=size, height=size, status="ok", started=NOW, finished=NOW,
        )  # fmt: skip
        row.update(spec)
        if row["status"] == "ok" and colour is not None:
            row["image"] = f"images/{job}.png"
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size), colour).save(root / row["image"])
        params = {"Steps": row["steps"], "Sampler": row["sampler"], "CFG scale": row["cfg"]}
        params |= {"Seed": row["seed"], "Size": f"{size}x{size}", "Model": "sdbatch-shapes"}
        row["infotext"] = format_infotext(row["prompt"], row["negative_prompt"], params)
        rows.append(row)
    Manifest(root / "manifest").append(rows)
    return root


@pytest.fixture
def run6(tmp_path) -> Path:
    """3 styles x 2 CFG values, one colour each."""
    specs = [dict(style=s, cfg=c, colour=COLOURS[s, c]) for c in CFGS for s in STYLES]
    return make_run(tmp_path / "out", specs)


def cell_centre(left: int, top: int, i: int, j: int, size: int = 64) -> tuple[int, int]:
    return left + i * size + size // 2, top + j * size + size // 2


def dark_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    return sum(image.crop(box).convert("L").histogram()[:128])


def test_labels_are_a1111_infotext_names():
    assert row_tools.label("cfg", 7.0) == "CFG scale: 7"
    assert row_tools.label("cfg", 7.5) == "CFG scale: 7.5"
    assert row_tools.label("sampler", "Euler a") == "Sampler: Euler a"
    assert row_tools.label("steps", 20) == "Steps: 20"
    assert row_tools.label("seed", 1) == "Seed: 1"
    assert row_tools.label("vars.style", "bob") == "style: bob"


def test_sheet_size_cells_and_labels(run6):
    (sheet,) = grid.draw_grids(row_tools.load_rows(run6), "vars.style", "cfg")
    font_size, line_h, pad, left = grid.label_metrics(64, 64)
    assert (font_size, line_h, pad, left) == (12, 16, 6, 96)
    top = 2 * pad + line_h  # one line of column labels
    assert sheet.image.size == (left + 3 * 64, top + 2 * 64) == (288, 156)
    for j, c in enumerate(CFGS):
        for i, s in enumerate(STYLES):
            x0, y0 = left + i * 64, top + j * 64
            for dx, dy in ((0, 0), (63, 63), (32, 32)):  # corners and centre: the exact colour
                assert sheet.image.getpixel((x0 + dx, y0 + dy)) == COLOURS[s, c]
    assert dark_pixels(sheet.image, (left, 0, left + 64, top)) > 10  # "style: a" was drawn
    assert dark_pixels(sheet.image, (0, top, left, top + 64)) > 10  # "CFG scale: 5"
    assert dark_pixels(sheet.image, (0, 0, left, top)) == 0  # no z: an empty corner
    assert sheet.notes == []


def test_sheet_infotext_describes_the_axes(run6, tmp_path):
    sheets = grid.write_grids(row_tools.load_rows(run6), "vars.style", "cfg", out_dir=run6)
    paths = [s.path for s in sheets]
    assert paths == [run6 / "grids" / "grid-vars.style-cfg.png"]
    assert sheets[0].image is None and sheets[0].size == (288, 156)
    info = parse_infotext(read_png_infotext(paths[0]))
    assert info.prompt == "a cat, {style}"  # prompts differ: the shared template
    assert info.negative_prompt == "blurry"
    assert info.params["X Type"] == "style" and info.params["X Values"] == "a, b, c"
    assert info.params["Y Type"] == "CFG scale" and info.params["Y Values"] == "5, 7"
    assert info.params["Sampler"] == "Euler a" and info.params["CFG scale"] == "5"
    assert 'X Values: "a, b, c"' in read_png_infotext(paths[0])


def test_values_keep_the_recipe_order(tmp_path):
    """A1111 keeps the order typed: cfg [10, 9, 7.5] stays 10, 9, 7.5 (not sorted), numbers
    and variable values alike, and the cells follow."""
    specs = [dict(cfg=c, style=s, colour=(10 * i, 20 * k, 0)) for i, c in enumerate([10, 9, 7.5])
             for k, s in enumerate(["10", "9", "x"])]  # fmt: skip
    rows = row_tools.load_rows(make_run(tmp_path, specs))
    (sheet,) = grid.draw_grids(rows, "cfg", "vars.style")
    info = parse_infotext(sheet.infotext).params
    assert info["X Values"] == "10, 9, 7.5" and info["Y Values"] == "10, 9, x"
    _, _, _, left = grid.label_metrics(64, 64)
    top = sheet.image.height - 3 * 64
    assert sheet.image.getpixel(cell_centre(left, top, 0, 1)) == (0, 20, 0)  # cfg 10, style 9
    assert sheet.image.getpixel(cell_centre(left, top, 2, 0)) == (20, 0, 0)  # cfg 7.5, style 10


def test_rows_distinct_still_sorts_numerically(tmp_path):
    """The gallery's filters and the notes list values sorted, numbers numerically."""
    specs = [dict(cfg=c, style=s) for c in [10, 9, 7.5] for s in ["10", "9", "x"]]
    rows = row_tools.load_rows(make_run(tmp_path, specs))
    assert row_tools.distinct(rows, "cfg") == [7.5, 9, 10]
    assert row_tools.distinct(rows, "vars.style") == ["9", "10", "x"]
    ordered = sorted(["nan", "2", None, "b", "10"], key=row_tools.sort_key)
    assert ordered == ["2", "10", "b", "nan", None]


def test_values_follow_the_plan_not_the_file_order(tmp_path):
    """Rows are ordered by the plan's batch number (a retried job's row lands later in the
    manifest), then by run: a multirun sweep by job number, not by folder name."""
    specs = [dict(cfg=c, batch=b, colour=(int(c) * 20, 0, 0))
             for c, b in ((5.0, 1), (7.0, 2), (9.0, 0))]  # fmt: skip
    rows = row_tools.load_rows(make_run(tmp_path / "one", specs))
    (sheet,) = grid.draw_grids(rows, "cfg")
    assert parse_infotext(sheet.infotext).params["X Values"] == "9, 5, 7"
    reds = [sheet.image.getpixel((32 + 64 * i, sheet.image.height - 32))[0] for i in range(3)]
    assert reds == [180, 100, 140]
    for job, cfg in ((2, 2.0), (10, 1.0)):  # folder "10" sorts before "2" as text
        run = make_run(tmp_path / "multi" / str(job), [dict(cfg=cfg, batch=0, hydra_job=job)])
        assert run.is_dir()
    (sheet,) = grid.draw_grids(row_tools.load_rows(tmp_path / "multi"), "cfg")
    assert parse_infotext(sheet.infotext).params["X Values"] == "2, 1"


def test_failed_nan_and_empty_cells_are_placeholders(tmp_path):
    specs = [
        dict(style="a", cfg=5.0, colour=(255, 0, 0)),
        dict(style="b", cfg=5.0, status="failed", error="CUDA out of memory"),
        dict(style="a", cfg=7.0, status="nan", error="NaN in the image"),
        # (b, 7) has no row at all
    ]
    (sheet,) = grid.draw_grids(row_tools.load_rows(make_run(tmp_path, specs)), "vars.style", "cfg")
    _, line_h, pad, left = grid.label_metrics(64, 64)
    top = 2 * pad + line_h
    assert sheet.image.size == (left + 2 * 64, top + 2 * 64)
    assert sheet.image.getpixel((left + 64 + 1, top + 1)) == grid.COLOURS["failed"]
    assert sheet.image.getpixel((left + 1, top + 64 + 1)) == grid.COLOURS["nan"]
    assert sheet.image.getpixel((left + 64 + 1, top + 64 + 1)) == grid.COLOURS["empty"]
    failed_cell = (left + 64, top, left + 128, top + 64)
    assert len(sheet.image.crop(failed_cell).getcolors()) > 1  # "failed" written on it


def test_megapixel_cap(run6):
    with pytest.raises(UserError) as exc:
        grid.draw_grids(row_tools.load_rows(run6), "vars.style", "cfg", max_megapixels=0.01)
    msg = str(exc.value)
    assert "288x156" in msg and "0.0 megapixels" in msg and "--max-megapixels 0.01" in msg
    assert "\n" not in msg


def test_where_filters_and_rejects_bad_input(run6):
    rows = row_tools.load_rows(run6)
    assert len(row_tools.filter_rows(rows, "cfg == 7")) == 3
    assert len(row_tools.filter_rows(rows, "cfg > 5 and vars.style != 'b'")) == 2
    assert len(row_tools.filter_rows(rows, "cfg <= 7 and cfg >= 5")) == 6
    assert len(row_tools.filter_rows(rows, "sampler == Euler a")) == 6
    assert row_tools.parse_where("sampler == 'x and y' and seed < 3") == [
        ("sampler", "==", "x and y"),
        ("seed", "<", "3"),
    ]
    (sheet,) = grid.draw_grids(rows, "vars.style", "cfg", where="cfg == 7")
    assert sheet.image.size == (288, 28 + 64)
    with pytest.raises(UserError, match="no rows match"):
        row_tools.filter_rows(rows, "seed == 99")
    with pytest.raises(UserError, match="unknown column 'colour'.*vars.style"):
        row_tools.filter_rows(rows, "colour == red")
    with pytest.raises(UserError, match="cannot read"):
        row_tools.filter_rows(rows, "cfg = 7")
    with pytest.raises(UserError, match="cannot read"):
        row_tools.filter_rows(rows, "__import__('os') == 1")


def test_crowded_cells_take_the_lowest_seed_with_a_note(tmp_path):
    specs = [dict(style="a", seed=s, colour=(s * 50, 0, 0)) for s in (3, 1, 2)]
    (sheet,) = grid.draw_grids(row_tools.load_rows(make_run(tmp_path, specs)), "vars.style")
    assert sheet.image.getpixel((32, sheet.image.height - 32)) == (50, 0, 0)  # seed 1
    assert len(sheet.notes) == 1 and "seed varies" in sheet.notes[0]


def test_cli_z_sheets_notes_and_errors(tmp_path, capsys):
    specs = [dict(style=s, cfg=c, sampler=m, colour=(0, 0, 0)) for s in STYLES for c in CFGS
             for m in ["Euler a", "DPM++ 2M Karras"]]  # fmt: skip
    out = make_run(tmp_path / "run", specs)
    with pytest.raises(SystemExit) as exc:
        main(["grid", str(out), "--x", "vars.style", "--y", "cfg", "--z", "sampler"])
    assert exc.value.code == 0
    names = sorted(p.name for p in (out / "grids").iterdir())
    assert names == [
        "grid-vars.style-cfg-sampler=DPM++_2M_Karras.png",
        "grid-vars.style-cfg-sampler=Euler_a.png",
    ]
    info = parse_infotext(read_png_infotext(out / "grids" / names[1])).params
    assert info["Z Type"] == "Sampler" and info["Z Value"] == "Euler a"
    with Image.open(out / "grids" / names[1]) as im:  # z label in the corner
        assert dark_pixels(im, (0, 0, 96, 28)) > 10
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["grid", str(out), "--x", "vars.nope"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: --x: unknown column 'vars.nope'")
    assert err.count("\n") == 1
    main_out = tmp_path / "one.png"
    with pytest.raises(SystemExit):
        main(["grid", str(tmp_path), "--x", "cfg", "--where", "seed == 1", "-o", str(main_out)])
    assert "note: 2 cells match several images" in capsys.readouterr().err
    assert main_out.is_file()


def test_draw_recipe_grids(run6):
    paths = grid.draw_recipe_grids(run6, [{"x": "vars.style", "y": "cfg"}, {"x": "cfg"}])
    assert [p.name for p in paths] == ["grid-vars.style-cfg.png", "grid-cfg.png"]
    assert all(p.is_file() for p in paths)
    assert grid.draw_recipe_grids(run6, []) == []
    with pytest.raises(UserError, match=r"grids\[0\]: unknown key 'colour'"):
        grid.draw_recipe_grids(run6, [{"x": "cfg", "colour": "red"}])
    with pytest.raises(UserError, match=r"grids\[1\]"):
        grid.validate_grid_specs([{"x": "cfg"}, {"y": "cfg"}])


def patterned(path: Path, seed: int, size: int = 32) -> Image.Image:
    """Overwrite a cell's PNG with a picture whose every pixel differs from its neighbours."""
    im = Image.new("RGB", (size, size))
    im.putdata([((u * 7 + seed * 50) % 256, (v * 11 + seed) % 256, (u * v + 3 * seed) % 256)
                for v in range(size) for u in range(size)])  # fmt: skip
    im.save(path)
    return im


def blocks(im: Image.Image, k: int) -> Image.Image:
    """Each pixel as a k x k block, built by hand (not by Pillow's resize)."""
    out = Image.new("RGB", (im.width * k, im.height * k))
    for v in range(im.height):
        for u in range(im.width):
            out.paste(im.getpixel((u, v)), (u * k, v * k, u * k + k, v * k + k))
    return out


@pytest.fixture
def run32(tmp_path) -> tuple[Path, dict]:
    """3 styles x 2 CFG values of 32x32 patterned cells; returns the folder and each source."""
    specs = [dict(style=s, cfg=c, colour=COLOURS[s, c]) for c in CFGS for s in STYLES]
    out = make_run(tmp_path / "out32", specs, size=32)
    sources = {}
    for row in row_tools.load_rows(out):
        key = (row["vars"]["style"], row["cfg"])
        sources[key] = patterned(out / row["image"], len(sources))
    return out, sources


def test_scale_enlarges_cells_with_exact_nearest_neighbour_pixels(run32):
    out, sources = run32
    rows = row_tools.load_rows(out)
    (sheet,) = grid.draw_grids(rows, "vars.style", "cfg", scale=4)
    font_size, line_h, pad, left = grid.label_metrics(128, 128)  # laid out for the scaled cell
    top = 2 * pad + line_h  # "style: a" fits on one line of a 128-pixel column
    assert sheet.image.size == (left + 3 * 128, top + 2 * 128) == (480, 284)
    for j, c in enumerate(CFGS):
        for i, s in enumerate(STYLES):
            x0, y0 = left + i * 128, top + j * 128
            cell = sheet.image.crop((x0, y0, x0 + 128, y0 + 128))
            assert cell.tobytes() == blocks(sources[s, c], 4).tobytes(), (s, c)
    assert dark_pixels(sheet.image, (left, 0, left + 128, top)) > 10  # column label drawn
    assert dark_pixels(sheet.image, (0, top, left, top + 128)) > 10  # row label drawn
    # scale 1 is the cells at image size, exactly the pixels of the PNGs
    (small,) = grid.draw_grids(rows, "vars.style", "cfg")
    _, line_h1, pad1, left1 = grid.label_metrics(32, 32)
    assert small.image.width == left1 + 3 * 32 and small.image.height > 2 * 32 + 2 * pad1
    top1 = small.image.height - 2 * 32
    assert top1 > 2 * pad1 + line_h1  # unscaled 32-pixel columns wrap their labels
    first = small.image.crop((left1, top1, left1 + 32, top1 + 32))
    assert first.tobytes() == sources["a", 5.0].tobytes()
    assert sheet.infotext == small.infotext  # the scale is not part of the infotext


def test_scale_fills_placeholder_cells_and_counts_in_the_megapixel_cap(tmp_path):
    specs = [
        dict(style="a", cfg=5.0, colour=(255, 0, 0)),
        dict(style="b", cfg=5.0, status="failed", error="CUDA out of memory"),
        dict(style="a", cfg=7.0, status="nan", error="NaN in the image"),
        dict(style="b", cfg=7.0, colour=(0, 0, 255)),
    ]
    out = make_run(tmp_path, specs, size=32)
    (out / "images" / "0000000000000003.png").unlink()  # an ok row whose PNG is gone
    rows = row_tools.load_rows(out)
    (sheet,) = grid.draw_grids(rows, "vars.style", "cfg", scale=3)
    _, line_h, pad, left = grid.label_metrics(96, 96)
    top = sheet.image.height - 2 * 96
    assert sheet.image.size == (left + 2 * 96, top + 2 * 96)
    for (i, j), kind in {(1, 0): "failed", (0, 1): "nan", (1, 1): "missing"}.items():
        x0, y0 = left + i * 96, top + j * 96
        for dx, dy in ((0, 0), (95, 0), (0, 95), (95, 95)):  # every corner of the scaled cell
            assert sheet.image.getpixel((x0 + dx, y0 + dy)) == grid.COLOURS[kind], kind
        assert len(sheet.image.crop((x0, y0, x0 + 96, y0 + 96)).getcolors()) > 1  # its word
    assert sheet.image.getpixel((left + 95, top + 95)) == (255, 0, 0)
    with pytest.raises(UserError) as exc:
        grid.draw_grids(rows, "vars.style", "cfg", max_megapixels=0.05, scale=3)
    msg = str(exc.value)
    assert f"{sheet.image.width}x{sheet.image.height}" in msg and "lower --scale 3" in msg
    assert "\n" not in msg
    grid.draw_grids(rows, "vars.style", "cfg", max_megapixels=0.05)  # unscaled: fits


def test_recipe_grid_scale(run6):
    (path,) = grid.draw_recipe_grids(run6, [{"x": "vars.style", "y": "cfg", "scale": 2}])
    with Image.open(path) as im:
        font_size, line_h, pad, left = grid.label_metrics(128, 128)
        assert im.size == (left + 3 * 128, 2 * pad + line_h + 2 * 128)
        assert im.getpixel((left + 127, 2 * pad + line_h + 127)) == COLOURS["a", 5.0]
    grid.validate_grid_specs([{"x": "cfg", "scale": 1}, {"x": "cfg", "scale": 4.0}])


@pytest.mark.parametrize("bad", [0, -1, "big", 2.5, True, None])
def test_recipe_grid_scale_rejects_bad_values(run6, bad):
    want = f"grids[1].scale: {bad!r} is not allowed; a whole number of at least 1"
    with pytest.raises(UserError) as exc:
        grid.validate_grid_specs([{"x": "cfg"}, {"x": "cfg", "scale": bad}])
    assert str(exc.value).startswith(want) and "\n" not in str(exc.value)
    with pytest.raises(UserError, match=r"^grids\[0\]\.scale: "):
        grid.draw_recipe_grids(run6, [{"x": "cfg", "scale": bad}])
    assert not (run6 / "grids").exists()


def test_cli_scale(run6, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["grid", str(run6), "--x", "vars.style", "--y", "cfg", "--scale", "2"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip().endswith("grid-vars.style-cfg-scale2.png (480x284)")
    with Image.open(run6 / "grids" / "grid-vars.style-cfg-scale2.png") as im:
        assert im.size == (480, 284)
    for bad in ("0", "-1"):
        out = run6.parent / f"scale{bad}.png"
        with pytest.raises(SystemExit) as exc:
            main(["grid", str(run6), "--x", "cfg", "--scale", bad, "-o", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1
        assert err.startswith(f"error: --scale: {bad} is not allowed; a whole number of at least 1")
        assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main(["grid", str(run6), "--x", "cfg", "--scale", "big"])
    assert exc.value.code == 2 and "--scale: invalid int value: 'big'" in capsys.readouterr().err
    names = sorted(p.name for p in (run6 / "grids").iterdir())
    assert names == ["grid-vars.style-cfg-scale2.png"]


@pytest.mark.parametrize("suffix", [".webp", ".gif"])
def test_animation_frames_keep_the_recipe_order_and_duration(tmp_path, suffix):
    colours = {9.0: (0, 0, 255), 5.0: (255, 0, 0), 7.0: (0, 255, 0)}
    specs = [dict(cfg=c, colour=col) for c, col in colours.items()]
    specs.append(dict(cfg=11.0, status="failed", error="boom"))
    out = tmp_path / f"anim{suffix}"
    rows = row_tools.load_rows(make_run(tmp_path, specs))
    notes = anim.animate(rows, "cfg", out, duration_ms=120)
    assert notes == []
    with Image.open(out) as im:
        assert im.n_frames == 4
        seen = []
        for k in range(im.n_frames):
            im.seek(k)
            seen.append(im.convert("RGB").getpixel((2, 2)))  # loads the frame and its info
            assert im.info["duration"] == 120
    expected = [(0, 0, 255), (255, 0, 0), (0, 255, 0), grid.COLOURS["failed"]]  # 9, 5, 7, 11
    for got, want in zip(seen, expected, strict=True):
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 8, (got, want)


def test_animation_refuses_incomparable_frames(tmp_path):
    specs = [dict(cfg=c, seed=s, colour=(int(c), s, 0)) for c in (5.0, 7.0) for s in (1, 2)]
    rows = row_tools.load_rows(make_run(tmp_path, specs))
    msg = r"not be comparable: seed has 2 values \(1, 2\); pin them, e.g. --where \"seed == 1\"$"
    with pytest.raises(UserError, match=msg):
        anim.animate(rows, "cfg", tmp_path / "a.gif")
    anim.animate(rows, "cfg", tmp_path / "a.gif", where="seed == 1")
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 2
    with pytest.raises(UserError, match="must end in .webp or .gif"):
        anim.animate(rows, "cfg", tmp_path / "a.mp4", where="seed == 1")


def test_animation_hint_names_the_variable_not_the_prompt(tmp_path):
    specs = [dict(cfg=c, style=s, colour=(int(c), len(s), 0)) for c in (5.0, 7.0)
             for s in ("bob cut", "braids")]  # fmt: skip
    rows = row_tools.load_rows(make_run(tmp_path, specs))
    with pytest.raises(UserError) as exc:
        anim.animate(rows, "cfg", tmp_path / "a.gif")
    assert "prompt" not in str(exc.value)
    assert str(exc.value).endswith("""e.g. --where "vars.style == 'bob cut'\"""")
    anim.animate(rows, "cfg", tmp_path / "a.gif", where="vars.style == 'bob cut'")


def test_animation_notes_identical_frames_and_caption_keeps_them(tmp_path):
    specs = [dict(cfg=c, colour=(9, 9, 9)) for c in (5.0, 7.0)]
    rows = row_tools.load_rows(make_run(tmp_path, specs))
    notes = anim.animate(rows, "cfg", tmp_path / "a.webp")
    assert notes == [
        "note: CFG scale: 5 and 7 look identical; the file shows them as one longer frame "
        "(--caption keeps them apart)"
    ]
    assert anim.animate(rows, "cfg", tmp_path / "b.webp", caption=True) == []
    with Image.open(tmp_path / "b.webp") as im:
        _, line_h, pad, _ = grid.label_metrics(64, 64)  # "CFG" / "scale: 5": two lines fit
        assert (im.n_frames, im.size) == (2, (64, 64 + 2 * line_h + 2 * pad))


def test_gallery_data_and_script_escaping(tmp_path):
    evil = "<img src=x onerror=alert(1)></script><!--"
    specs = [dict(prompt=evil, colour=(1, 2, 3)), dict(status="nan", seed=2)]
    out = make_run(tmp_path / "g", specs)
    data = gallery_data(row_tools.load_rows(out), out)
    cols = data["cols"]
    rows = [dict(zip(cols, r, strict=True)) for r in data["rows"]]
    assert rows[0]["src"] == "images/0000000000000000.png" and rows[1]["src"] is None
    assert rows[1]["status"] == "nan" and rows[0]["prompt"] == evil
    text = script_json(data)
    assert "<" not in text and ">" not in text and json.loads(text) == data
    assert {f["col"] for f in data["filters"]} >= {"status", "seed"}


def ink_lines(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many lines of text a region shows: bands of rows that hold dark pixels."""
    crop = image.crop(box).convert("L").point(lambda v: 255 if v < 128 else 0)
    lines, inside = 0, False
    for v in range(crop.height):
        dark = crop.crop((0, v, crop.width, v + 1)).getbbox() is not None
        lines += dark and not inside
        inside = dark
    return lines


def test_z_sheets_show_the_axis_and_its_value(tmp_path):
    specs = [dict(style=s, cfg=c, sampler=m, colour=(0, 0, 0)) for s in ("a", "b") for c in CFGS
             for m in ["Euler a", "DPM++ 2M Karras"]]  # fmt: skip
    rows = row_tools.load_rows(make_run(tmp_path, specs))
    sheets = grid.draw_grids(rows, "vars.style", "cfg", "sampler")
    _, _, pad, left = grid.label_metrics(64, 64)
    corner = {s.z: ink_lines(s.image, (0, 0, left, s.image.height - 2 * 64)) for s in sheets}
    assert corner == {"Euler a": 2, "DPM++ 2M Karras": 3}  # "Sampler:" "DPM++ 2M" "Karras"
    assert [s.z for s in sheets] == ["Euler a", "DPM++ 2M Karras"]  # the recipe's order
    assert sheets[0].image.size == sheets[1].image.size
    # no --y, so no corner: the z label is a title line above the column labels
    no_y = grid.draw_grids(rows, "vars.style", None, "sampler")
    for sheet in no_y:  # the title (one or two lines), then "style: a" and "style: b"
        assert ink_lines(sheet.image, (0, 0, sheet.image.width, sheet.image.height - 64)) >= 2
    assert (
        no_y[0].image.crop((0, 0, 128, pad + 16)).tobytes()
        != no_y[1].image.crop((0, 0, 128, pad + 16)).tobytes()
    )  # each sheet says its own value


def test_labels_wrap_at_spaces_and_break_only_a_word_too_long(tmp_path):
    f = grid.font_for(12)
    assert fonts.wrap("style: bob cut", f, f.getlength("style: bob")) == ["style: bob", "cut"]
    assert fonts.wrap("CFG scale: 7", f, f.getlength("scale:")) == ["CFG", "scale:", "7"]
    pieces = fonts.wrap("dreadlocks", f, 30)  # alone longer than the line: broken, in order
    assert len(pieces) > 1 and "".join(pieces) == "dreadlocks"
    assert all(f.getlength(p) <= 30 for p in pieces)
    # 64-pixel cells at scale 1: "style: dreadlocks" is two lines, the word whole (smaller)
    specs = [dict(style=s, colour=(200, 200, 200)) for s in ("dreadlocks", "twin tails")]
    (sheet,) = grid.draw_grids(row_tools.load_rows(make_run(tmp_path, specs)), "vars.style")
    top = sheet.image.height - 64
    assert [ink_lines(sheet.image, (64 * i, 0, 64 * i + 64, top)) for i in range(2)] == [2, 2]
    # row labels too tall for their cell get smaller or a wider band, never cut off
    long = "a long variable value that would never fit a small cell's height at all"
    specs = [dict(style=s, colour=(200, 200, 200)) for s in ("x", long)]
    (sheet,) = grid.draw_grids(row_tools.load_rows(make_run(tmp_path / "long", specs, 32)),
                               "cfg", "vars.style")  # fmt: skip
    top = sheet.image.height - 2 * 32
    assert sheet.image.width > grid.label_metrics(32, 32)[3] + 32  # the band widened
    assert ink_lines(sheet.image, (0, top + 32, sheet.image.width - 32, top + 64)) >= 2
    assert dark_pixels(sheet.image, (0, top + 31, sheet.image.width - 32, top + 33)) == 0


def test_out_is_exact_with_one_sheet_and_default_names_follow_where_and_scale(run6, capsys):
    here = run6.parent
    args = ["grid", str(run6), "--x", "vars.style", "--z", "cfg"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--where", "cfg == 5", "-o", str(here / "one.png")])
    assert exc.value.code == 0 and sorted(p.name for p in here.glob("*.png")) == ["one.png"]
    with pytest.raises(SystemExit):
        main([*args, "-o", str(here / "many.png")])  # several sheets: each adds its z value
    assert sorted(p.name for p in here.glob("many*")) == ["many-cfg=5.png", "many-cfg=7.png"]
    capsys.readouterr()
    printed = []
    for extra in ([], ["--where", "cfg == 5"], ["--where", "cfg==5"], ["--where", "cfg > 5"],
                  ["--scale", "2"], ["--where", "vars.style != b", "--scale", "2"],
                  ["--where", "sampler == 'Euler a'"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(["grid", str(run6), "--x", "vars.style", *extra])
        assert exc.value.code == 0
        printed.append(Path(capsys.readouterr().out.split(" (")[0]).name)
    assert printed[:6] == [
        "grid-vars.style.png", "grid-vars.style-where-cfg=5.png",
        "grid-vars.style-where-cfg=5.png",  # the same filter written differently: same file
        "grid-vars.style-where-cfg-gt-5.png", "grid-vars.style-scale2.png",
        "grid-vars.style-where-vars.style-ne-b-scale2.png",
    ]  # fmt: skip
    assert re.fullmatch(r"grid-vars\.style-where-sampler=Euler_a-[0-9a-f]{6}\.png", printed[6])
    assert len({p.name for p in (run6 / "grids").iterdir()}) == 6
    specs = [{"x": "vars.style", "where": "cfg == 5"}, {"x": "vars.style", "where": "cfg == 7"}]
    paths = grid.draw_recipe_grids(run6, specs)
    assert [p.name for p in paths] == ["grid-vars.style-where-cfg=5.png",
                                       "grid-vars.style-where-cfg=7.png"]  # fmt: skip
    for where in ("cfg == 5", "cfg == 7"):
        with pytest.raises(SystemExit) as exc:
            main(["animate", str(run6), "--axis", "vars.style", "--where", where])
        assert exc.value.code == 0
    names = sorted(p.name for p in (run6 / "animations").iterdir())
    assert names == ["vars.style-where-cfg=5.webp", "vars.style-where-cfg=7.webp"]


def test_animation_scale_draws_exact_pixel_blocks(run32, capsys):
    out, sources = run32
    args = ["animate", str(out), "--axis", "vars.style", "--where", "cfg == 5"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--scale", "4"])
    assert exc.value.code == 0
    path = out / "animations" / "vars.style-where-cfg=5-scale4.webp"
    assert capsys.readouterr().out.strip() == str(path)
    with Image.open(path) as im:
        assert (im.n_frames, im.size) == (3, (128, 128))
        for k, style in enumerate(STYLES):
            im.seek(k)
            assert im.convert("RGB").tobytes() == blocks(sources[style, 5.0], 4).tobytes()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--scale", "0", "-o", str(out / "bad.gif")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: --scale: 0 ")
    assert not (out / "bad.gif").exists()


def test_animation_captions_fit_small_frames(tmp_path):
    specs = [dict(style=s, colour=(0, 0, 255)) for s in ("twin tails", "단발머리", "x")]
    rows = row_tools.load_rows(make_run(tmp_path, specs, size=32))
    assert anim.animate(rows, "vars.style", tmp_path / "c.webp", caption=True) == []
    with Image.open(tmp_path / "c.webp") as im:
        assert im.width == 32 and im.height > 32 + 2 * grid.label_metrics(32, 32)[1]
        for k in range(im.n_frames):
            im.seek(k)
            band = im.convert("RGB").crop((0, 32, 32, im.height))
            assert ink_lines(band, (0, 0, 32, band.height)) >= 2  # wrapped, not one cut line
            for edge in ((0, 0, 1, band.height), (31, 0, 32, band.height),
                         (0, band.height - 1, 32, band.height)):  # fmt: skip
                assert dark_pixels(band, edge) == 0, (k, edge)  # nothing runs off the frame
