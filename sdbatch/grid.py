"""X/Y/Z contact sheets from manifests, labelled the way A1111's X/Y/Z plot labels them.

Also the shared pieces the ``animate`` and ``gallery`` tools use: reading every manifest under a
folder, naming columns (``cfg``, ``vars.style``) and a small ``--where`` filter language that is
parsed, never eval'd. Pillow + pyarrow only: no torch, so the tools start fast.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sdbatch.errors import RecipeError, UserError
from sdbatch.infotext import format_infotext, format_value, parse_infotext, png_info
from sdbatch.manifest import SCHEMA, Manifest

# Infotext names (what A1111 writes) for manifest columns; others are shown as named.
LABELS = {
    "cfg": "CFG scale", "steps": "Steps", "sampler": "Sampler", "seed": "Seed", "size": "Size",
    "width": "Width", "height": "Height", "model": "Model", "model_hash": "Model hash",
    "prompt": "Prompt", "negative_prompt": "Negative prompt",
}  # fmt: skip
DERIVED = ("size",)  # "WxH", as infotext writes Size
# Placeholder cells, so a failed image is never silently missing.
COLOURS = {"failed": (200, 40, 40), "nan": (128, 128, 128), "missing": (90, 90, 90)}
COLOURS["empty"] = (235, 235, 235)
PLACEHOLDER_TEXT = {"failed": "failed", "nan": "NaN", "missing": "missing", "empty": ""}


def load_rows(folder: str | os.PathLike, recursive: bool = True) -> list[dict]:
    """Rows of every ``manifest/`` folder at or below ``folder`` (multirun jobs have their own).

    Each row gets ``_root``, the output folder its ``image`` path is relative to, and ``vars``
    as a dict. ``recursive=False`` reads only ``folder/manifest`` (one run's own rows).
    """
    from sdbatch.manifest_tools import find_sources

    root = Path(folder)
    if recursive:
        sources = [(s.out_dir, s.manifest_dir) for s in find_sources(root)]
    else:
        sources = [(root, root / "manifest")]
    rows = []
    for out_dir, manifest_dir in sources:
        for row in Manifest(manifest_dir).read().to_pylist():
            row["vars"] = dict(row["vars"] or [])
            row["_root"] = out_dir
            rows.append(row)
    if not rows:
        raise UserError(f"{str(root)!r}: no manifest rows (the manifest/ folder is empty)")
    return rows


def columns_of(rows: list[dict]) -> list[str]:
    """Every name usable as an axis or filter: manifest columns, ``size``, ``vars.NAME``."""
    names = {k for r in rows for k in r["vars"]}
    base = [f.name for f in SCHEMA if f.name != "vars"]
    return base + list(DERIVED) + [f"vars.{n}" for n in sorted(names)]


def check_column(rows: list[dict], column: str, option: str) -> None:
    if column not in columns_of(rows):
        raise UserError(
            f"{option}: unknown column {column!r}; choose from {', '.join(columns_of(rows))}"
        )


def value(row: dict, column: str):
    """A row's value for a column name (``vars.style`` looks in the vars map)."""
    if column.startswith("vars."):
        return row["vars"].get(column[5:])
    if column == "size":
        return f"{row['width']}x{row['height']}"
    return row.get(column)


def label(column: str, v) -> str:
    """``CFG scale: 7``, ``style: bob``: A1111's infotext name, then the value."""
    return f"{axis_name(column)}: {show(v)}"


def axis_name(column: str) -> str:
    return column[5:] if column.startswith("vars.") else LABELS.get(column, column)


def show(v) -> str:
    return "(none)" if v is None else format_value(v)


def _number(v) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        n = float(v)
    except (TypeError, ValueError):
        return None
    return n if math.isfinite(n) else None  # "nan"/"inf" as text, so sorting stays total


def sort_key(v):
    """Numbers numerically (also numeric strings such as var values), then text, None last."""
    n = _number(v)
    if n is not None:
        return (0, n, "")
    return (2, 0.0, "") if v is None else (1, 0.0, str(v))


def distinct(rows: list[dict], column: str) -> list:
    seen = {}
    for r in rows:
        v = value(r, column)
        seen.setdefault(show(v), v)
    return sorted(seen.values(), key=sort_key)


# --where: "column OP value [and column OP value ...]"; values bare or quoted, never eval'd.
_CLAUSE = re.compile(
    r"""\s*([A-Za-z_][\w.]*)\s*(==|!=|<=|>=|<|>)\s*"""
    r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|.+?)(?:\s*$|\s+and\s+)""",
    re.I | re.S,
)
_OPS = {"==": 0, "!=": 0, "<": -1, ">": 1, "<=": -1, ">=": 1}
WHERE_HELP = "write COLUMN OP VALUE joined by 'and' (OP: == != < > <= >=), e.g. 'seed == 1'"


def parse_where(text: str | None) -> list[tuple[str, str, str]]:
    """``"seed == 1 and sampler == 'Euler a'"`` -> ``[(col, op, value), ...]``."""
    clauses, pos = [], 0
    while text and pos < len(text) and text[pos:].strip():
        m = _CLAUSE.match(text, pos)
        if m is None:
            raise UserError(f"--where: cannot read {text[pos:].strip()!r}; {WHERE_HELP}")
        raw = m.group(3)
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        clauses.append((m.group(1), m.group(2), raw))
        pos = m.end()
    return clauses


def _holds(op: str, c: int | None) -> bool:
    if c is None:  # a missing value equals nothing
        return op == "!="
    if op in ("==", "!="):
        return (c == 0) == (op == "==")
    return c == _OPS[op] or (len(op) == 2 and c == 0)


def _compare(a, b: str) -> int | None:
    """Numbers numerically when both sides are numbers, text otherwise; None matches nothing."""
    if a is None:
        return None
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    sa = show(a)
    return (sa > b) - (sa < b)


def filter_rows(rows: list[dict], where: str | None) -> list[dict]:
    clauses = parse_where(where)
    for col, _, _ in clauses:
        check_column(rows, col, "--where")
    out = [r for r in rows if all(_holds(op, _compare(value(r, c), v)) for c, op, v in clauses)]
    if not out:
        raise UserError(f"no rows match --where {where!r} (of {len(rows)} rows)")
    return out


def pick_first(rows: list[dict]) -> dict:
    """Several images for one cell: the lowest seed (then job id) wins, as documented."""
    return min(rows, key=lambda r: (sort_key(r["seed"]), r["job_id"]))


def varying(rows: list[dict], skip: Iterable[str]) -> dict[str, list]:
    """Columns that decide the pixels and take several values among ``rows``.

    The prompt is left out when a template variable varies (or is skipped): it follows from it.
    """
    skip = set(skip)
    names = ["sampler", "steps", "cfg", "seed", "size", "model_hash"]
    names += [f"vars.{n}" for n in sorted({k for r in rows for k in r["vars"]})]
    out = {c: distinct(rows, c) for c in names + ["negative_prompt"] if c not in skip}
    out = {c: v for c, v in out.items() if len(v) > 1}
    if "prompt" not in skip and not any(c.startswith("vars.") for c in [*skip, *out]):
        prompts = distinct(rows, "prompt")
        out.update({"prompt": prompts} if len(prompts) > 1 else {})
    return out


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
