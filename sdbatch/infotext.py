"""AUTOMATIC1111-style infotext: the ``parameters`` text A1111 writes into a PNG.

Layout (what A1111's ``create_infotext`` writes and ``parse_generation_parameters`` reads)::

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>    (left out when empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, ...

Pure Python on purpose: manifests, tests and tools read and write infotext without torch.
Pillow is imported only inside the two PNG helpers.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.PngImagePlugin import PngInfo

__all__ = [
    "Infotext",
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
_PAIR = re.compile(r'\s*(\w[\w /-]*):\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')
_KEY = re.compile(r"\w[\w /-]*")
_SIZE = re.compile(r"(\d+)x(\d+)")
# A1111 needs this many pairs on the last line before it believes the line is not prompt text.
_MIN_PAIRS = 3


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

    for match in _PAIR.finditer(line):
        flags(line[pos : match.start()])
        params[match.group(1)] = _unquote(match.group(2))
        pairs += 1
        pos = match.end()
    flags(line[pos:])
    return params, pairs


def parse_infotext(text: str) -> Infotext:
    """Split infotext into prompt, negative prompt and params by A1111's rules.

    The last line is the params line only if it holds at least 3 pairs, so a prompt ending in
    ``style: anime, mood: calm`` stays prompt. Unlike A1111 we do not strip each line, so the
    prompts come back exactly as they were written.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
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


def read_png_infotext(path: str | os.PathLike[str] | IO[bytes]) -> str | None:
    """The ``parameters`` text of a PNG (tEXt, zTXt or iTXt), or None when it has none."""
    from PIL import Image

    with Image.open(path) as image:
        value = image.info.get(PNG_KEY)
        if value is None and hasattr(image, "text"):  # chunks after IDAT need a full load
            value = image.text.get(PNG_KEY)
    return None if value is None else str(value)
