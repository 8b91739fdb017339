"""Manifest rows as dicts, for the grid, animate and gallery tools: read every manifest under a
folder, name columns the way infotext does (``cfg`` is "CFG scale", ``vars.style`` a template
variable), order values, and filter with a small ``--where`` language that is parsed, never
eval'd. pyarrow only: no torch, no Pillow.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from sdbatch.errors import UserError
from sdbatch.outputs.infotext import format_value
from sdbatch.outputs.image_paths import ImagePaths
from sdbatch.outputs.manifest import SCHEMA, Manifest

# Infotext names (what A1111 writes) for manifest columns; others are shown as named.
LABELS = {
    "cfg": "CFG scale", "steps": "Steps", "sampler": "Sampler", "seed": "Seed", "size": "Size",
    "width": "Width", "height": "Height", "model": "Model", "model_hash": "Model hash",
    "prompt": "Prompt", "negative_prompt": "Negative prompt",
}  # fmt: skip
DERIVED = ("size",)  # "WxH", as infotext writes Size


def load_rows(folder: str | os.PathLike, recursive: bool = True) -> list[dict]:
    """Rows of every ``manifest/`` folder at or below ``folder`` (multirun jobs have their own).

    Each row gets ``_root``, the output folder its ``image`` path is relative to, and ``vars``
    as a dict. ``recursive=False`` reads only ``folder/manifest`` (one run's own rows). A row
    whose ``image`` would lead outside its output folder is refused (``UnsafeImagePath``, one
    line naming the row, exit code 2), so grid, animate and gallery never open such a path.
    """
    from sdbatch.outputs.manifest_tools import find_sources, tidy

    root = Path(folder)
    if recursive:
        sources = [(s.out_dir, s.manifest_dir) for s in find_sources(root)]
    else:
        sources = [(root, root / "manifest")]
    rows = []
    for out_dir, manifest_dir in sources:
        manifest = Manifest(manifest_dir)
        table = manifest.read()
        tidy(out_dir, manifest)
        paths = ImagePaths(out_dir)
        for row in table.to_pylist():
            if row["image"] is not None:
                paths(row["image"], row["job_id"])
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
    if column == "controlnet" and row.get(column):  # as the dry run names units, not full paths
        units = row[column]
        return "; ".join(f"{u['model']} ({Path(u['image']).name}, {u['weight']:g})" for u in units)
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
