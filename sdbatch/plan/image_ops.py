"""A1111's img2img picture preparation, in Pillow and numpy (no torch): resize modes, the mask's
rounding, invert and blur, the "only masked" crop, "fill" masked content and the final paste.

Written from how A1111 1.9/1.10 behaves (``images.resize_image``, ``masking``,
``StableDiffusionProcessingImg2Img.init``), so that the same input and mask give the picture
and latent mask A1111 hands to its sampler. The steps, in A1111's order:

1. the mask is made binary (alpha channel if it has one, else grey > 128), inverted for
   "Inpaint not masked", blurred by a Gaussian of sigma ``mask_blur`` (cv2's kernel size
   ``2 * int(2.5 * sigma + 0.5) + 1`` and its reflect-101 border, one axis after the other);
2. "only masked": the mask's bounding box plus padding, grown to the job's aspect ratio, is
   cut from the picture and the mask and resized to the job's size ("Resize and fill");
   otherwise picture and mask are resized with the recipe's resize mode;
3. the overlay: the resized picture with the (doubled) mask as transparency, pasted over the
   result at the end, so unmasked pixels are the input's;
4. "fill": the masked area is painted with the picture's own colours, blurred outwards;
5. the latent mask: the mask shrunk to the latent grid (bicubic) and rounded to 0/1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
LANCZOS = Image.Resampling.LANCZOS


def resize_image(mode: str, im: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's three resize modes (``images.resize_image`` with no upscaler: Lanczos).

    Just resize: stretch to the size. Crop and resize: scale to cover, centre, cut the rest.
    Resize and fill: scale to fit, centre, and fill the empty bands by stretching the
    picture's outermost row or column across them."""
    if mode == "Just resize":
        return im.resize((width, height), resample=LANCZOS)
    ratio, src_ratio = width / height, im.width / im.height
    if mode == "Crop and resize":
        w = width if ratio > src_ratio else im.width * height // im.height
        h = height if ratio <= src_ratio else im.height * width // im.width
    elif mode == "Resize and fill":
        w = width if ratio < src_ratio else im.width * height // im.height
        h = height if ratio >= src_ratio else im.height * width // im.width
    else:
        raise ValueError(f"resize mode {mode!r}: one of {', '.join(RESIZE_MODES)}")
    resized = im.resize((w, h), resample=LANCZOS)
    out = Image.new(im.mode, (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2
    out.paste(resized, box=(left, top))
    if mode == "Resize and fill":
        if ratio < src_ratio and top > 0:  # bands above and below: stretch the edge rows
            first = resized.resize((width, top), box=(0, 0, width, 0))
            last = resized.resize((width, top), box=(0, h, width, h))
            out.paste(first, box=(0, 0))
            out.paste(last, box=(0, top + h))
        elif ratio > src_ratio and left > 0:  # bands left and right: the edge columns
            first = resized.resize((left, height), box=(0, 0, 0, height))
            last = resized.resize((left, height), box=(w, 0, w, height))
            out.paste(first, box=(0, 0))
            out.paste(last, box=(left + w, 0))
    return out


def binary_mask(mask: Image.Image) -> Image.Image:
    """White = repaint. A mask with transparency uses its alpha channel, others their grey
    level; either is rounded (> 128 is white), as A1111's ``create_binary_mask``."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        grey = mask.split()[-1]
    else:
        grey = mask.convert("L")
    return grey.point(lambda v: 255 if v > 128 else 0)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel's weights for A1111's kernel size."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma * sigma))
    return k / k.sum()


def blur_mask(mask: Image.Image, sigma: float) -> Image.Image:
    """A1111's mask blur: a horizontal, then a vertical Gaussian pass (reflect-101 border)."""
    if sigma <= 0:
        return mask
    a = np.asarray(mask, dtype=np.float64)
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    for axis in (1, 0):
        if a.shape[axis] < 2:
            continue
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        mode = "reflect" if a.shape[axis] > r else "symmetric"
        padded = np.pad(a, pad, mode=mode)
        a = sum(
            k[i] * np.take(padded, range(i, i + a.shape[axis]), axis=axis) for i in range(len(k))
        )
        a = np.clip(np.round(a), 0, 255)  # cv2 rounds to uint8 after each pass
    return Image.fromarray(a.astype(np.uint8), mode="L")


def crop_region(mask: Image.Image, pad: int) -> tuple[int, int, int, int] | None:
    """The masked area's bounding box grown by ``pad`` pixels (clipped), None when empty."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(
    region: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int
) -> tuple[int, int, int, int]:
    """Grow the crop to the job's aspect ratio around its centre, shifted to stay inside the
    picture (A1111's ``expand_crop_region``)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), image_h)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), image_w)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, diff: int, limit: int) -> tuple[int, int]:
    lo -= diff // 2
    hi += diff - diff // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    return lo, min(hi, limit)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: the unmasked picture, blurred at falling radii and laid
    over itself, so the hole takes the colours around it."""
    keep = ImageOps.invert(mask.convert("L"))
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(layer)
    return out.convert("RGB")


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """RGB, with any transparency laid over A1111's default white background."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.alpha_composite(rgba)
        return base.convert("RGB")
    return image.convert("RGB")


@dataclass
class Prepared:
    """One input ready for the sampler, and what pastes the result back."""

    image: Image.Image  # the job's size: what the VAE encodes
    latent_mask: np.ndarray | None  # (h/f, w/f) of 0/1: 1 = repaint; None for plain img2img
    overlay: Image.Image | None  # RGBA at the output's size: the input where unmasked
    paste_to: tuple[int, int, int, int] | None  # "only masked": x, y, w, h of the crop


@dataclass(frozen=True)
class MaskOptions:
    blur: int = 4
    invert: bool = False
    fill: str = "original"
    full_res: bool = False
    padding: int = 32


def prepare(
    image: Image.Image,
    mask: Image.Image | None,
    width: int,
    height: int,
    resize_mode: str,
    opts: MaskOptions,
    factor: int = 8,
) -> Prepared:
    """The picture, latent mask and overlay A1111 would use for this input at this size."""
    image = flatten(image)
    if mask is None:
        return Prepared(resize_image(resize_mode, image, width, height), None, None, None)
    m = binary_mask(mask)
    if opts.invert:
        m = ImageOps.invert(m)
    m = blur_mask(m, opts.blur)
    region = None
    if opts.full_res:
        if m.size != image.size:
            m = resize_image("Just resize", m, image.width, image.height)
        region = crop_region(m, opts.padding)
    if region is not None:
        region = expand_crop_region(region, width, height, m.width, m.height)
        overlay_mask = m
        work_mask = resize_image("Resize and fill", m.crop(region), width, height)
        x1, y1, x2, y2 = region
        paste_to = (x1, y1, x2 - x1, y2 - y1)
    else:  # whole picture (an empty mask in "only masked" falls back here, as in A1111)
        work_mask = resize_image(resize_mode, m, width, height)
        doubled = np.clip(np.asarray(work_mask, dtype=np.float32) * 2, 0, 255)
        overlay_mask = Image.fromarray(doubled.astype(np.uint8), mode="L")
        paste_to = None
        image = resize_image(resize_mode, image, width, height)
    if overlay_mask.size != image.size:
        overlay_mask = resize_image(resize_mode, overlay_mask, image.width, image.height)
    overlay = Image.new("RGBa", image.size)
    overlay.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask))
    overlay = overlay.convert("RGBA")
    if region is not None:
        image = resize_image("Resize and fill", image.crop(region), width, height)
    if opts.fill == "fill":
        image = fill_masked(image, work_mask)
    small = work_mask.convert("RGB").resize((width // factor, height // factor))
    latent = np.round(np.asarray(small, dtype=np.float32)[..., 0] / 255)
    return Prepared(image, latent, overlay, paste_to)


def apply_overlay(result: Image.Image, prepared: Prepared) -> Image.Image:
    """The rendered picture pasted back: into its crop ("only masked", then at the input's
    size), under the input's unmasked pixels."""
    if prepared.overlay is None:
        return result
    if prepared.paste_to is not None:
        x, y, w, h = prepared.paste_to
        base = Image.new("RGBA", prepared.overlay.size)
        base.paste(resize_image("Crop and resize", result, w, h), (x, y))
        result = base
    out = result.convert("RGBA")
    out.alpha_composite(prepared.overlay)
    return out.convert("RGB")


def latent_mask_pixels(latent: np.ndarray, factor: int = 8) -> np.ndarray:
    """The latent mask at pixel size (each cell a ``factor`` square), uint8 0/255: a mask the
    pipeline's own nearest-neighbour shrink turns back into exactly ``latent``."""
    big = np.kron(latent, np.ones((factor, factor), dtype=np.float32))
    return (big * 255).astype(np.uint8)
