"""What replay (and ``sdbatch-tools infotext``) reads from a PNG someone sent is bounded.

Crafted PNGs are built here chunk by chunk (struct + zlib): a header claiming 100000x100000
pixels, text chunks over the 1 MiB infotext cap, a zTXt bomb. Each is one ``error:`` line naming
the file, exit code 2, no traceback, nothing written. Names that become paths stay in their
folder, and text from the image cannot add keys to the recipe file it becomes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import yaml

from sdbatch import tools
from sdbatch.outputs.infotext import INFOTEXT_MAX_BYTES, read_png_infotext

PARAMS = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
INFOTEXT = f"a red circle\nNegative prompt: blurry\n{PARAMS}"
CAP = f"sdbatch reads at most {INFOTEXT_MAX_BYTES:,} bytes (1 MiB) of infotext"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text(value: str | bytes, kind: bytes = b"tEXt", key: bytes = b"parameters") -> bytes:
    raw = (
        value.encode("latin-1" if kind != b"iTXt" else "utf-8") if isinstance(value, str) else value
    )
    if kind == b"tEXt":
        return chunk(kind, key + b"\0" + raw)
    if kind == b"zTXt":
        return chunk(kind, key + b"\0\0" + zlib.compress(raw))
    return chunk(kind, key + b"\0\1\0\0\0" + zlib.compress(raw))  # iTXt, compressed


def png(path: Path, *before: bytes, size=(8, 8), after: tuple[bytes, ...] = ()) -> Path:
    """A PNG: IHDR claiming ``size``, the ``before`` chunks, a tiny IDAT, ``after``, IEND."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", *size, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 25))
    body = b"".join([ihdr, *before, idat, *after, chunk(b"IEND", b"")])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        tools.main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def one_error(capsys, argv: list[str], *says: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for words in says:
        assert words in err, err
    return err


# -------------------------------------------------------------------------- pixel limit


@pytest.mark.parametrize("command", ["replay", "infotext"])
def test_a_header_claiming_100000x100000_pixels_is_one_line_naming_the_file(
    tmp_path, capsys, command
):
    bomb = png(tmp_path / "bomb.png", text(INFOTEXT), size=(100_000, 100_000))
    err = one_error(capsys, [command, str(bomb)])
    assert err == (
        f"error: {bomb}: its header claims 100,000x100,000 = 10,000,000,000 pixels, more than "
        "Pillow's decompression-bomb limit of 89,478,485 (PIL.Image.MAX_IMAGE_PIXELS)\n"
    )


def test_pillows_warning_zone_is_refused_too_and_its_setting_is_respected(
    tmp_path, capsys, monkeypatch
):
    from PIL import Image

    big = png(tmp_path / "big.png", text(INFOTEXT), size=(10_000, 10_000))  # Pillow: a warning
    one_error(capsys, ["replay", str(big)], "100,000,000 pixels", "decompression-bomb limit")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user switched the limit off
    assert read_png_infotext(big) == INFOTEXT
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 63)
    small = png(tmp_path / "small.png", text(INFOTEXT))
    one_error(capsys, ["infotext", str(small)], "8x8 = 64 pixels", "limit of 63")


def test_pixels_are_never_decoded(tmp_path, capsys):
    broken = tmp_path / "broken.png"
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    garbage = chunk(b"IDAT", b"not zlib at all")
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + text(INFOTEXT) + garbage)  # no IEND
    code, out, _err = run(capsys, "infotext", str(broken))
    assert code == 0 and "Steps: 20" in out


# --------------------------------------------------------------------------- text caps


