"""Image inputs of a recipe: img2img pictures, inpainting masks, captions. Pure (no torch).

``init_images`` is a folder, a glob or a list of files (or of folders and globs); each picture
is a value of a sweep axis, like a prompt. ``masks`` is a folder or glob matched to the pictures
by file stem, as A1111's batch tab matches them (one mask file serves every picture). A caption
``NAME.txt`` beside ``NAME.png`` (the training-set convention) is the picture's ``{caption}``
in prompts and templates. Relative paths are tried in the recipe folders (the bundled
``recipes/``, then ``SDBATCH_RECIPES``, the last first), then in the working directory.

Paths sdbatch builds from a name (a mask for a picture, a caption beside it) are found by
listing their folder, so they cannot lead out of it; a caption that is a link out of its
picture's folder is refused. Every picture and mask is opened here, before a model loads: a
missing, unreadable or non-image file is one line naming the field and the file.

Each job carries an `ImageInput`: the picture's and mask's sha256 (content, not name: editing a
picture re-renders only its jobs), the denoising strength and the image options; its `key`
joins the job id only for jobs that have one, so txt2img ids do not change.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdbatch.errors import RecipeError
from sdbatch.plan.hashing import sha256_file
from sdbatch.plan.image_ops import RESIZE_MODES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")  # A1111's "Mask mode"
FILLS = ("fill", "original", "latent noise", "latent nothing")  # A1111's "Masked content"
CAPTION = "{caption}"
_PLACEHOLDER = "SDBATCHCAPTIONQ7"  # stands in for {caption} while templates expand


@dataclass(frozen=True, slots=True)
class InputFile:
    """One picture of ``init_images``, with its mask and caption."""

    path: str
    sha256: str
    mask: str | None = None
    mask_sha256: str | None = None
    caption: str | None = None  # None: no caption file

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """The recipe's image options (A1111's img2img/inpaint settings)."""

    resize_mode: str = "Just resize"
    mask_blur: int = 4
    invert: bool = False  # "Inpaint not masked"
    fill: str = "original"
    full_res: bool = False  # "Inpaint area: Only masked"
    padding: int = 32


@dataclass(frozen=True, slots=True)
class ImageInput:
    """What one job takes from its picture: the file, the mask, the strength, the options."""

    file: InputFile
    denoise: float
    options: ImageOptions = ImageOptions()

    @property
    def masked(self) -> bool:
        return self.file.mask is not None

    def key(self) -> str:
        """The job-id part: the picture's and mask's content hashes, the strength and every
        option that changes pixels (mask options only with a mask)."""
        o = self.options
        parts: dict[str, Any] = {"img": self.file.sha256, "d": repr(self.denoise)}
        parts["resize"] = o.resize_mode
        if self.masked:
            parts.update(mask=self.file.mask_sha256, blur=o.mask_blur, invert=o.invert)
            parts.update(fill=o.fill, full=[o.full_res, o.padding if o.full_res else 0])
        return json.dumps(parts, separators=(",", ":"), sort_keys=True)

    def batch_key(self) -> tuple:
        """Jobs share a pass with the same strength and options, masked or not alike."""
        o = self.options
        return (self.denoise, self.masked, o if self.masked else o.resize_mode)

    def infotext(self) -> dict[str, object]:
        """A1111's img2img fields (keyed by A1111's names, ordered by the caller)."""
        out: dict[str, object] = {"Denoising strength": self.denoise}
        if not self.masked:
            return out
        o = self.options
        if o.invert:
            out["Mask mode"] = "Inpaint not masked"
        if o.mask_blur > 0:
            out["Mask blur"] = o.mask_blur
        if o.full_res:
            out["Inpaint area"] = "Only masked"
            out["Masked area padding"] = o.padding
        if o.fill != "original":
            out["Masked content"] = o.fill
        return out


def a1111_steps(steps: int, denoise: float) -> tuple[int, float]:
    """A1111's img2img rule (img2img_fix_steps off, its default): the schedule is planned over
    ``steps`` and sampling starts at ``t_enc = int(min(denoise, 0.999) * steps)``, running
    ``t_enc + 1`` denoiser steps (``sigmas[steps - t_enc - 1:]``). Returns (that count, the
    diffusers ``strength`` that makes ``int(steps * strength)`` equal it)."""
    t_enc = int(min(denoise, 0.999) * steps)
    n = min(t_enc + 1, steps)
    return n, 1.0 if n == steps else (n + 0.5) / steps


def _choice(field: str, value: Any, allowed: tuple[str, ...], numbers: bool = True) -> str:
    """A1111's name for an option; the index A1111's API takes is accepted too."""
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(allowed):
            return allowed[value]
    text = str(value).strip()
    for name in allowed:
        if text.lower() == name.lower():
            return name
    indexes = f" (or 0-{len(allowed) - 1})" if numbers else ""
    raise RecipeError(field, value, "one of " + ", ".join(allowed) + indexes)


def _whole(field: str, value: Any, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or not lo <= number <= hi:
        raise RecipeError(field, value, f"an integer in {lo}..{hi}")
    return int(number)


def parse_options(cfg: Any) -> ImageOptions:
    """The image options of a recipe (``SdbatchConfig``), validated."""
    invert = cfg.inpainting_mask_invert
    if isinstance(invert, bool):
        invert = int(invert)
    return ImageOptions(
        resize_mode=_choice("resize_mode", cfg.resize_mode, RESIZE_MODES),
        mask_blur=_whole("mask_blur", cfg.mask_blur, 0, 64),
        invert=_choice("inpainting_mask_invert", invert, MASK_MODES) == MASK_MODES[1],
        fill=_choice("inpainting_fill", cfg.inpainting_fill, FILLS),
        full_res=_flag("inpaint_full_res", cfg.inpaint_full_res),
        padding=_whole("inpaint_full_res_padding", cfg.inpaint_full_res_padding, 0, 256),
    )


def _flag(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("only masked", "true", "1"):
        return True
    if text in ("whole picture", "false", "0"):
        return False
    raise RecipeError(field, value, "true (A1111's 'Only masked') or false ('Whole picture')")


def parse_denoise(value: Any) -> float:
    """One denoising strength: a number in 0..1 (A1111's slider)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0 <= number <= 1:
        raise RecipeError("denoise", value, "a number in 0..1 (A1111's Denoising strength)")
    return number


def _resolve(entry: str, dirs: list[Path]) -> list[str]:
    """Where a relative path or glob is: the recipe folders (last first), then the working
    directory; the first place it matches."""
    text = os.path.expanduser(entry)
    if os.path.isabs(text):
        return [text]
    return [str(Path(d) / text) for d in reversed(dirs)] + [text]


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def list_files(field: str, value: Any, dirs: list[Path]) -> list[str]:
    """The files a folder, glob, file or list of them names, in order (folders and globs
    sorted by name, each file once)."""
    entries = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise RecipeError(field, entry, "a folder, a glob or a list of image files")
        found = None
        for place in _resolve(entry, dirs):
            if glob.has_magic(place):
                hits = sorted(p for p in glob.glob(place) if os.path.isfile(p))
                found = [p for p in hits if _is_image_name(p)] or None
            elif os.path.isdir(place):
                names = sorted(os.listdir(place))
                found = [os.path.join(place, n) for n in names if _is_image_name(n)]
                found = [p for p in found if os.path.isfile(p)]
                if not found:
                    raise RecipeError(field, entry, f"a folder holding images ({place} has none)")
            elif os.path.lexists(place):
                found = [place]
            if found:
                break
        if not found:
            raise RecipeError(field, entry, "an existing image file, folder or glob (not found)")
        out.extend(os.path.normpath(os.path.abspath(p)) for p in found)  # as the manifest says
    return list(dict.fromkeys(out))


def check_image(field: str, path: str) -> tuple[int, int]:
    """The picture's size, or one line naming the field and the file it cannot read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
            return im.size
    except FileNotFoundError:
        raise RecipeError(field, path, "an existing image file (not found)") from None
    except (UnidentifiedImageError, SyntaxError, ValueError):
        raise RecipeError(field, path, "an image file Pillow can read (this is not one)") from None
    except OSError as exc:
        reason = exc.strerror or str(exc).split(":")[0] or type(exc).__name__
        raise RecipeError(field, path, f"a readable image file ({reason})") from None


def _masks_by_stem(value: Any, dirs: list[Path]) -> tuple[dict[str, str], str | None]:
    """stem -> mask file, or the one mask every picture uses."""
    files = list_files("masks", value, dirs)
    single = isinstance(value, str) and len(files) == 1 and not glob.has_magic(value)
    if single and not any(os.path.isdir(p) for p in _resolve(value, dirs)):
        return {}, files[0]
    by_stem: dict[str, str] = {}
    for path in files:
        by_stem.setdefault(Path(path).stem, path)
    return by_stem, None


def read_caption(image: str, listings: dict[str, set[str]] | None = None) -> str | None:
    """The text of ``NAME.txt`` beside ``NAME.png`` (stripped, lines joined with ", "), or None
    when there is none. Found by listing the picture's folder; a caption that leads out of it
    (a link elsewhere) is refused. ``listings`` caches each folder's names (one listing per
    folder, not per picture)."""
    folder, stem = os.path.dirname(image) or ".", Path(image).stem
    listings = {} if listings is None else listings
    if folder not in listings:
        listings[folder] = set(os.listdir(folder))
    name = f"{stem}.txt"
    if name not in listings[folder]:
        return None
    path = os.path.join(folder, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(folder):
        raise RecipeError("init_images", path, "a caption file inside its picture's folder")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError("init_images", path, f"a readable UTF-8 caption file ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return ", ".join(lines)


def input_files(cfg: Any, dirs: list[Path], captions: bool) -> list[InputFile]:
    """The recipe's pictures with their masks (and captions when ``captions``), checked and
    hashed; [] when ``init_images`` is not set. Identical inputs (same picture, mask and
    caption) are one."""
    if cfg.init_images in (None, "", []):
        if cfg.masks not in (None, "", []):
            raise RecipeError("masks", cfg.masks, "masks only together with init_images")
        return []
    images = list_files("init_images", cfg.init_images, dirs)
    by_stem, single = ({}, None)
    if cfg.masks not in (None, "", []):
        by_stem, single = _masks_by_stem(cfg.masks, dirs)
    hashes: dict[str, str] = {}

    def digest(field: str, path: str) -> str:
        if path not in hashes:
            check_image(field, path)
            hashes[path] = sha256_file(path)
        return hashes[path]

    out: list[InputFile] = []
    listings: dict[str, set[str]] = {}
    for path in images:
        sha = digest("init_images", path)
        masked = bool(single or by_stem)
        mask = single or by_stem.get(Path(path).stem)
        if masked and mask is None:
            raise RecipeError(
                "masks", Path(path).stem, f"a mask named like each picture ({path} has none)"
            )
        mask_sha = digest("masks", mask) if mask else None
        caption = read_caption(path, listings) if captions else None
        out.append(InputFile(path, sha, mask, mask_sha, caption))
    return list(dict.fromkeys(out))


def protect_captions(texts: list[str]) -> list[str]:
    """``{caption}`` hidden from the template expansion (put back per picture later)."""
    return [t.replace(CAPTION, _PLACEHOLDER) for t in texts]


def uses_caption(text: str) -> bool:
    return _PLACEHOLDER in text


def with_caption(text: str, caption: str | None, image: str) -> str:
    """A prompt with its picture's caption in place of ``{caption}``; a prompt that uses it
    for a picture without a caption file is one error line."""
    if _PLACEHOLDER not in text:
        return text
    if caption is None:
        txt = str(Path(image).with_suffix(".txt"))
        raise RecipeError("init_images", image, f"a caption file {txt} ({{caption}} uses it)")
    return text.replace(_PLACEHOLDER, caption)


def restore_caption(text: str | None) -> str | None:
    return None if text is None else text.replace(_PLACEHOLDER, CAPTION)


@dataclass(frozen=True, slots=True)
class ImageAxis:
    """The plan's image axis: pictures, strengths and options (None for txt2img plans)."""

    files: tuple[InputFile, ...]
    denoise: tuple[float, ...]
    options: ImageOptions


