"""Label fonts: Hangul draws as Hangul (not missing-glyph boxes) on any machine, Latin and
Hangul on one label, the fallback chain, ``--font``. Never skipped: the Hangul font ships with
the package, and the boxes these tests compare against come from Pillow's own font."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from sdbatch.outputs import reading as row_tools
from sdbatch.tools import main
from sdbatch.views import fonts, grid
from tests.unit.test_grid import make_run

ROOT = Path(__file__).resolve().parents[2]


def drawn(chain: fonts.Fonts, text: str) -> bytes:
    """``text`` drawn the way labels are, as raw pixels."""
    im = Image.new("L", (8 * chain.size * max(1, len(text)), 3 * chain.size), 255)
    chain.draw(ImageDraw.Draw(im), (im.width / 2, im.height / 2), text, 0)
    return im.tobytes()


def drawn_in(font, text: str) -> bytes:
    """``text`` drawn in one Pillow font, nothing else tried."""
    im = Image.new("L", (200, 60), 255)
    ImageDraw.Draw(im).text((10, 10), text, fill=0, font=font)
    return im.tobytes()


def test_hangul_draws_real_glyphs_not_missing_glyph_boxes():
    # The premise: a font without Hangul draws every syllable as the same box.
    pillow = fonts.Face(None).font(24)
    assert drawn_in(pillow, "단") == drawn_in(pillow, "발") != drawn_in(pillow, " ")
    notdef = drawn_in(pillow, "\U0010fffd")  # a private-use code point no font here has
    chain = fonts.fonts_for(24)
    syllables = [drawn(chain, ch) for ch in "단발머리"]
    assert len(set(syllables)) == 4  # four different glyphs, no two alike
    blank = drawn(chain, " ")
    for ch, pixels in zip("단발머리", syllables, strict=True):
        assert pixels != blank, ch  # something was drawn
        assert drawn_in(chain.face_for(ch).font(24), ch) != notdef
        assert chain.face_for(ch) == fonts.Face(str(fonts.BUNDLED))  # on every machine
    # The shipped font has every modern syllable, each with a glyph that draws something.
    # (Not a given: NanumSquare maps all 11,172 but draws 8,693 of them as empty glyphs.)
    chars = fonts.font_chars(str(fonts.BUNDLED))
    assert all(cp in chars for cp in range(0xAC00, 0xD7A4))
    bundled = fonts.Face(str(fonts.BUNDLED))
    assert all(bundled.has(chr(cp)) for cp in range(0xAC00, 0xD7A4, 7))
    assert all(bundled.has(ch) for ch in "CFG scale: 7.5, Euler a (none)")


def test_a_label_with_latin_and_hangul_draws_both():
    chain = fonts.fonts_for(12)
    runs = chain.runs("style: 단발머리")
    latin = fonts.dejavu() or fonts.Face(str(fonts.BUNDLED))  # DejaVu where installed
    assert [run for run, _ in runs] in (["style: ", "단발머리"], ["style: 단발머리"])
    assert Path(runs[0][1].path) == Path(latin.path)
    assert Path(runs[-1][1].path) == fonts.BUNDLED
    assert drawn(chain, "style: 단발머리") != drawn(chain, "style: 땋은머리")


@pytest.fixture
def korean_run(tmp_path) -> Path:
    specs = [dict(style=s, colour=(200, 200, 200)) for s in ("단발", "머리")]
    return make_run(tmp_path / "ko", specs, size=96)


def test_grid_labels_in_korean(korean_run):
    """Columns "style: 단발" and "style: 머리": with boxes they would be pixel-identical."""
    (sheet,) = grid.draw_grids(row_tools.load_rows(korean_run), "vars.style")
    top = sheet.image.height - 96
    left, right = (sheet.image.crop((96 * i, 0, 96 * i + 96, top)) for i in range(2))
    chain = fonts.fonts_for(grid.label_metrics(96, 96)[0])
    assert chain.getlength("style: 단발") == chain.getlength("style: 머리")  # one line each
    hangul_at = 48 - chain.getlength("style: 단발") / 2 + chain.getlength("style: ")
    latin, hangul = (0, 0, int(hangul_at) - 1, top), (int(hangul_at) + 1, 0, 96, top)
    assert left.crop(latin).tobytes() == right.crop(latin).tobytes()  # "style: " alike
    assert left.crop(latin).convert("L").getextrema()[0] < 128  # and drawn
    assert left.crop(hangul).tobytes() != right.crop(hangul).tobytes()  # 단발 is not 머리
    assert right.crop(hangul).convert("L").getextrema()[0] < 128


def test_animation_captions_in_korean(korean_run, tmp_path):
    from sdbatch.views import animate as anim

    rows = row_tools.load_rows(korean_run)
    assert anim.animate(rows, "vars.style", tmp_path / "k.webp", caption=True) == []
    with Image.open(tmp_path / "k.webp") as im:
        frames = []
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(im.convert("RGB").crop((0, 96, 96, im.height)).tobytes())
    assert len(frames) == 2 and frames[0] != frames[1]  # two different captions


def test_fallback_order_for_other_scripts(monkeypatch, tmp_path):
    """CJK ideographs and kana: an installed font first, then the shipped font's Hanja; a
    character nothing has: Pillow's own font, the last resort."""
    installed = tmp_path / "Installed-CJK.ttf"
    shutil.copyfile(fonts.BUNDLED, installed)
    monkeypatch.setattr(fonts, "system_fonts", lambda: (fonts.Face(str(installed)),))
    chain = fonts.Fonts(12)
    assert chain.face_for("漢") == fonts.Face(str(installed))
    assert chain.face_for("한") == fonts.Face(str(fonts.BUNDLED))  # Hangul: the shipped one
    assert chain.face_for("\U0010fffd") == fonts.Face(None)
    monkeypatch.setattr(fonts, "system_fonts", lambda: ())
    assert fonts.Fonts(12).face_for("漢") == fonts.Face(str(fonts.BUNDLED))


