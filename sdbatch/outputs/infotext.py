"""AUTOMATIC1111-style infotext: the ``parameters`` text A1111 writes into a PNG.

Layout (what A1111's ``create_infotext`` writes and ``parse_generation_parameters`` reads)::

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>    (left out when empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, ...

Pure Python on purpose: manifests, tests and tools read and write infotext without torch.
Pillow is imported only inside the two PNG helpers.

Reading a PNG someone sent you is bounded: `read_png_infotext` walks the PNG's chunks itself
(struct and zlib; pixels are never decoded), refuses a header claiming more pixels than
Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) and reads at most
`INFOTEXT_MAX_BYTES` (1 MiB, Pillow's default ``PngImagePlugin.MAX_TEXT_CHUNK``) of infotext,
inflating compressed chunks no further than that. Parsing is linear in the text's length.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.PngImagePlugin import PngInfo

__all__ = [
    "INFOTEXT_MAX_BYTES",
    "Infotext",
    "PngTextError",
    "format_infotext",
    "format_params",
    "format_value",
    "parse_infotext",
    "parse_params",
    "parse_size",
    "png_info",
    "read_png_infotext",
    "sampler_name",
]

PNG_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"

# One "Key: value" item of the params line. Keys are what A1111 accepts (a word character, then
# word characters, spaces, "-" and "/", e.g. "Prompt S/R"); a value is either a JSON string (it
# may hold "," and escaped quotes) or anything up to the next ",".
# Read by `parse_params` in two steps (one regex would retry every start inside a long run of
# key characters, which is quadratic): a run of key characters followed by ":" (its first word
# character starts the key), then the value from there.
_KEY_RUN = re.compile(r"[\w /-]+")
_WORD = re.compile(r"\w")
_VALUE = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')
_KEY = re.compile(r"\w[\w /-]*")
_SIZE = re.compile(r"(\d+)x(\d+)")
# A1111 needs this many pairs on the last line before it believes the line is not prompt text.
_MIN_PAIRS = 3
# For a month in 2023 (May to June) the ControlNet extension's unit keys began with a line
# break, so each unit's field ("ControlNet 0: "...", ") sits on a line of its own after the
# params line; such lines are read as part of it.
_UNIT_LINE = re.compile(r'ControlNet(?: \d+)?: "')


@dataclass
class Infotext:
    """A parsed infotext; ``params`` keeps every key in order, values as written but unquoted."""

    prompt: str
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def to_text(self) -> str:
        """Format back; for text A1111 wrote, this gives the same bytes back."""
        return format_infotext(self.prompt, self.negative_prompt, self.params)


def format_value(value: object) -> str:
    """Write a value as A1111 does: its floats went through the browser, so 7.0 reads ``7``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):  # float, and numpy floats without importing numpy
        as_float = float(value)
        if as_float.is_integer():
            return str(int(as_float))
        return repr(as_float) if isinstance(value, float) else str(value)
    return str(value)


def _quote(text: str) -> str:
    """JSON-quote what would break the params line; everything else stays verbatim, as in A1111.

    Beyond A1111 we also quote "\\r" (a line break once \\r\\n is normalised) and a value that
    starts with '"' (A1111 writes ``"x"`` bare, and its own parser then strips the quotes).
    """
    if any(c in text for c in ",:\n\r") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, str):
            return value
    return text


def format_params(params: Mapping[str, object]) -> str:
    """The one ``Key: value, ...`` line; None is skipped, a value equal to its key is bare."""
    items = []
    for key, value in params.items():
        if value is None:
            continue
        text = format_value(value)
        if text == key:  # A1111 writes flags such as "Foo: Foo" as just "Foo"
            items.append(key)
            continue
        if not _KEY.fullmatch(key):
            raise ValueError(f"infotext key {key!r} could not be read back")
        items.append(f"{key}: {_quote(text)}")
    return ", ".join(items)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build the infotext A1111 would write (outer whitespace is stripped, as A1111 does)."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params(params)}".strip()


