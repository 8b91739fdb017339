"""One-axis animations: step through a sweep (a variable, CFG, steps) as an animated WebP/GIF.

Frames only make sense when nothing but the axis changes, so the other pixel-deciding columns
must hold one value each (``--where`` pins them). Pillow + pyarrow only: no torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdbatch.errors import UserError
from sdbatch.grid import font_for, label_metrics, load_cell_image
from sdbatch.rows import (
    check_column,
    distinct,
    filter_rows,
    label,
    pick_first,
    show,
    value,
    varying,
)

FORMATS = {".webp": "WEBP", ".gif": "GIF"}


def where_hint(column: str, v) -> str:
    """``--where "vars.style == 'bob cut'"``: a filter the user can paste."""
    text = show(v)
    if not re.fullmatch(r"[\w.+-]+", text):
        text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f'--where "{column} == {text}"'


def _few(values: list) -> str:
    return ", ".join(show(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")


def frames_for(
    rows: list[dict], axis: str, where: str | None = None
) -> tuple[list, list[dict | None], list[str]]:
    """(axis values in order, the row shown for each, notes); refuses incomparable frames."""
    check_column(rows, axis, "--axis")
    rows = filter_rows(rows, where)
    others = varying(rows, [axis])
    if others:
        shown = "; ".join(f"{c} has {len(v)} values ({_few(v)})" for c, v in others.items())
        first = next(iter(others))
        hint = where_hint(first, others[first][0])
        raise UserError(f"frames would not be comparable: {shown}; pin them, e.g. {hint}")
    values = distinct(rows, axis)
    picked, notes = [], []
    for v in values:
        group = [r for r in rows if show(value(r, axis)) == show(v)]
        if len(group) > 1:
            notes.append(
                f"note: {label(axis, v)} matches {len(group)} rows; using the first by seed"
            )
        picked.append(pick_first(group))
    return values, picked, notes


def render_frames(axis: str, values: list, picked: list[dict], caption: bool = False) -> list:
    """Pillow frames at the images' size (placeholders for failed/NaN rows), optional caption."""
    from PIL import Image, ImageDraw

    ok = [r for r in picked if r["status"] == "ok"] or picked
    size = (max(r["width"] or 64 for r in ok), max(r["height"] or 64 for r in ok))
    font_size, line_h, pad, _ = label_metrics(*size)
    font = font_for(font_size)
    frames = []
    for v, row in zip(values, picked, strict=True):
        frame = load_cell_image(row, size, font)
        if caption:
            framed = Image.new("RGB", (size[0], size[1] + line_h + 2 * pad), "white")
            framed.paste(frame, (0, 0))
            text_pos = (size[0] / 2, size[1] + pad + line_h / 2)
            ImageDraw.Draw(framed).text(text_pos, label(axis, v), "black", font, "mm")
            frame = framed
        frames.append(frame)
    return frames


def save_animation(frames: list, out: Path, duration_ms: int) -> None:
    """Animated WebP (lossless) or GIF, looping forever; the format follows the extension."""
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"-o: {out.name!r} must end in .webp or .gif")
    if duration_ms <= 0:
        raise UserError(f"--duration: {duration_ms} is not allowed; give milliseconds > 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {"lossless": True} if fmt == "WEBP" else {"disposal": 1}
    frames[0].save(
        out,
        format=fmt,
        save_all=True,
        append_images=frames[1:],
        duration=duration_ms,
        loop=0,
        **extra,
    )


def animate(
    rows: list[dict],
    axis: str,
    out: Path,
    where: str | None = None,
    duration_ms: int = 500,
    caption: bool = False,
) -> list[str]:
    """Write the animation; returns notes for stderr."""
    values, picked, notes = frames_for(rows, axis, where)
    frames = render_frames(axis, values, picked, caption)
    for k in range(1, len(frames)):
        if frames[k].tobytes() == frames[k - 1].tobytes():  # GIF and WebP encoders merge these
            notes.append(
                f"note: {label(axis, values[k - 1])} and {show(values[k])} look identical; "
                "the file shows them as one longer frame (--caption keeps them apart)"
            )
    save_animation(frames, out, duration_ms)
    return notes
