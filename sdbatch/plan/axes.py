"""Sweep values written the way A1111's X/Y/Z plot taught users. Pure.

- ``"5, 7, 9"``: a comma list;
- ``"10-30"``: every integer from 10 to 30;
- ``"10-30 (+10)"``: start-end with a step (10, 20, 30); negative steps count down;
- ``"5-9 [3]"``: start-end with a count, evenly spaced (5, 7, 9).

Each item of a YAML list may use these forms too; lists of plain values pass through.
"""

from __future__ import annotations

import re
from typing import Any

from sdbatch.errors import RecipeError

MAX_RANGE = 100_000  # values one range may stand for; a typo like 1-1e9 fails here, not in RAM
_NUM = r"[+-]?\d+(?:\.\d+)?"
_RANGE = re.compile(
    rf"^\s*(?P<a>{_NUM})\s*-\s*(?P<b>{_NUM})\s*"
    rf"(?:\(\s*(?P<step>{_NUM})\s*\)|\[\s*(?P<count>\d+)\s*\])?\s*$"
)


def _number(text: str, integer: bool) -> float | int:
    value = float(text)
    return int(value) if integer and value.is_integer() else value


def expand_item(field: str, item: Any, integer: bool) -> list:
    """One written value -> the values it stands for."""
    if not isinstance(item, str):
        return [item]
    parts = [p for p in item.split(",") if p.strip()]
    if len(parts) > 1:
        return [v for p in parts for v in expand_item(field, p, integer)]
    m = _RANGE.match(item)
    if not m:
        return [item.strip()]
    a, b = float(m["a"]), float(m["b"])
    if m["count"] is not None:
        n = int(m["count"])
        if n < 1 or n > MAX_RANGE:
            raise RecipeError(field, item, f"a count in 1..{MAX_RANGE:,} in [N]")
        values = [a] if n == 1 else [a + (b - a) * i / (n - 1) for i in range(n)]
        if integer:
            values = [round(v) for v in values]
    else:
        step = float(m["step"]) if m["step"] is not None else (1.0 if b >= a else -1.0)
        if step == 0 or (b - a) * step < 0:
            raise RecipeError(
                field, item, "a step that goes from start towards end, e.g. 10-30 (+10)"
            )
        count = int((b - a) / step + 1e-9) + 1
        if count > MAX_RANGE:
            raise RecipeError(field, item, f"a range of at most {MAX_RANGE:,} values")
        values = [a + step * i for i in range(count)]
    out = [_number(f"{v:.10g}", integer) for v in values]
    return list(dict.fromkeys(out))


def expand_axis(field: str, value: Any, integer: bool = False) -> list:
    """A sweep axis as a list, with A1111's range and list forms expanded."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    return [v for item in items for v in expand_item(field, item, integer)]
