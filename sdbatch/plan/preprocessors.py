"""ControlNet preprocessors (the extension's "modules"), as pure numpy + OpenCV functions.

Only the ones that need no model: ``none`` hands the condition image over as it is, and
``canny`` is the extension's own (``scripts/preprocessor/model_free_preprocessors.py``,
``PreprocessorCanny``): the picture is scaled so its short side is ``processor_res``
(bicubic up, area down) and padded to a multiple of 64 by repeating its edge
(``resize_image_with_pad``), ``cv2.Canny(picture, int(low), int(high))`` runs on the RGB
picture, and the padding is cut off again; the white-on-black edges come back as RGB. The
same OpenCV call gives the same edges bit for bit. depth and openpose are not here: their
annotators download models from the hub.

What the extension does next (its "Crop and Resize" to the job's size) is the render side's
(sdbatch.render.controlnet). Without Pixel Perfect the extension uses the unit's
``processor_res`` as is; with it (a unit's ``pixel_perfect``), `pixel_perfect_resolution`
replaces it, computed from the picture's size and the job's, as the extension's
``pixel_perfect_resolution`` does it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODULES = ("none", "canny")


@dataclass(frozen=True, slots=True)
class Param:
    """One of a module's settings: its unit key, infotext name, default and slider range."""

    key: str
    label: str
    default: int
    lo: int
    hi: int


# the extension's sliders: resolution 64..2048 (default 512), canny's two thresholds 1..255
PARAMS = {
    "canny": (
        Param("processor_res", "Processor Res", 512, 64, 2048),
        Param("threshold_a", "Threshold A", 100, 1, 255),
        Param("threshold_b", "Threshold B", 200, 1, 255),
    ),
}
PARAM_KEYS = ("processor_res", "threshold_a", "threshold_b")
# what the extension writes for ``none`` (its hidden sliders' defaults)
NONE_INFOTEXT = (512, 0.5, 0.5)


def _pad64(x: int) -> int:
    return int(np.ceil(float(x) / 64.0) * 64 - x)


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int, int]:
    """The extension's ``resize_image_with_pad``: the short side to ``resolution`` (cubic up,
    area down), padded to multiples of 64 by edge repetition; and the unpadded height, width."""
    import cv2

    if image.ndim == 2:
        image = np.stack([image] * 3, axis=2)
    h_raw, w_raw = image.shape[:2]
    k = float(resolution) / float(min(h_raw, w_raw))
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    h, w = int(np.round(float(h_raw) * k)), int(np.round(float(w_raw) * k))
    image = cv2.resize(image, (w, h), interpolation=interpolation)
    padded = np.pad(image, [[0, _pad64(h)], [0, _pad64(w)], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), h, w


def canny(image: np.ndarray, processor_res: int = 512, low: int = 100, high: int = 200):
    """The extension's canny map of an RGB uint8 picture: (H, W, 3) uint8, edges 255 on 0,
    the short side ``processor_res`` long."""
    import cv2

    padded, h, w = resize_with_pad(image, processor_res)
    edges = cv2.cvtColor(cv2.Canny(padded, int(low), int(high)), cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(edges[:h, :w])


def pixel_perfect_resolution(raw_h: int, raw_w: int, height: int, width: int, resize: str) -> int:
    """The processor resolution Pixel Perfect gives a ``raw_w`` x ``raw_h`` picture for a
    ``width`` x ``height`` job: with ``k0 = height / raw_h`` and ``k1 = width / raw_w``, the
    picture's short side times ``min(k0, k1)`` for "Resize and Fill" (the map fits inside the
    job's size), else times ``max(k0, k1)`` (it covers it), rounded to an integer. Not held to
    the slider's 64..2048, as the extension does not; at least 1 (the extension's 0 fails)."""
    k0, k1 = float(height) / float(raw_h), float(width) / float(raw_w)
    k = min(k0, k1) if resize == "Resize and Fill" else max(k0, k1)
    return max(1, int(np.round(k * float(min(raw_h, raw_w)))))


def unit_settings(settings: tuple[int, ...], pixel_perfect: bool, picture_size: tuple[int, int],
                  job_size: tuple[int, int], resize: str) -> tuple[int, ...]:  # fmt: skip
    """The module's settings a unit runs with: ``settings`` with, under Pixel Perfect, the
    resolution replaced by `pixel_perfect_resolution` of the picture's and the job's
    (width, height) (the first pass's, also for the hires pass, as the extension)."""
    if not pixel_perfect or not settings:
        return settings
    (raw_w, raw_h), (width, height) = picture_size, job_size
    return (pixel_perfect_resolution(raw_h, raw_w, height, width, resize), *settings[1:])


def preprocess(module: str, image: np.ndarray, settings: tuple[int, ...]) -> np.ndarray:
    """The condition image ``module`` makes of an RGB uint8 picture (``settings``: the
    module's values in PARAMS order); ``none`` returns the picture."""
    if module == "none":
        return image
    if module == "canny":
        return canny(image, *settings)
    raise ValueError(f"module {module!r}: one of {', '.join(MODULES)}")


def preprocess_image(module: str, image, settings: tuple[int, ...]):
    """``preprocess`` for a PIL RGB picture (``none``: the same picture, untouched)."""
    if module == "none":
        return image
    from PIL import Image

    return Image.fromarray(preprocess(module, np.asarray(image.convert("RGB")), settings))