def image_entries(cfg: Any, items: list, dirs: list[Path]) -> tuple[list[tuple], ImageAxis | None]:
    """(picture, prompt item) pairs, picture by picture, and the axis; for a plan without
    ``init_images``: (None, item) per item and None, so txt2img plans stay as they were.
    Prompts and templates using ``{caption}`` take each picture's caption here (and a
    ``caption`` variable in the manifest's ``vars``)."""
    from sdbatch.plan.templates import PromptItem

    files = input_files(cfg, dirs, captions=True)
    if not files:
        return [(None, item) for item in items], None
    if float(cfg.hires.scale or 1) != 1:
        raise RecipeError(
            "hires.scale", cfg.hires.scale,
            "1 (off) with init_images: A1111's img2img has no hires fix",
        )  # fmt: skip
    from sdbatch.plan.axes import expand_axis

    denoise = tuple(dict.fromkeys(parse_denoise(d) for d in expand_axis("denoise", cfg.denoise)))
    if not denoise:
        raise RecipeError("denoise", cfg.denoise, "at least one value in 0..1")
    entries = []
    for f in files:
        for item in items:
            if not uses_caption(item.text):
                entries.append((f, item))
                continue
            text = with_caption(item.text, f.caption, f.path)
            vars = (*item.vars, ("caption", f.caption or ""))
            entries.append((f, PromptItem(text, restore_caption(item.template), vars)))
    return entries, ImageAxis(tuple(files), denoise, parse_options(cfg))
