"""A loss curve as a PNG with Pillow alone (matplotlib is not a dependency of sdbatch).

Log-scale y axis, raw losses as faint dots, a running mean as a line, one colour per
training phase, a few labelled ticks: enough to see divergence or a plateau at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PHASE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    end = np.arange(1, v.size + 1)
    start = np.maximum(0, end - window)
    return (c[end] - c[start]) / (end - start)


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten, and 2x/5x of them when the range spans less than two decades."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        mults = (1, 2, 5) if math.log10(hi / lo) < 2 else (1,)
        ticks += [m * 10.0**e for m in mults if lo <= m * 10.0**e <= hi]
    return ticks or [lo, hi]


def plot_losses(
    history: Sequence[tuple[int, str, float]],
    path: str | Path,
    title: str = "training loss",
    size: tuple[int, int] = (800, 420),
) -> Path:
    """Write ``history`` rows ``(step, phase, loss)`` as a PNG at ``path``."""
    w, h = size
    left, right, top, bottom = 70, 20, 34, 40
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), title, fill=(0, 0, 0))
    rows = [(s, p, v) for s, p, v in history if v > 0 and math.isfinite(v)]
    if not rows:
        draw.text((left, h // 2), "no losses yet", fill=(0, 0, 0))
        img.save(path)
        return Path(path)
    steps = np.array([r[0] for r in rows], dtype=np.float64)
    vals = np.array([r[2] for r in rows], dtype=np.float64)
    lo, hi = float(np.percentile(vals, 0.5)), float(vals.max())
    lo, hi = (lo / 1.5, hi * 1.5) if hi > lo else (lo / 2, lo * 2)
    x0, x1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))

    def xy(step: float, val: float) -> tuple[float, float]:
        fx = (step - x0) / (x1 - x0)
        fy = (math.log10(min(max(val, lo), hi)) - math.log10(lo)) / math.log10(hi / lo)
        return left + fx * (w - left - right), h - bottom - fy * (h - top - bottom)

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for t in _nice_ticks(lo, hi):
        _, y = xy(x0, t)
        draw.line([left, y, w - right, y], fill=(225, 225, 225))
        draw.text((5, y - 6), f"{t:g}", fill=(0, 0, 0))
    for t in np.linspace(x0, x1, 5):
        x, _ = xy(t, lo)
        draw.text((x - 12, h - bottom + 6), f"{int(t)}", fill=(0, 0, 0))
    draw.text((w // 2 - 15, h - 18), "step", fill=(0, 0, 0))

    phases = list(dict.fromkeys(r[1] for r in rows))
    for i, phase in enumerate(phases):
        colour = PHASE_COLOURS[i % len(PHASE_COLOURS)]
        faint = tuple(int(c + (255 - c) * 0.7) for c in colour)
        sel = [k for k, r in enumerate(rows) if r[1] == phase]
        s, v = steps[sel], vals[sel]
        for a, b in zip(s, v, strict=True):
            x, y = xy(a, b)
            draw.point((x, y), fill=faint)
        smooth = running_mean(v, max(1, len(v) // 50))
        draw.line([xy(a, b) for a, b in zip(s, smooth, strict=True)], fill=colour, width=2)
        draw.text((w - right - 140, top + 6 + 14 * i), f"{phase} (mean line)", fill=colour)
    img.save(path)
    return Path(path)
