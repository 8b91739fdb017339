"""Fonts for grid labels and animation captions, so Korean (and Latin, and the rest) never
draws as boxes.

Pillow draws a character its font lacks as that font's missing-glyph box, and no font that
every machine has covers Hangul. So a label is drawn in runs of characters, each run in the
first font of this chain that has its glyphs:

1. ``--font PATH`` (``grid``, ``animate``), when given;
2. Hangul: NanumBarunGothic, shipped inside the package (``fonts/``, SIL Open Font
   License 1.1);
3. DejaVu Sans (A1111's grid font) when installed, for Latin and whatever else it has; on a
   machine without it the shipped font draws Latin too;
4. CJK ideographs, kana and other scripts: an installed font that has the character, found
   with ``fc-list`` or in the usual font folders (the shipped font's Hanja when none has it);
5. Pillow's own default font last (it draws the box for whatever is still missing).

Whether a font has a character is read from its ``cmap`` table, and its glyph must draw
something (some fonts map thousands of characters to empty glyphs).
Labels wrap at spaces; a word too long for its line first gets a smaller size (as A1111 does),
down to two thirds of the label size, and is only broken when it still does not fit.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import RecipeError

BUNDLED = Path(__file__).with_name("fonts") / "NanumBarunGothic.ttf"
DEJAVU = "DejaVuSans.ttf"
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
FONT_ALLOWED = "a TrueType or OpenType font file (.ttf, .otf, .ttc), e.g. one with Hangul"

# Hangul: Jamo, compatibility Jamo, Jamo extended A and B, syllables, halfwidth forms.
_HANGUL = [(0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF),
           (0xFFA0, 0xFFDC)]  # fmt: skip
# CJK radicals, kana, ideographs and their extensions, compatibility ideographs: an installed
# CJK font comes before the shipped font's Hanja, so Chinese or Japanese keeps one style.
_CJK = [(0x2E80, 0x2FDF), (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF),
        (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF)]  # fmt: skip


def _in(ranges: list[tuple[int, int]], cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _joins(ch: str) -> bool:
    """Combining marks, joiners and variation selectors stay with the character before."""
    return unicodedata.category(ch)[0] == "M" or unicodedata.category(ch) == "Cf"


# --- which characters a font file has: its cmap table -------------------------------------


def _read_cmap(f, index: int) -> bytes:
    """The cmap table of face ``index`` (a collection holds several), read with a few seeks:
    a 20 MB CJK font costs a few kilobytes of reading."""

    def read(at: int, n: int) -> bytes:
        f.seek(at)
        data = f.read(n)
        if len(data) < n:
            raise ValueError("truncated font file")
        return data

    base = 0
    if read(0, 4) == b"ttcf":
        (count,) = struct.unpack(">I", read(8, 4))
        if index >= count:
            raise ValueError("no such face")
        (base,) = struct.unpack(">I", read(12 + 4 * index, 4))
    (tables,) = struct.unpack(">H", read(base + 4, 2))
    directory = read(base + 12, 16 * tables)
    for i in range(tables):
        tag, _, offset, length = struct.unpack_from(">4sIII", directory, 16 * i)
        if tag == b"cmap":
            return read(offset, length)
    raise ValueError("no cmap table")


def _format4(data: bytes, at: int) -> set[int]:
    (n2,) = struct.unpack_from(">H", data, at + 6)
    n = n2 // 2
    ends = struct.unpack_from(f">{n}H", data, at + 14)
    starts = struct.unpack_from(f">{n}H", data, at + 16 + n2)
    deltas = struct.unpack_from(f">{n}h", data, at + 16 + 2 * n2)
    range_at = at + 16 + 3 * n2
    offsets = struct.unpack_from(f">{n}H", data, range_at)
    out: set[int] = set()
    for i, (lo, hi, delta, ro) in enumerate(zip(starts, ends, deltas, offsets, strict=True)):
        if lo > hi or lo == 0xFFFF:
            continue
        if ro == 0:  # glyph = code + delta (mod 65536); one code of the range may land on 0
            zero = (-delta) & 0xFFFF
            out.update(range(lo, hi + 1))
            if lo <= zero <= hi:
                out.discard(zero)
            continue
        for c in range(lo, hi + 1):  # glyph ids from the glyph array; 0 is "missing"
            pos = range_at + 2 * i + ro + 2 * (c - lo)
            if pos + 2 <= len(data) and struct.unpack_from(">H", data, pos)[0]:
                out.add(c)
    return out


def _format12(data: bytes, at: int) -> set[int]:
    (groups,) = struct.unpack_from(">I", data, at + 12)
    out: set[int] = set()
    for g in range(groups):
        lo, hi, glyph = struct.unpack_from(">III", data, at + 16 + 12 * g)
        out.update(range(lo + (glyph == 0), hi + 1))
    return out


# Unicode subtables, best first: the full repertoire (format 12), then the BMP one (format 4).
_SUBTABLES = [(3, 10, 12), (0, 6, 12), (0, 4, 12), (0, 3, 12),
              (3, 1, 4), (0, 3, 4), (0, 2, 4), (0, 1, 4), (0, 0, 4), (3, 0, 4)]  # fmt: skip


@functools.cache
def font_chars(path: str, index: int = 0) -> frozenset[int] | None:
    """The code points a font file maps to a glyph; None when its cmap cannot be read."""
    try:
        with open(path, "rb") as f:
            cmap = _read_cmap(f, index)
        (count,) = struct.unpack_from(">H", cmap, 2)
        found = {}
        for i in range(count):
            pid, eid, offset = struct.unpack_from(">HHI", cmap, 4 + 8 * i)
            (fmt,) = struct.unpack_from(">H", cmap, offset)
            found.setdefault((pid, eid, fmt), offset)
        for key in _SUBTABLES:
            if key in found:
                parse = _format12 if key[2] == 12 else _format4
                return frozenset(parse(cmap, found[key]))
    except (OSError, ValueError, struct.error):
        return None
    return None


# --- the faces of the chain ---------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """One font file (``path`` None: Pillow's own default font, the last resort)."""

    path: str | None
    index: int = 0  # the face inside a .ttc collection

    def has(self, ch: str) -> bool:
        if self.path is None:
            return True
        chars = font_chars(self.path, self.index)
        if chars is not None and ord(ch) not in chars:
            return False
        return ch.isspace() or _joins(ch) or _drawn(self, ch, chars is None)

    def font(self, size: int):
        return _truetype(self.path, self.index, size)


@functools.lru_cache(maxsize=512)
def _truetype(path: str | None, index: int, size: int):
    from PIL import ImageFont

    if path is not None:
        return ImageFont.truetype(path, size, index=index)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=8192)
