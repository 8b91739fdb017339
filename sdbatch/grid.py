"""X/Y/Z contact sheets from manifests, labelled the way A1111's X/Y/Z plot labels them.

Rows come from ``sdbatch.rows`` (reading manifests, column names, ``--where``); the cell and
label drawing here is shared with ``animate``. Pillow + pyarrow only: no torch, so the tools
start fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sdbatch.errors import RecipeError, UserError
from sdbatch.infotext import format_infotext, parse_infotext, png_info
from sdbatch.rows import (
    axis_name,
    check_column,
    distinct,
    filter_rows,
    label,
    load_rows,
    parse_where,
    pick_first,
    show,
    value,
    varying,
)

# Placeholder cells, so a failed image is never silently missing.
COLOURS = {"failed": (200, 40, 40), "nan": (128, 128, 128), "missing": (90, 90, 90)}
COLOURS["empty"] = (235, 235, 235)
PLACEHOLDER_TEXT = {"failed": "failed", "nan": "NaN", "missing": "missing", "empty": ""}


SCALE_ALLOWED = "a whole number of at least 1 (4 draws each pixel as a 4x4 block)"


def check_scale(scale, field: str = "--scale") -> int:
    """A cell upscale factor: an integer >= 1 (``4.0`` from YAML is 4); else a one-line error."""
    ok = isinstance(scale, int | float) and not isinstance(scale, bool)
    if not ok or not float(scale).is_integer() or scale < 1:
        raise RecipeError(field, scale, SCALE_ALLOWED)
    return int(scale)


def load_cell_image(row: dict | None, size: tuple[int, int], text_font=None, scale: int = 1):
    """The row's image at ``size``, or a placeholder cell saying why there is none.

    ``scale`` > 1: ``size`` is the scaled cell; the image is brought to ``size // scale`` as
    before, then enlarged with nearest-neighbour resampling (each pixel a crisp block).
    """
    from PIL import Image, ImageDraw

    kind = "empty" if row is None else {"failed": "failed", "nan": "nan"}.get(row["status"])
    if kind is None:
        path = Path(row["_root"]) / row["image"] if row.get("image") else None
        if path is not None and path.is_file():
            with Image.open(path) as im:
                im = im.convert("RGB")
                native = (size[0] // scale, size[1] // scale)
                im = im if im.size == native else im.resize(native)
                return im if scale == 1 else im.resize(size, Image.Resampling.NEAREST)
        kind = "missing"
    cell = Image.new("RGB", size, COLOURS[kind])
    text = PLACEHOLDER_TEXT[kind]
    if text:
        font = text_font or font_for(12)
        draw = ImageDraw.Draw(cell)
        draw.text((size[0] / 2, size[1] / 2), text, fill="white", font=font, anchor="mm")
    return cell


def font_for(size: int):
    """DejaVu Sans (A1111's grid font) when installed, else Pillow's bundled font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: one small bitmap font
            return ImageFont.load_default()


def label_metrics(cell_w: int, cell_h: int) -> tuple[int, int, int, int]:
    """(font size, line height, padding, left band width) for a cell size; A1111's proportions."""
    font_size = max(12, (cell_w + cell_h) // 25)
    left = max(cell_w * 3 // 4, font_size * 8)
    return font_size, font_size + font_size // 3, font_size // 2, left


def wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap; a word longer than the width is cut."""
    lines: list[str] = []
    for word in text.split(" "):
        while len(word) > 1 and font.getlength(word) > width:
            cut = max([1] + [i for i in range(1, len(word)) if font.getlength(word[:i]) <= width])
            lines.append(word[:cut])
            word = word[cut:]
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


@dataclass
class Sheet:
    """One drawn grid: the picture, its infotext, and the z value it shows (if any)."""

    image: object  # None once written (``path`` and ``size`` say where and how big)
    infotext: str
    z: object = None
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    size: tuple[int, int] = (0, 0)


def _axis_params(axes: list[tuple[str, str, list]]) -> dict[str, str]:
    params = {}
    for letter, col, vals in axes:
        params[f"{letter} Type"] = axis_name(col)
        params[f"{letter} Values"] = ", ".join(show(v) for v in vals)
    return params


def _sheet_infotext(rows: list[dict], first: dict | None, axes, z) -> str:
    """The first image's infotext with A1111's ``X Type/X Values`` keys; the shared prompt."""
    base = parse_infotext(first["infotext"]) if first and first.get("infotext") else None
    params = dict(base.params) if base else {}
    prompts = {r["prompt"] for r in rows}
    templates = {r["template"] for r in rows}
    if len(prompts) == 1:
        prompt = prompts.pop() or ""
    elif len(templates) == 1 and None not in templates:
        prompt = templates.pop()
    else:
        prompt = base.prompt if base else ""
    negatives = {r["negative_prompt"] or "" for r in rows}
    negative = negatives.pop() if len(negatives) == 1 else (base.negative_prompt if base else "")
    params.update(_axis_params(axes))
    if z is not None:
        params["Z Value"] = show(z)
    return format_infotext(prompt, negative, params)


def draw_grids(*args, **kwargs) -> list[Sheet]:
    """Every sheet in memory (tests, small grids); ``write_grids`` streams them to disk."""
    return list(iter_grids(*args, **kwargs))


def iter_grids(
    rows: list[dict],
    x: str,
    y: str | None = None,
    z: str | None = None,
    where: str | None = None,
    max_megapixels: float = 200,
    scale: int = 1,
):
    """One labelled sheet per z value: x across, y down, sorted values, placeholders for gaps.

    ``scale`` enlarges every cell by that integer factor (nearest neighbour) before the labels
    are laid out, so they are sized for the enlarged cells; 1 is A1111's (cells at image size).
    """
    from PIL import Image, ImageDraw

    scale = check_scale(scale)
    for col, opt in ((x, "--x"), (y, "--y"), (z, "--z")):
        if col is not None:
            check_column(rows, col, opt)
    rows = filter_rows(rows, where)
    xs = distinct(rows, x)
    ys = distinct(rows, y) if y else [None]
    zs = distinct(rows, z) if z else [None]
    ok = [r for r in rows if r["status"] == "ok"] or rows
    cw, ch = max(r["width"] or 0 for r in ok) or 64, max(r["height"] or 0 for r in ok) or 64
    cw, ch = cw * scale, ch * scale
    font_size, line_h, pad, left = label_metrics(cw, ch)
    left = left if y else 0
    font = font_for(font_size)
    col_lines = [wrap(label(x, v), font, cw - 2 * pad) for v in xs]
    top = 2 * pad + line_h * max(len(lines) for lines in col_lines)
    width, height = left + cw * len(xs), top + ch * len(ys)
    mp = width * height / 1e6
    if mp > max_megapixels:
        lower = f", lower --scale {scale}" if scale > 1 else ""
        raise UserError(
            f"grid would be {width}x{height} = {mp:.1f} megapixels per sheet, above "
            f"--max-megapixels {max_megapixels:g}; narrow it with --where{lower} or raise the limit"
        )
    axes = [("X", x, xs)] + ([("Y", y, ys)] if y else []) + ([("Z", z, zs)] if z else [])
    for zv in zs:
        cells: dict[tuple[int, int], list[dict]] = {}
        xi, yi = {show(v): i for i, v in enumerate(xs)}, {show(v): i for i, v in enumerate(ys)}
        for r in rows:
            if z and show(value(r, z)) != show(zv):
                continue
            key = (xi[show(value(r, x))], yi[show(value(r, y))] if y else 0)
            cells.setdefault(key, []).append(r)
        sheet = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(sheet)
        for i, lines in enumerate(col_lines):
            for k, line in enumerate(lines):
                pos = (left + i * cw + cw / 2, pad + k * line_h + line_h / 2)
                draw.text(pos, line, fill="black", font=font, anchor="mm")
        for j, yv in enumerate(ys if y else []):
            lines = wrap(label(y, yv), font, left - 2 * pad)[: max(1, ch // line_h)]
            y0 = top + j * ch + ch / 2 - len(lines) * line_h / 2
            for k, line in enumerate(lines):
                pos = (left / 2, y0 + k * line_h + line_h / 2)
                draw.text(pos, line, fill="black", font=font, anchor="mm")
        if z and left:
            for k, line in enumerate(wrap(label(z, zv), font, left - 2 * pad)[: top // line_h]):
                draw.text((left / 2, pad + k * line_h + line_h / 2), line, "black", font, "mm")
        crowded = 0
        for j in range(len(ys)):
            for i in range(len(xs)):
                found = cells.get((i, j), [])
                crowded += len(found) > 1
                row = pick_first(found) if found else None
                cell = load_cell_image(row, (cw, ch), font, scale)
                sheet.paste(cell, (left + i * cw, top + j * ch))
        notes = []
        if crowded:
            picked = [r for group in cells.values() for r in group]
            more = varying(picked, [c for c in (x, y, z) if c])
            what = "; ".join(f"{c} varies" for c in more) or "duplicate rows"
            where_z = f" ({label(z, zv)})" if z else ""
            notes.append(
                f"note: {crowded} cell{'s' if crowded > 1 else ''}{where_z} match several "
                f"images ({what}); showing the lowest seed; pin the others with --where"
            )
        first = next((pick_first(cells[k]) for k in sorted(cells, key=lambda k: k[::-1])), None)
        z_rows = [r for group in cells.values() for r in group] or rows
        yield Sheet(sheet, _sheet_infotext(z_rows, first, axes, zv), zv, notes, None, sheet.size)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", text).strip("_") or "_"


def grid_path(out_dir: Path, x: str, y: str | None, z: str | None, zv, out=None) -> Path:
    """``DIR/grids/grid-<x>-<y>[-<z>=<value>].png``; ``-o`` names the file (z value appended)."""
    if out:
        stem, suffix = Path(out).with_suffix(""), Path(out).suffix or ".png"
    else:
        stem, suffix = out_dir / "grids" / _slug("-".join(["grid", x] + ([y] if y else []))), ".png"
    return Path(f"{stem}-{_slug(f'{z}={show(zv)}')}{suffix}" if z else f"{stem}{suffix}")


def write_grids(rows: list[dict], x: str, y=None, z=None, where=None, max_megapixels=200.0,
                out_dir: str | os.PathLike = ".", out=None, scale=1) -> list[Sheet]:  # fmt: skip
    """Draw and save one sheet at a time (a 200-megapixel sheet is 600 MB in memory)."""
    written: list[Sheet] = []
    for sheet in iter_grids(rows, x, y, z, where, max_megapixels, scale):
        path = grid_path(Path(out_dir), x, y, z, sheet.z, out)
        if any(path == s.path for s in written):  # two z values with the same file name
            path = path.with_name(f"{path.stem}-{len(written) + 1}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.image.save(path, format="PNG", pnginfo=png_info(sheet.infotext))
        sheet.path, sheet.image = path, None
        written.append(sheet)
    return written


GRID_KEYS = {"x", "y", "z", "where", "max_megapixels", "scale"}


def validate_grid_specs(grids: list[dict]) -> None:
    """Check a recipe's ``grids:`` entries before a run (columns are checked when drawing)."""
    for i, spec in enumerate(grids):
        if not isinstance(spec, dict) or not spec.get("x"):
            raise UserError(f"grids[{i}]: {spec!r} is not allowed; give at least {{x: COLUMN}}")
        extra = set(spec) - GRID_KEYS
        if extra:
            allowed = ", ".join(sorted(GRID_KEYS))
            raise UserError(f"grids[{i}]: unknown key {sorted(extra)[0]!r}; allowed: {allowed}")
        parse_where(spec.get("where"))
        if "scale" in spec:
            check_scale(spec["scale"], f"grids[{i}].scale")


def draw_recipe_grids(out_dir: str | os.PathLike, grids: list[dict]) -> list[Path]:
    """Draw a finished run's ``grids:`` into ``out_dir/grids/``; returns the files written.

    Reads only ``out_dir/manifest`` (not multirun sub-folders): each run draws its own rows.
    """
    if not grids:
        return []
    validate_grid_specs(grids)
    out_dir = Path(out_dir)
    rows = load_rows(out_dir, recursive=False)
    written = []
    for spec in grids:
        x, y, z, where = spec["x"], spec.get("y"), spec.get("z"), spec.get("where")
        limit, scale = spec.get("max_megapixels", 200), spec.get("scale", 1)
        written += [s.path for s in write_grids(rows, x, y, z, where, limit, out_dir, None, scale)]
    return written