def parse_params(line: str) -> tuple[dict[str, str], int]:
    """Read a params line; returns the values and how many ``Key: value`` pairs it held.

    A1111 silently drops text between pairs; we keep each such piece as a flag (value equal to
    its key) so bare flags survive a round trip. Only real pairs count towards the 3-pair rule.
    """
    params: dict[str, str] = {}
    pairs = 0
    pos = 0

    def flags(gap: str) -> None:
        for piece in gap.split(","):
            if piece.strip():
                params[piece.strip()] = piece.strip()

    search = 0
    while run := _KEY_RUN.search(line, search):
        end = run.end()
        start = _WORD.search(line, run.start(), end)
        if start is None or line[end : end + 1] != ":":
            search = end
            continue  # no key can start inside this run: each would end here too
        value = _VALUE.match(line, end + 1)
        flags(line[pos : start.start()])
        params[line[start.start() : end]] = _unquote(value.group(1))
        pairs += 1
        pos = search = value.end()
    flags(line[pos:])
    return params, pairs


def parse_infotext(text: str) -> Infotext:
    """Split infotext into prompt, negative prompt and params by A1111's rules.

    The last line is the params line only if it holds at least 3 pairs, so a prompt ending in
    ``style: anime, mood: calm`` stays prompt. Unlike A1111 we do not strip each line, so the
    prompts come back exactly as they were written. Lines after the params line that each hold
    one ControlNet unit (``ControlNet 0: "..."``, as the extension wrote them in May 2023) are
    read as part of it; `Infotext.to_text` then writes them on the params line.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    units = 0  # the 2023 extension's unit lines below the params line (_UNIT_LINE)
    while units + 1 < len(lines) and _UNIT_LINE.match(lines[-1 - units]):
        units += 1
    head = lines[-1 - units].rstrip() if units else ""
    if head.endswith(",") and parse_params(head)[1] >= _MIN_PAIRS:  # a params line of its own
        lines[-1 - units :] = [" ".join([head, *lines[len(lines) - units :]])]
    params, pairs = parse_params(lines[-1])
    if pairs >= _MIN_PAIRS:
        lines.pop()
    else:
        params = {}

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.startswith(NEGATIVE_PREFIX):
            negative_lines.append(line[len(NEGATIVE_PREFIX) :].lstrip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), params)


def parse_size(value: str) -> tuple[int, int]:
    """``"512x768"`` -> ``(512, 768)``: width first, as A1111 writes ``Size``."""
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a WIDTHxHEIGHT size: {value!r}")
    return int(match.group(1)), int(match.group(2))


def sampler_name(params: Mapping[str, str]) -> str:
    """The classic combined sampler name ("DPM++ 2M Karras") from either infotext layout.

    A1111 1.9+ writes ``Sampler: DPM++ 2M, Schedule type: Karras``; older versions wrote the
    combined name. "Automatic" (or no schedule type) adds nothing. Beware: in A1111 1.9+
    "Automatic" means the sampler's own default, which for "DPM++ 2M" is itself Karras.
    """
    name = params.get("Sampler", "")
    schedule = params.get("Schedule type", "Automatic")
    if not schedule or schedule == "Automatic" or name.endswith(f" {schedule}"):
        return name
    return f"{name} {schedule}"


def png_info(infotext: str) -> PngInfo:
    """PNG text chunks holding ``parameters``, for ``image.save(path, pnginfo=...)``.

    iTXt is UTF-8, so Korean and emoji survive; A1111's Pillow ``add_text`` only picks iTXt
    when the text is not Latin-1, and Pillow reads both kinds back alike. Uncompressed, as
    A1111 writes it, so simple readers that do not inflate still see it.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PNG_KEY, infotext)
    return info


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INFOTEXT_MAX_BYTES = 1 << 20  # 1 MiB: Pillow's default PngImagePlugin.MAX_TEXT_CHUNK
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_CHUNK_SLACK = 4096  # keyword, language tags and deflate's framing around the text itself
_MAX_CHUNKS = 1_000_000  # a real PNG has a few thousand at most; each costs a read and a seek


class PngTextError(ValueError):
    """A PNG whose infotext sdbatch will not read; the message is one line (no file name)."""


def _too_long(size: str) -> PngTextError:
    return PngTextError(
        f"its '{PNG_KEY}' text chunk holds {size} bytes; sdbatch reads at most "
        f"{INFOTEXT_MAX_BYTES:,} bytes (1 MiB) of infotext"
    )


