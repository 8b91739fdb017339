"""X/Y/Z contact sheets from manifests, labelled the way A1111's X/Y/Z plot labels them.

Rows come from ``sdbatch.outputs.reading`` (reading manifests, column names, ``--where``); the
cell and label drawing here is shared with ``animate``. Pillow + pyarrow only: no torch, so the
tools start fast.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sdbatch.errors import RecipeError, UserError
from sdbatch.outputs.infotext import format_infotext, parse_infotext, png_info
from sdbatch.outputs.reading import (
    axis_name,
    check_column,
    filter_rows,
    label,
    load_rows,
    parse_where,
    pick_first,
    show,
    value,
    varying,
)
from sdbatch.views.fonts import Fonts, fit, fonts_for, line_height

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
    ``text_font`` is the label font chain (``sdbatch.views.fonts.Fonts``); the placeholder's word is
    made smaller to fit a small cell.
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
        fonts, _ = fit([text], text_font or font_for(12), size[0] - 4, smallest=6)
        fonts.draw(ImageDraw.Draw(cell), (size[0] / 2, size[1] / 2), text, "white")
    return cell


def font_for(size: int, font=None) -> Fonts:
    """The label font chain at ``size`` (``sdbatch.views.fonts``): ``font`` (``--font``) first, the
    shipped Hangul font, DejaVu Sans (A1111's grid font) when installed, installed fonts for
    other scripts, Pillow's own font last."""
    return fonts_for(size, font)


def label_metrics(cell_w: int, cell_h: int) -> tuple[int, int, int, int]:
    """(font size, line height, padding, left band width) for a cell size; A1111's proportions."""
    font_size = max(12, (cell_w + cell_h) // 25)
    left = max(cell_w * 3 // 4, font_size * 8)
    return font_size, line_height(font_size), font_size // 2, left


def plan_order(rows: list[dict]) -> list[dict]:
    """Rows in the order their plan made them, which is the order the recipe lists each axis's
    values: run by run (a multirun sweep by job number), then by the ``batch`` column, then as
    the manifest holds them. Rows without a batch number keep their manifest order."""
    runs: dict[str, int] = {}
    for r in rows:
        runs.setdefault(str(r.get("_root")), len(runs))

    def key(item: tuple[int, dict]) -> tuple:
        i, r = item
        job, batch = r.get("hydra_job"), r.get("batch")
        run = (0, job, 0) if job is not None else (1, 0, runs[str(r.get("_root"))])
        return (run, batch is None, batch or 0, i)

    return [r for _, r in sorted(enumerate(rows), key=key)]


def ordered(rows: list[dict], column: str) -> list:
    """A column's values in order of first appearance (A1111 keeps the order typed)."""
    seen: dict[str, object] = {}
    for r in rows:
        v = value(r, column)
        seen.setdefault(show(v), v)
    return list(seen.values())


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


def iter_grids(rows: list[dict], x: str, y: str | None = None, z: str | None = None,
               where: str | None = None, max_megapixels: float = 200, scale: int = 1,
               font=None):  # fmt: skip
    """One labelled sheet per z value: x across, y down, placeholders for gaps (``Grid``)."""
    return Grid(rows, x, y, z, where, max_megapixels, scale, font).sheets()


class Grid:
    """The layout of a set of sheets: x across, y down, one sheet per z value.

    Values keep the order the plan made them (the recipe's order, as A1111 keeps the order
    typed). Labels wrap at spaces; an axis whose longest word is wider than its line gets a
    smaller size (as A1111 shrinks a label), long words are broken only past that, and every
    band grows to hold its labels: nothing is clipped. ``scale`` enlarges every cell by that
    integer factor (nearest neighbour) before the labels are laid out, so they are sized for
    the enlarged cells; 1 is A1111's (cells at image size). ``font``: ``--font``, tried first.
    """

    def __init__(self, rows: list[dict], x: str, y: str | None = None, z: str | None = None,
                 where: str | None = None, max_megapixels: float = 200, scale: int = 1,
                 font=None):  # fmt: skip
        self.scale = scale = check_scale(scale)
        for col, opt in ((x, "--x"), (y, "--y"), (z, "--z")):
            if col is not None:
                check_column(rows, col, opt)
        base = font_for(12, font)  # a bad --font fails before anything is drawn
        self.x, self.y, self.z = x, y, z
        self.rows = rows = plan_order(filter_rows(rows, where))
        self.xs = ordered(rows, x)
        self.ys = ordered(rows, y) if y else [None]
        self.zs = ordered(rows, z) if z else [None]
        ok = [r for r in rows if r["status"] == "ok"] or rows
        cw = (max(r["width"] or 0 for r in ok) or 64) * scale
        ch = (max(r["height"] or 0 for r in ok) or 64) * scale
        self.cell = (cw, ch)
        size, _, self.pad, left = label_metrics(cw, ch)
        pad = self.pad
        self.fonts = base = base.at(size)
        self.col_fonts, self.col_lines = fit([label(x, v) for v in self.xs], base, cw - pad)
        col_h = line_height(self.col_fonts.size) * max(map(len, self.col_lines))
        self.row_fonts, self.row_lines, left = base, [], left if y else 0
        while y:  # row labels fit their cell's height: smaller, then a wider band
            texts = [label(y, v) for v in self.ys]
            self.row_fonts, self.row_lines = fit(texts, base, left - 2 * pad, ch)
            tall = line_height(self.row_fonts.size) * max(map(len, self.row_lines)) > ch
            if not tall or left >= 2 * pad + max(map(base.getlength, texts)):
                break
            left += 2 * size
        self.left = left
        z_width = (left if y else cw * len(self.xs)) - 2 * pad
        z_texts = [label(z, v) if z else "" for v in self.zs]
        self.z_fonts, self.z_lines = fit(z_texts, base, z_width)
        z_h = line_height(self.z_fonts.size) * max(map(len, self.z_lines)) if z else 0
        self.title = pad + z_h if z and not y else 0  # no left band: the z label on top
        self.band = max(col_h, z_h if y else 0)
        self.top = self.title + 2 * pad + self.band
        self.size = (left + cw * len(self.xs), self.top + ch * len(self.ys))
        width, height = self.size
        mp = width * height / 1e6
        if mp > max_megapixels:
            lower = f", lower --scale {scale}" if scale > 1 else ""
            raise UserError(
                f"grid would be {width}x{height} = {mp:.1f} megapixels per sheet, above "
                f"--max-megapixels {max_megapixels:g}; narrow it with --where{lower} or raise "
                "the limit"
            )
        self.axes = [("X", x, self.xs)] + ([("Y", y, self.ys)] if y else [])
        self.axes += [("Z", z, self.zs)] if z else []

    def _block(self, draw, fonts: Fonts, lines: list[str], cx: float, y0: float) -> None:
        """Lines centred on ``cx``, the first one's top at ``y0``."""
        line_h = line_height(fonts.size)
        for k, line in enumerate(lines):
            fonts.draw(draw, (cx, y0 + k * line_h + line_h / 2), line, "black")

    def _height(self, fonts: Fonts, lines: list[str]) -> int:
        return line_height(fonts.size) * len(lines)

    def sheets(self):
        from PIL import Image, ImageDraw

        x, y, z, rows = self.x, self.y, self.z, self.rows
        (cw, ch), pad, left, top = self.cell, self.pad, self.left, self.top
        xi = {show(v): i for i, v in enumerate(self.xs)}
        yi = {show(v): i for i, v in enumerate(self.ys)}
        band_y = self.title + pad
        for zv, z_lines in zip(self.zs, self.z_lines, strict=True):
            cells: dict[tuple[int, int], list[dict]] = {}
            for r in rows:
                if z and show(value(r, z)) != show(zv):
                    continue
                key = (xi[show(value(r, x))], yi[show(value(r, y))] if y else 0)
                cells.setdefault(key, []).append(r)
            sheet = Image.new("RGB", self.size, "white")
            draw = ImageDraw.Draw(sheet)
            for i, lines in enumerate(self.col_lines):
                y0 = band_y + (self.band - self._height(self.col_fonts, lines)) / 2
                self._block(draw, self.col_fonts, lines, left + i * cw + cw / 2, y0)
            for j, lines in enumerate(self.row_lines):
                y0 = top + j * ch + (ch - self._height(self.row_fonts, lines)) / 2
                self._block(draw, self.row_fonts, lines, left / 2, y0)
            if z and y:  # the top-left corner
                y0 = band_y + (self.band - self._height(self.z_fonts, z_lines)) / 2
                self._block(draw, self.z_fonts, z_lines, left / 2, y0)
            elif z:  # a title line above the column labels
                self._block(draw, self.z_fonts, z_lines, self.size[0] / 2, pad)
            crowded = 0
            for j in range(len(self.ys)):
                for i in range(len(self.xs)):
                    found = cells.get((i, j), [])
                    crowded += len(found) > 1
                    row = pick_first(found) if found else None
                    cell = load_cell_image(row, (cw, ch), self.fonts, self.scale)
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
            info = _sheet_infotext(z_rows, first, self.axes, zv)
            yield Sheet(sheet, info, zv, notes, None, sheet.size)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", text).strip("_") or "_"


_OP_NAMES = {"==": "=", "!=": "-ne-", "<": "-lt-", "<=": "-le-", ">": "-gt-", ">=": "-ge-"}


def name_suffix(where: str | None = None, scale: int = 1) -> str:
    """What a default file name adds for ``--where`` and ``--scale``, so that different ones
    never overwrite each other: ``-where-seed=1``, ``-scale4``. Filters that do not make a
    safe short name as written get a short hash of the parsed filter as well."""
    clauses = parse_where(where)
    part = ""
    if clauses:
        text = "_and_".join(f"{c}{_OP_NAMES[op]}{v}" for c, op, v in clauses)
        slug = _slug(text)
        if slug != text or len(slug) > 48:
            digest = hashlib.sha256(repr(clauses).encode()).hexdigest()[:6]
            slug = f"{slug[:40].rstrip('_')}-{digest}"
        part = f"-where-{slug}"
    return part + (f"-scale{scale}" if scale > 1 else "")


def grid_path(out_dir: Path, x: str, y: str | None, z: str | None, zv, out=None,
              where: str | None = None, scale: int = 1, sheets: int = 2) -> Path:  # fmt: skip
    """``DIR/grids/grid-<x>-<y>[-where-...][-scaleN][-<z>=<value>].png``. ``-o`` names the
    file exactly; with several sheets (a z axis) each gets ``-<z>=<value>`` before the suffix."""
    if out:
        if not z or sheets == 1:
            return Path(out)
        stem, suffix = Path(out).with_suffix(""), Path(out).suffix or ".png"
    else:
        name = "-".join(["grid", x] + ([y] if y else []))
        stem, suffix = out_dir / "grids" / f"{_slug(name)}{name_suffix(where, scale)}", ".png"
    return Path(f"{stem}-{_slug(f'{z}={show(zv)}')}{suffix}" if z else f"{stem}{suffix}")


def write_grids(rows: list[dict], x: str, y=None, z=None, where=None, max_megapixels=200.0,
                out_dir: str | os.PathLike = ".", out=None, scale=1,
                font=None) -> list[Sheet]:  # fmt: skip
    """Draw and save one sheet at a time (a 200-megapixel sheet is 600 MB in memory)."""
    grid = Grid(rows, x, y, z, where, max_megapixels, scale, font)
    written: list[Sheet] = []
    for sheet in grid.sheets():
        path = grid_path(Path(out_dir), x, y, z, sheet.z, out, where, grid.scale, len(grid.zs))
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