def test_a_fresh_machine_without_dejavu_or_any_installed_font(monkeypatch, korean_run):
    """pip install alone: the shipped font draws Hangul and Latin, the grid still reads."""
    monkeypatch.setattr(fonts, "dejavu", lambda: None)
    monkeypatch.setattr(fonts, "system_fonts", lambda: ())
    fonts._chain.cache_clear()
    try:
        chain = fonts.fonts_for(24)
        assert [Path(f.path) for _, f in chain.runs("style: 단발머리")] == [fonts.BUNDLED]
        assert len({drawn(chain, ch) for ch in "단발sC"}) == 4
        (sheet,) = grid.draw_grids(row_tools.load_rows(korean_run), "vars.style")
        top = sheet.image.height - 96
        left, right = (sheet.image.crop((96 * i, 0, 96 * i + 96, top)) for i in range(2))
        assert left.tobytes() != right.tobytes()
    finally:
        fonts._chain.cache_clear()


def test_font_option(korean_run, tmp_path, capsys):
    mine = tmp_path / "Mine.ttf"
    shutil.copyfile(fonts.BUNDLED, mine)
    chain = fonts.fonts_for(12, mine)
    assert {Path(f.path) for _, f in chain.runs("style: 단발")} == {mine}  # it covers both
    out = tmp_path / "g.png"
    with pytest.raises(SystemExit) as exc:
        main(["grid", str(korean_run), "--x", "vars.style", "--font", str(mine), "-o", str(out)])
    assert exc.value.code == 0 and out.is_file()
    not_a_font = tmp_path / "notes.txt"
    not_a_font.write_text("hello")
    for command in (["grid", "--x", "vars.style"], ["animate", "--axis", "vars.style"]):
        for bad in (str(tmp_path / "missing.ttf"), str(not_a_font)):
            target = tmp_path / "bad.webp"
            with pytest.raises(SystemExit) as exc:
                main([command[0], str(korean_run), *command[1:], "--font", bad, "-o", str(target)])
            err = capsys.readouterr().err
            assert exc.value.code == 2 and err.count("\n") == 1
            assert err.startswith(f"error: --font: {bad!r} is not allowed; a TrueType or OpenType")
            assert not target.exists()


def test_the_font_and_its_licence_are_package_data():
    tomllib = pytest.importorskip("tomllib")
    shipped = sorted(p.name for p in fonts.BUNDLED.parent.iterdir())
    assert shipped == ["LICENSE.txt", fonts.BUNDLED.name]
    licence = (fonts.BUNDLED.parent / "LICENSE.txt").read_text()
    assert "SIL OPEN FONT LICENSE" in licence and "Version 1.1" in licence
    assert fonts.BUNDLED.name in licence
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["sdbatch.views"]
    for name in shipped:
        assert any(fnmatch.fnmatch(f"fonts/{name}", p) for p in patterns), name
