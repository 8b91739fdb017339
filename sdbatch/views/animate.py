"""One-axis animations: step through a sweep (a variable, CFG, steps) as an animated WebP/GIF.

Frames only make sense when nothing but the axis changes, so the other pixel-deciding columns
must hold one value each (``--where`` pins them). Pillow + pyarrow only: no torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdbatch.errors import UserError
from sdbatch.outputs.reading import (
    check_column,
    filter_rows,
    label,
    pick_first,
    show,
    value,
    varying,
)
from sdbatch.views.fonts import fit, line_height
from sdbatch.views.grid import (
    _slug,
    check_scale,
    font_for,
    label_metrics,
    load_cell_image,
    name_suffix,
    ordered,
    plan_order,
)

FORMATS = {".webp": "WEBP", ".gif": "GIF"}


def default_path(out_dir, axis: str, where: str | None = None, scale: int = 1) -> Path:
    """``DIR/animations/<axis>[-where-...][-scaleN].webp``: other filters, other files."""
    return Path(out_dir) / "animations" / f"{_slug(axis)}{name_suffix(where, scale)}.webp"


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
    """(axis values in the order the plan made them, which is the recipe's; the row shown for
    each; notes). Refuses incomparable frames."""
    check_column(rows, axis, "--axis")
    rows = plan_order(filter_rows(rows, where))
    others = varying(rows, [axis])
    if others:
        shown = "; ".join(f"{c} has {len(v)} values ({_few(v)})" for c, v in others.items())
        first = next(iter(others))
        hint = where_hint(first, others[first][0])
        raise UserError(f"frames would not be comparable: {shown}; pin them, e.g. {hint}")
    values = ordered(rows, axis)
    picked, notes = [], []
    for v in values:
        group = [r for r in rows if show(value(r, axis)) == show(v)]
        if len(group) > 1:
            notes.append(
                f"note: {label(axis, v)} matches {len(group)} rows; using the first by seed"
            )
        picked.append(pick_first(group))
    return values, picked, notes


def render_frames(axis: str, values: list, picked: list[dict], caption: bool = False,
                  scale: int = 1, font=None) -> list:  # fmt: skip
    """Pillow frames at the images' size times ``scale`` (nearest neighbour, crisp pixels;
    placeholders for failed/NaN rows), optionally captioned underneath.

    A caption wraps at spaces and gets smaller when a word is wider than the frame (a word is
    broken only past that); the band under the frames is as tall as the longest caption needs,
    the same for every frame, so nothing is clipped. ``font``: ``--font``, tried first.
    """
    from PIL import Image, ImageDraw

    scale = check_scale(scale)
    ok = [r for r in picked if r["status"] == "ok"] or picked
    size = (max(r["width"] or 64 for r in ok), max(r["height"] or 64 for r in ok))
    size = (size[0] * scale, size[1] * scale)
    font_size, _, pad, _ = label_metrics(*size)
    fonts = font_for(font_size, font)
    texts = [label(axis, v) for v in values]
    cap_fonts, cap_lines = fit(texts, fonts, size[0] - pad) if caption else (fonts, [])
    line_h = line_height(cap_fonts.size)
    band = line_h * max(map(len, cap_lines), default=0) + 2 * pad
    frames = []
    for k, row in enumerate(picked):
        frame = load_cell_image(row, size, fonts, scale)
        if caption:
            framed = Image.new("RGB", (size[0], size[1] + band), "white")
            framed.paste(frame, (0, 0))
            draw, lines = ImageDraw.Draw(framed), cap_lines[k]
            y0 = size[1] + (band - line_h * len(lines)) / 2
            for n, line in enumerate(lines):
                cap_fonts.draw(draw, (size[0] / 2, y0 + n * line_h + line_h / 2), line, "black")
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
    scale: int = 1,
    font=None,
) -> list[str]:
    """Write the animation; returns notes for stderr."""
    scale = check_scale(scale)
    values, picked, notes = frames_for(rows, axis, where)
    frames = render_frames(axis, values, picked, caption, scale, font)
    for k in range(1, len(frames)):
        if frames[k].tobytes() == frames[k - 1].tobytes():  # GIF and WebP encoders merge these
            notes.append(
                f"note: {label(axis, values[k - 1])} and {show(values[k])} look identical; "
                "the file shows them as one longer frame (--caption keeps them apart)"
            )
    save_animation(frames, out, duration_ms)
    return notes