@pytest.mark.parametrize("command", ["replay", "infotext"])
def test_a_text_chunk_over_the_cap_is_refused_saying_the_cap(tmp_path, capsys, command):
    huge = "x" * (2 * INFOTEXT_MAX_BYTES) + "\n" + PARAMS
    path = png(tmp_path / "huge.png", text(huge))
    err = one_error(capsys, [command, str(path)], CAP, str(path))
    assert f"holds {len(huge) + len('parameters') + 1:,} bytes" in err


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_a_compressed_text_bomb_is_inflated_no_further_than_the_cap(tmp_path, capsys, kind):
    bomb = png(tmp_path / "ztxt.png", text("a" * (16 * INFOTEXT_MAX_BYTES), kind))
    assert bomb.stat().st_size < 100_000  # 16 MiB of text in a small file
    one_error(capsys, ["replay", str(bomb)], f"more than {INFOTEXT_MAX_BYTES:,} bytes", CAP)


def _fill(head: str, tail: str) -> str:
    """``head`` + words + ``tail``, exactly INFOTEXT_MAX_BYTES long."""
    room = INFOTEXT_MAX_BYTES - len(head) - len(tail)
    words = "word " * (room // 5)
    return head + words + "w" * (room - len(words)) + tail


def test_infotext_of_exactly_the_cap_replays(tmp_path, capsys):
    infotext = _fill(f"a red circle\n{PARAMS}, ", "")  # 1 MiB of params line and no ':' in it
    assert len(infotext.encode()) == INFOTEXT_MAX_BYTES
    path = png(tmp_path / "max.png", text(infotext))
    code, out, err = run(capsys, "replay", str(path))
    assert code == 0 and "steps: 20\n" in out
    assert out.count("word") > 200_000 and err.count("\n") <= 2


def test_a_big_chunk_that_is_not_the_infotext_is_skipped_unread(tmp_path):
    path = png(tmp_path / "comment.png", text("c" * (3 * INFOTEXT_MAX_BYTES), key=b"Comment"),
               text(INFOTEXT))  # fmt: skip
    assert read_png_infotext(path) == INFOTEXT


def test_text_after_the_image_data_is_read_and_text_before_it_wins(tmp_path):
    late = png(tmp_path / "late.png", after=(text(INFOTEXT),))
    assert read_png_infotext(late) == INFOTEXT
    both = png(tmp_path / "both.png", text("first\n" + PARAMS), after=(text(INFOTEXT),))
    assert read_png_infotext(both).startswith("first\n")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xd8\xff\xe0 a JPEG", "not a PNG file; sdbatch reads the 'parameters' text chunk"),
        (b"", "not a PNG file"),
        (
            b"\x89PNG\r\n\x1a\n" + chunk(b"tEXt", b"parameters\0x"),
            "a broken PNG file (its first chunk is not IHDR)",
        ),
    ],
    ids=["jpeg", "empty", "no IHDR"],
)
def test_files_that_are_not_pngs_are_one_line(tmp_path, capsys, content, says):
    path = tmp_path / "image.png"
    path.write_bytes(content)
    one_error(capsys, ["replay", str(path)], f"{path}: {says}")


def test_a_corrupt_or_cut_infotext_chunk_is_named(tmp_path, capsys):
    good = png(tmp_path / "bad-crc.png", text(INFOTEXT))
    data = bytearray(good.read_bytes())
    data[data.index(b"Steps")] ^= 1
    good.write_bytes(bytes(data))
    one_error(capsys, ["replay", str(good)], "bad checksum in its 'parameters' chunk")
    cut = png(tmp_path / "cut.png", text(INFOTEXT))
    cut.write_bytes(cut.read_bytes()[: cut.read_bytes().index(b"Steps")])
    one_error(capsys, ["infotext", str(cut)], "cut short inside its 'parameters' text chunk")


def test_a_folder_given_as_an_image_is_one_line(tmp_path, capsys):
    one_error(capsys, ["replay", str(tmp_path)], f"{tmp_path}: cannot read it (Is a directory)")


# ------------------------------------------------------------ names that become paths