def _drawn(face: Face, ch: str, unmapped: bool) -> bool:
    """Does ``ch`` draw any ink? ``unmapped`` (a font whose cmap cannot be read): and not the
    glyph of a code point no font has (U+FFFF, a noncharacter), the missing-glyph box."""
    font = face.font(32)
    mask = font.getmask(ch)
    if mask.getbbox() is None:
        return False
    return not unmapped or bytes(mask) != bytes(font.getmask("\uffff"))


@functools.lru_cache(maxsize=1)
def dejavu() -> Face | None:
    """DejaVu Sans where Pillow finds it (the system font folders), else None."""
    from PIL import ImageFont

    try:
        return Face(str(ImageFont.truetype(DEJAVU, 12).path))
    except OSError:
        return None


def user_face(path: str | os.PathLike, option: str = "--font") -> Face:
    """``--font``: a font file, or a font file name Pillow finds in the system font folders."""
    from PIL import ImageFont

    try:
        found = ImageFont.truetype(str(path), 12).path
    except (OSError, ValueError):
        raise RecipeError(option, str(path), FONT_ALLOWED) from None
    return Face(str(found if isinstance(found, str | os.PathLike) else path))


def _font_dirs() -> list[Path]:
    home = Path.home()
    dirs = [home / ".fonts", home / ".local/share/fonts", Path("/usr/share/fonts"),
            Path("/usr/local/share/fonts"), home / "Library/Fonts", Path("/Library/Fonts"),
            Path("/System/Library/Fonts")]  # fmt: skip
    if sys.platform == "win32":
        windir = Path(os.environ.get("WINDIR", "C:/Windows"))
        local = Path(os.environ.get("LOCALAPPDATA", home / "AppData/Local"))
        dirs = [windir / "Fonts", local / "Microsoft/Windows/Fonts"]
    return dirs


def _preference(path: str) -> tuple:
    """Regular upright sans faces before bold, italic, monospace and serif ones."""
    name = Path(path).name.lower()
    styled = any(w in name for w in ("bold", "italic", "oblique", "light", "thin", "black"))
    return (styled, "mono" in name, "serif" in name and "sans" not in name, name, path)


@functools.lru_cache(maxsize=1)
def system_fonts() -> tuple[Face, ...]:
    """Installed font files, preferred first: fontconfig's list, else the usual folders."""
    files: set[str] = set()
    fc_list = shutil.which("fc-list")
    if fc_list:
        try:
            out = subprocess.run(
                [fc_list, "--format", "%{file}\n"], capture_output=True, text=True, timeout=20
            ).stdout
            files = {line for line in out.splitlines() if line.lower().endswith(FONT_SUFFIXES)}
        except (OSError, subprocess.SubprocessError):
            files = set()
    if not files:
        for folder in _font_dirs():
            if folder.is_dir():
                for root, _, names in os.walk(folder):
                    files |= {os.path.join(root, n) for n in names
                              if n.lower().endswith(FONT_SUFFIXES)}  # fmt: skip
    bundled = os.path.realpath(BUNDLED)
    return tuple(Face(p) for p in sorted(files, key=_preference) if os.path.realpath(p) != bundled)


# --- the chain at one size ----------------------------------------------------------------


