"""A ControlNet unit's resize mode: how its condition image is fitted to the job's size.

The extension's three (``ResizeMode`` in its ``scripts/enums.py``), as its ``detectmap_proc``
applies them to the module's output (the canny map, or the picture with ``module: none``):

- ``Just Resize``: stretched to the job's width and height;
- ``Crop and Resize`` (the default): scaled to cover the job's size, centred, the overhang cut;
- ``Resize and Fill``: scaled to fit inside it (``round(side * k)``, ``k`` the smaller of the
  two ratios), centred at ``(size - side) // 2`` on a background of one colour, the median of
  the map's border pixels (its first and last row and column, each channel on its own,
  truncated to an integer as the extension's ``astype`` does).

The names the extension still accepts for them (``resize_mode_aliases`` in its
``external_code.py``: "Inner Fit (Scale to Fit)", "Scale to Fit (Inner Fit)", "Outer Fit
(Shrink to Fit)", "Envelope (Outer Fit)"), its API's integers (0, 1, 2; 3, "Just Resize
(Latent upscale)", is Just Resize) and the enum's own text ("ResizeMode.INNER_FIT", which 2023
infotext sometimes holds) are read too, in any letter case; the extension's spelling is what
is written back.

The resampling filter is Lanczos for all three (as for ``init_images``), where the extension's
``high_quality_resize`` takes area when shrinking, cubic when enlarging, nearest for maps of 3
to 199 colours, and re-thresholds (and thins) black-and-white maps: edges can differ by a pixel
or in their grey levels. Pure (numpy and Pillow).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdbatch.errors import RecipeError
from sdbatch.plan.image_ops import resize_image

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
DEFAULT = "Crop and Resize"
ALIASES = {
    "inner fit (scale to fit)": "Crop and Resize",
    "scale to fit (inner fit)": "Crop and Resize",
    "outer fit (shrink to fit)": "Resize and Fill",
    "envelope (outer fit)": "Resize and Fill",
    "just resize (latent upscale)": "Just Resize",
    "resizemode.resize": "Just Resize",
    "resizemode.inner_fit": "Crop and Resize",
    "resizemode.outer_fit": "Resize and Fill",
    "0": "Just Resize",
    "1": "Crop and Resize",
    "2": "Resize and Fill",
    "3": "Just Resize",
}


def known_resize_mode(value: Any) -> str | None:
    """The extension's name for a resize mode written any way it reads, else None."""
    if isinstance(value, bool):
        return None
    text = str(value).strip().lower()
    for mode in RESIZE_MODES:
        if text == mode.lower():
            return mode
    return ALIASES.get(text)


def resize_mode(value: Any, field: str) -> str:
    """A unit's ``resize_mode`` (unset: Crop and Resize), or a RecipeError naming ``field``."""
    if value is None:
        return DEFAULT
    mode = known_resize_mode(value)
    if mode is None:
        raise RecipeError(field, value, "one of " + ", ".join(RESIZE_MODES))
    return mode


def _fill(im: Image.Image, width: int, height: int) -> Image.Image:
    """Resize and Fill: fitted inside, centred, on the median colour of the map's border."""
    a = np.asarray(im.convert("RGB"))
    borders = np.concatenate([a[0, :, :], a[-1, :, :], a[:, 0, :], a[:, -1, :]], axis=0)
    colour = np.median(borders, axis=0).astype(np.uint8)
    k = min(height / a.shape[0], width / a.shape[1])
    w, h = int(np.round(a.shape[1] * k)), int(np.round(a.shape[0] * k))
    out = Image.new("RGB", (width, height), tuple(int(c) for c in colour))
    resized = im.convert("RGB").resize((w, h), resample=Image.Resampling.LANCZOS)
    out.paste(resized, box=(max(0, (width - w) // 2), max(0, (height - h) // 2)))
    return out


def resize_condition(mode: str, image: Image.Image, width: int, height: int) -> Image.Image:
    """The condition image fitted to ``width`` x ``height`` by ``mode`` (one of RESIZE_MODES)."""
    if mode == "Just Resize":
        return resize_image("Just resize", image, width, height)
    if mode == "Crop and Resize":
        return resize_image("Crop and resize", image, width, height)
    if mode == "Resize and Fill":
        return _fill(image, width, height)
    raise ValueError(f"resize mode {mode!r}: one of {', '.join(RESIZE_MODES)}")