@pytest.mark.parametrize("model", ["../../etc/passwd", "/models/x", "C:\\models\\x", "a/../../b"])
def test_a_model_field_that_leaves_model_dir_is_refused(tmp_path, capsys, model):
    path = png(tmp_path / "img.png", text(f"{INFOTEXT}, Model: {model}"))
    one_error(capsys, ["replay", str(path)], f"{path.name}: Model: {model!r} is not allowed",
              "no '..' part, not absolute")  # fmt: skip


def test_a_model_in_a_subfolder_is_fine(tmp_path, capsys):
    path = png(tmp_path / "img.png", text(f"{INFOTEXT}, Model: anime/AnythingV5"))
    code, out, _err = run(capsys, "replay", str(path))
    assert code == 0 and "model:\n  name: anime/AnythingV5" in out


@pytest.mark.parametrize("name", ["../evil", "a/b", "/tmp/x", ".hidden", "a b"])
def test_recipe_names_cannot_name_other_folders(tmp_path, capsys, name):
    path = png(tmp_path / "img.png", text(INFOTEXT))
    out = tmp_path / "recipes"
    one_error(capsys, ["replay", str(path), "--name", name, "-o", str(out)], "--name: ")
    assert not out.exists()


def test_an_output_file_name_that_is_no_recipe_name_is_refused(tmp_path, capsys):
    path = png(tmp_path / "img.png", text(INFOTEXT))
    one_error(capsys, ["replay", str(path), "-o", str(tmp_path / "a b.yaml")], "-o: ")


def test_a_symlink_in_the_output_folder_is_replaced_not_written_through(tmp_path, capsys):
    path = png(tmp_path / "img.png", text(INFOTEXT))
    out = tmp_path / "recipes"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    (out / "replay_img.yaml").symlink_to(target)  # dangling: exists() is False
    one_error(capsys, ["replay", str(path), "-o", str(out)], "exists; --force overwrites")
    assert not target.exists()
    code, _out, _err = run(capsys, "replay", str(path), "-o", str(out), "--force")
    assert code == 0 and not target.exists()
    written = out / "replay_img.yaml"
    assert not written.is_symlink() and "steps: 20" in written.read_text()


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    path = png(tmp_path / "img.png", text(INFOTEXT))
    (tmp_path / "file").write_text("x")
    one_error(capsys, ["replay", str(path), "-o", str(tmp_path / "file" / "sub")], "-o: ")


# --------------------------------------------------------- text cannot become YAML keys


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85"])
def test_line_separators_in_the_infotext_cannot_add_recipe_keys(tmp_path, capsys, brk):
    evil = f"x{brk}model: {{path: /evil.ckpt, allow_pickle: true}}{brk}#"
    infotext = f"{INFOTEXT}, Foo: {evil}, Model hash: h{brk}output: {{dir: /tmp}}{brk}#"
    path = png(tmp_path / "img.png", text(infotext, b"iTXt"))
    out = tmp_path / "recipes"
    code, _out, err = run(capsys, "replay", str(path), "-o", str(out))
    assert code == 0
    recipe = yaml.safe_load((out / "replay_img.yaml").read_text(encoding="utf-8"))
    assert "model" not in recipe and "output" not in recipe
    assert recipe["steps"] == 20
    assert all(brk not in line for line in err.splitlines())  # warnings stay one line each


def test_escape_sequences_in_warnings_are_shown_escaped(tmp_path, capsys):
    path = png(tmp_path / "img.png", text(f"{INFOTEXT}, Foo: \x1b[31mred"))
    code, _out, err = run(capsys, "replay", str(path))
    assert code == 0 and "\x1b" not in err and "\\u001b[31mred" in err


def test_infotext_shows_escape_sequences_from_an_image_instead_of_sending_them(tmp_path, capsys):
    image = png(
        tmp_path / "esc.png", text("a \x1b[31mred\x1b[0m cat\nSteps: 20, Sampler: Euler a, Seed: 1")
    )
    code, out, _ = run(capsys, "infotext", str(image))
    assert code == 0 and "\x1b" not in out
    assert "a \\u001b[31mred\\u001b[0m cat" in out