def _inflate(data: bytes) -> bytes:
    """zlib data inflated to at most INFOTEXT_MAX_BYTES (a bomb stops there)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, INFOTEXT_MAX_BYTES + 1)
    except zlib.error as exc:
        raise PngTextError(f"its '{PNG_KEY}' text chunk does not inflate ({exc})") from None
    if len(text) > INFOTEXT_MAX_BYTES:
        raise _too_long(f"more than {INFOTEXT_MAX_BYTES:,}")
    return text


def _capped(text: bytes) -> bytes:
    if len(text) > INFOTEXT_MAX_BYTES:
        raise _too_long(f"{len(text):,}")
    return text


def _text_value(kind: bytes, body: bytes) -> str | None:
    """The text of a tEXt, zTXt or iTXt chunk's body after its keyword, as Pillow reads it."""
    if kind == b"tEXt":
        return _capped(body).decode("latin-1")
    if kind == b"zTXt":
        return _inflate(body[1:]).decode("latin-1") if body[:1] == b"\0" else None
    if len(body) < 2:  # iTXt: flag, method, language\0, translated keyword\0, text
        return None
    compressed, method = body[0], body[1]
    parts = body[2:].split(b"\0", 2)
    if len(parts) != 3 or (compressed and method != 0):
        return None
    text = _inflate(parts[2]) if compressed else _capped(parts[2])
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise PngTextError(f"its '{PNG_KEY}' iTXt chunk is not UTF-8") from None


def _check_pixels(width: int, height: int) -> None:
    """Pillow's decompression-bomb limit, which sdbatch keeps for every PNG it is handed."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise PngTextError(
            f"its header claims {width:,}x{height:,} = {width * height:,} pixels, more than "
            f"Pillow's decompression-bomb limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS)"
        )


def _walk(f: IO[bytes]) -> str | None:
    if f.read(8) != PNG_SIGNATURE:
        raise PngTextError(f"not a PNG file; sdbatch reads the '{PNG_KEY}' text chunk of PNGs")
    found: dict[bool, str] = {}  # before IDAT / after it -> the last 'parameters' text there
    after_idat = False
    first = True
    for _ in range(_MAX_CHUNKS):
        if len(head := f.read(8)) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if first and kind != b"IHDR":
            raise PngTextError("a broken PNG file (its first chunk is not IHDR)")
        first = False
        if kind == b"IEND":
            break
        if kind == b"IHDR":
            data = f.read(length)
            if length < 8 or len(data) < 8:
                raise PngTextError("a broken PNG file (IHDR cut short)")
            _check_pixels(*struct.unpack(">II", data[:8]))
            f.seek(4, os.SEEK_CUR)
            continue
        after_idat = after_idat or kind == b"IDAT"
        if kind not in _TEXT_CHUNKS:
            f.seek(length + 4, os.SEEK_CUR)
            continue
        lead = f.read(min(length, 80))  # a keyword is 1-79 bytes, then a NUL
        if lead.split(b"\0", 1)[0] != PNG_KEY.encode() or b"\0" not in lead:
            f.seek(length - len(lead) + 4, os.SEEK_CUR)
            continue
        if length > INFOTEXT_MAX_BYTES + _CHUNK_SLACK:
            raise _too_long(f"{length:,}")
        data = lead + f.read(length - len(lead))
        crc = f.read(4)
        if len(data) < length or len(crc) < 4:
            raise PngTextError(f"a PNG cut short inside its '{PNG_KEY}' text chunk")
        if zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
            raise PngTextError(f"a broken PNG file (bad checksum in its '{PNG_KEY}' chunk)")
        value = _text_value(kind, data[len(PNG_KEY) + 1 :])
        if value is not None:
            found[after_idat] = value
    else:
        raise PngTextError(f"a PNG of more than {_MAX_CHUNKS:,} chunks; not one sdbatch reads")
    return found.get(False, found.get(True))


def read_png_infotext(path: str | os.PathLike[str] | IO[bytes]) -> str | None:
    """The ``parameters`` text of a PNG (tEXt, zTXt or iTXt), or None when it has none.

    Like Pillow, the last such chunk before the image data wins, else the last one after it.
    A PngTextError (one line) for a file that is not a PNG, a header over Pillow's
    decompression-bomb limit, or infotext over INFOTEXT_MAX_BYTES; OSError when unreadable.
    """
    if hasattr(path, "read"):
        return _walk(path)  # type: ignore[arg-type]
    with open(path, "rb") as f:
        return _walk(f)