class Fonts:
    """The font chain at one pixel size: which font draws each run of a text, its length."""

    def __init__(self, size: int, user: Face | None = None):
        self.size, self.user = int(size), user
        self._faces: dict[str, Face] = {}

    def at(self, size: int) -> Fonts:
        """The same chain at another size."""
        return self if int(size) == self.size else _chain(int(size), self.user)

    @property
    def reference(self) -> Face:
        """The face whose ascent and descent place every line's baseline."""
        return self.user or dejavu() or Face(str(BUNDLED))

    def order(self, ch: str):
        """The faces to try for ``ch``, first choice first."""
        bundled, latin = Face(str(BUNDLED)), dejavu()
        if self.user:
            yield self.user
        cp = ord(ch)
        if _in(_HANGUL, cp):
            yield bundled
        if latin:
            yield latin
        if _in(_CJK, cp):
            yield from system_fonts()
            yield bundled
        else:
            yield bundled
            yield from system_fonts()
        yield Face(None)

    def face_for(self, ch: str) -> Face:
        face = self._faces.get(ch)
        if face is None:
            face = self._faces[ch] = next(f for f in self.order(ch) if f.has(ch))
        return face

    def runs(self, text: str) -> list[tuple[str, object]]:
        """``text`` cut into (run, Pillow font) pieces, each drawable by its font."""
        pieces: list[list] = []
        for ch in text:
            face = pieces[-1][1] if pieces and _joins(ch) else self.face_for(ch)
            if pieces and pieces[-1][1] == face:
                pieces[-1][0] += ch
            else:
                pieces.append([ch, face])
        return [(run, face.font(self.size)) for run, face in pieces]

    def getlength(self, text: str) -> float:
        return sum(font.getlength(run) for run, font in self.runs(text))

    def draw(self, draw, xy: tuple[float, float], text: str, fill) -> None:
        """Draw ``text`` centred on ``xy`` (Pillow's anchor "mm"), run by run, on one baseline."""
        pieces = self.runs(text)
        x = xy[0] - sum(font.getlength(run) for run, font in pieces) / 2
        ref = self.reference.font(self.size)
        ascent, descent = ref.getmetrics() if hasattr(ref, "getmetrics") else (self.size, 0)
        baseline = xy[1] + (ascent - descent) / 2
        for run, font in pieces:
            if hasattr(font, "getmetrics"):
                draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
            else:  # Pillow < 10.1's bitmap font takes no anchor
                draw.text((x, xy[1] - self.size / 2), run, fill=fill, font=font)
            x += font.getlength(run)


@functools.lru_cache(maxsize=256)
def _chain(size: int, user: Face | None) -> Fonts:
    return Fonts(size, user)


def fonts_for(size: int, font: str | os.PathLike | Face | None = None) -> Fonts:
    """The chain at ``size``; ``font`` (``--font``) first when given."""
    user = font if isinstance(font, Face) or font is None else user_face(font)
    return _chain(int(size), user)


# --- labels: wrap at spaces, shrink a word too long, break it only as a last resort ---------


def line_height(size: int) -> int:
    return size + size // 3


def min_size(size: int) -> int:
    """The smallest size a label shrinks to before a word is broken."""
    return min(size, max(8, size * 2 // 3))


def _cut(word: str, fonts: Fonts, width: float) -> int:
    """The longest prefix of ``word`` that fits (at least one character, never a lone mark)."""
    best = 1
    for i in range(2, len(word)):
        if _joins(word[i]):
            continue
        if fonts.getlength(word[:i]) > width:
            break
        best = i
    while best < len(word) and _joins(word[best]):
        best += 1
    return best


def wrap(text: str, fonts: Fonts, width: float) -> list[str]:
    """Greedy wrap at spaces; a word longer than the whole line alone is broken."""
    lines: list[str] = []
    for word in text.split():
        if lines and fonts.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
            continue
        while len(word) > 1 and fonts.getlength(word) > width:
            cut = _cut(word, fonts, width)
            if cut >= len(word):
                break
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def fit(texts: list[str], fonts: Fonts, width: float, height: float | None = None,
        smallest: int | None = None) -> tuple[Fonts, list[list[str]]]:  # fmt: skip
    """One size for a set of labels (an axis): the largest, down to ``smallest``, at which
    every word fits ``width`` (and every label fits ``height``, when given); then each
    label's lines at that size. Past ``smallest`` long words are broken and labels may stay
    taller than ``height``: the caller makes room, nothing is clipped."""
    smallest = min_size(fonts.size) if smallest is None else min(smallest, fonts.size)
    words = {w for t in texts for w in t.split()}
    longest = max((fonts.getlength(w) for w in words), default=0.0)
    size = fonts.size
    if longest > width > 0:
        size = max(smallest, min(size, int(size * width / longest) + 1))
        while size > smallest and max(fonts.at(size).getlength(w) for w in words) > width:
            size -= 1
    while True:
        chain = fonts.at(size)
        lines = [wrap(t, chain, width) for t in texts]
        tall = height is not None and max(map(len, lines)) * line_height(size) > height
        if not tall or size <= smallest:
            return chain, lines
        size -= 1
