"""ControlNet units of a recipe, as A1111's ControlNet extension has them. Pure (no torch).

``controlnet`` is a list of units ``{model, image, weight, guidance_start, guidance_end,
control_mode, resize_mode, module, processor_res, threshold_a, threshold_b, pixel_perfect}``.
The model is a name in the ControlNet folder (A1111's ``models/ControlNet``;
``folders.controlnet`` or ``SDBATCH_CONTROLNET``): a ``.safetensors`` (or, with
``model.allow_pickle``, a pickle) file by stem, or a diffusers folder. ``image`` is a file,
folder or glob of condition images: when it and ``init_images`` are both folders they are
matched by file stem, otherwise every condition image is a sweep value. ``module`` is ``none``
(the images are the conditions) or ``canny`` (sdbatch.plan.preprocessors, run on each image
when it is read, with the unit's ``processor_res`` and thresholds; with ``pixel_perfect:
true`` the resolution is computed from the image's size and the job's instead, as the
extension's Pixel Perfect does). ``control_mode`` is one of the extension's three
(`CONTROL_MODES`; sdbatch.render.controlnet scales the residuals as it does), ``resize_mode``
one of its three (sdbatch.plan.controlnet_resize, default "Crop and Resize"). A unit's model
must be for the checkpoint's family (SD 1.x or SDXL: sdbatch.plan.controlnet_family).

Each job carries a `Control`: per unit the model file's hash, the condition image's sha256,
the weight, the guidance window, the control mode, (when not ``none``) the module and its
settings (and Pixel Perfect when on) and (when not "Crop and Resize") the resize mode. Its
`key` joins the job id only when units are set, so ids of plans without ControlNet (or of
units with ``module: none``, the default resize mode and Pixel Perfect off) do not change;
`infotext` writes the extension's ``ControlNet N`` fields, which
sdbatch.plan.controlnet_infotext reads back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdbatch.errors import RecipeError
from sdbatch.plan.controlnet_family import check_unit_family, controlnet_family
from sdbatch.plan.controlnet_resize import DEFAULT as RESIZE_DEFAULT
from sdbatch.plan.controlnet_resize import resize_mode
from sdbatch.plan.hashing import cached_sha256, model_hash, sha256_file
from sdbatch.plan.image_inputs import check_image, list_files
from sdbatch.plan.model_folders import find_file, folders_of, safe_name
from sdbatch.plan.preprocessors import MODULES, NONE_INFOTEXT, PARAM_KEYS, PARAMS

FIELD = "controlnet"
UNIT_KEYS = (
    "model", "image", "weight", "guidance_start", "guidance_end", "control_mode", "resize_mode",
    "module", *PARAM_KEYS, "pixel_perfect",
)  # fmt: skip
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
WEIGHT_MAX = 2.0  # the extension's slider: 0..2


@dataclass(frozen=True, slots=True)
class ControlUnit:
    """One unit of one job: a model, one condition image, its weight and window."""

    model: str  # the name as the extension writes it (file stem)
    path: str  # the model file or diffusers folder
    hash: str  # the extension's short hash, "Model: NAME [HASH]"
    file_sha256: str  # the model's content hash (job id)
    image: str
    image_sha256: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "Balanced"
    module: str = "none"
    settings: tuple[int, ...] = ()  # the module's values, in PARAMS order (none: empty)
    resize: str = RESIZE_DEFAULT  # the extension's resize mode (sdbatch.plan.controlnet_resize)
    pixel_perfect: bool = False  # the resolution from the image's and the job's size

    def serialize(self) -> str:
        """The extension's unit text (ControlNetUnit.serialize: its infotext fields in order)."""
        res, a, b = self.settings or NONE_INFOTEXT
        fields = (
            ("Module", self.module),
            ("Model", f"{self.model} [{self.hash}]"),
            ("Weight", float(self.weight)),
            ("Resize Mode", self.resize),
            ("Processor Res", res),
            ("Threshold A", a),
            ("Threshold B", b),
            ("Guidance Start", float(self.start)),
            ("Guidance End", float(self.end)),
            ("Pixel Perfect", self.pixel_perfect),
            ("Control Mode", self.mode),
        )
        return ", ".join(f"{k}: {v}" for k, v in fields)


@dataclass(frozen=True, slots=True)
class Control:
    units: tuple[ControlUnit, ...]

    def key(self) -> str:
        units = [
            [u.file_sha256, u.image_sha256, repr(u.weight), repr(u.start), repr(u.end), u.mode]
            + ([u.module, *u.settings] if u.module != "none" else [])  # none: ids as before
            + ([u.resize] if u.resize != RESIZE_DEFAULT else [])  # the default: ids as before
            + (["pixel_perfect"] if u.pixel_perfect else [])  # off: ids as before
            for u in self.units
        ]
        return json.dumps({"cn": units}, separators=(",", ":"))

    def batch_key(self) -> tuple:
        """Jobs share a pass with the same models, weights, windows and modes (images are per
        job)."""
        return tuple((u.path, u.file_sha256, u.weight, u.start, u.end, u.mode) for u in self.units)

    def infotext(self) -> dict[str, str]:
        return {f"ControlNet {i}": u.serialize() for i, u in enumerate(self.units)}

    def describe(self) -> str:
        """For dry runs: ``ControlNet tiny (left.png, 1), cn (edge.png, 1, canny 100/200 at
        512), ...``."""
        units = (f"{u.model} ({Path(u.image).name}, {u.weight:g}{_module(u)})" for u in self.units)
        return "ControlNet " + ", ".join(units)

    def columns(self) -> list[dict]:
        """The manifest's ``controlnet`` column: one struct per unit."""
        return [
            {
                "model": u.model, "hash": u.hash, "image": u.image,
                "image_sha256": u.image_sha256, "weight": u.weight,
                "start": u.start, "end": u.end, "module": u.module, "control_mode": u.mode,
                "resize_mode": u.resize,
            }
            for u in self.units
        ]  # fmt: skip


def _module(u: ControlUnit) -> str:
    mode = "" if u.mode == "Balanced" else f", {u.mode}"
    mode += "" if u.resize == RESIZE_DEFAULT else f", {u.resize}"
    if u.module == "none":
        return mode
    res, a, b = u.settings
    at = "pixel perfect" if u.pixel_perfect else f"at {res}"
    return f", {u.module} {a}/{b} {at}{mode}"


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """A recipe unit, validated: its model and condition images (path, sha256)."""

    model: str
    path: str
    hash: str
    file_sha256: str
    images: tuple[tuple[str, str], ...]
    by_stem: bool  # matched to init_images by file stem
    weight: float
    start: float
    end: float
    mode: str
    module: str = "none"
    settings: tuple[int, ...] = ()
    family: str = "sd1"  # the checkpoint family the model is for
    resize: str = RESIZE_DEFAULT
    pixel_perfect: bool = False


def control_mode(value: Any, field: str) -> str:
    """One of `CONTROL_MODES`, as the extension spells it (any letter case is read)."""
    text = str(value).strip() if value is not None else "Balanced"
    for mode in CONTROL_MODES:
        if text.lower() == mode.lower():
            return mode
    raise RecipeError(field, value, "one of " + ", ".join(CONTROL_MODES))


def a1111_short_hash(path: str | os.PathLike) -> str:
    """The hash the extension shows after a model's name: A1111's old model hash (sha256 of
    64 KiB at 1 MiB, 8 hex digits); for a diffusers folder the first 8 of its folder hash."""
    if os.path.isdir(path):
        return model_hash(path)[:8]
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _number(field: str, value: Any, lo: float, hi: float, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not lo <= number <= hi:
        raise RecipeError(field, value, f"{what} in {lo:g}..{hi:g}")
    return number


def _is_folder(value: Any, dirs: list[Path]) -> bool:
    from sdbatch.plan.image_inputs import _resolve

    if not isinstance(value, str):
        return False
    return any(os.path.isdir(p) for p in _resolve(value, dirs))


def folder_weights(folder: Path) -> list[Path]:
    """The weight files of a diffusers ControlNet folder that load: its ``.safetensors`` files,
    or (only when it has none) its pickles; a pickle beside safetensors never loads."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    safe = [p for p in files if p.suffix.lower() == ".safetensors"]
    return safe or [p for p in files if p.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt")]


def resolve_model(name: Any, folders: Mapping[str, object], field: str, allow_pickle: bool):
    """(path, is folder) of a ControlNet model: a diffusers folder directly in the ControlNet
    folder, else a file by stem (A1111's lookup), checked by the weights policy."""
    from sdbatch.plan.weights import check_weights_file

    if not isinstance(name, str) or not name.strip():
        raise RecipeError(field, name, "a ControlNet model name in the ControlNet folder")
    if safe_name(name):
        for root in folders_of("controlnet", folders):
            here = root / name
            if (here / "config.json").is_file():
                for p in folder_weights(here):
                    check_weights_file(p, field, allow_pickle)
                return here
    path = find_file("controlnet", name, folders, field)
    check_weights_file(path, field, allow_pickle)
    return path


def _integer(field: str, value: Any, lo: int, hi: int) -> int:
    number = _number(field, value, lo, hi, "an integer")
    if number != int(number):
        raise RecipeError(field, value, f"an integer in {lo}..{hi}")
    return int(number)


def module_settings(unit: Mapping, where: str) -> tuple[str, tuple[int, ...]]:
    """The unit's module and its settings (the extension's sliders, defaults where unset);
    settings on ``none`` are an error (no preprocessor would read them)."""
    raw = unit.get("module", "none")
    module = str(raw).strip().lower() if raw is not None else "none"
    if module not in MODULES:
        allowed = (
            "none or canny (depth, openpose...: not built in, their annotators download "
            "models; give ready-made condition images with module: none)"
        )
        raise RecipeError(f"{where}.module", raw, allowed)
    if module == "none":
        for key in PARAM_KEYS:
            if unit.get(key) is not None:
                raise RecipeError(f"{where}.{key}", unit[key], "unset with module: none")
        return module, ()
    settings = []
    for p in PARAMS[module]:
        value = unit.get(p.key)
        value = p.default if value is None else value
        settings.append(_integer(f"{where}.{p.key}", value, p.lo, p.hi))
    return module, tuple(settings)


def pixel_perfect(unit: Mapping, where: str, module: str) -> bool:
    """The unit's ``pixel_perfect`` (unset: false): true or false; true only with a module
    that has a resolution (canny), as with its other settings."""
    value = unit.get("pixel_perfect")
    if value is None or value is False:
        return False
    if value is not True:
        raise RecipeError(f"{where}.pixel_perfect", value, "true or false")
    if module == "none":
        raise RecipeError(f"{where}.pixel_perfect", value, "false with module: none")
    return True


def parse_units(cfg: Any, dirs: list[Path], allow_pickle: bool) -> list[UnitSpec]:
    """The recipe's units, validated (models found, images read and hashed); [] when unset."""
    raw = cfg.controlnet
    if raw in (None, "", []):
        return []
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise RecipeError(FIELD, raw, "a list of units {model, image, weight, ...}")
    folders = asdict(cfg.folders)
    init_folder = _is_folder(cfg.init_images, dirs)
    specs = []
    for i, unit in enumerate(raw):
        where = f"{FIELD}[{i}]"
        if not isinstance(unit, Mapping):
            raise RecipeError(where, unit, "a unit {model, image, weight, ...}")
        for key in unit:
            if key not in UNIT_KEYS:
                raise RecipeError(f"{where}.{key}", unit[key], "keys " + ", ".join(UNIT_KEYS))
        for key in ("model", "image"):
            if unit.get(key) in (None, "", []):
                raise RecipeError(f"{where}.{key}", unit.get(key), f"a {key} (required)")
        module, settings = module_settings(unit, where)
        perfect = pixel_perfect(unit, where, module)
        mode = control_mode(unit.get("control_mode", "Balanced"), f"{where}.control_mode")
        resize = resize_mode(unit.get("resize_mode"), f"{where}.resize_mode")
        weight = _number(f"{where}.weight", unit.get("weight", 1), 0, WEIGHT_MAX, "a number")
        start = _number(f"{where}.guidance_start", unit.get("guidance_start", 0), 0, 1, "a number")
        end = _number(f"{where}.guidance_end", unit.get("guidance_end", 1), 0, 1, "a number")
        if start > end:
            raise RecipeError(f"{where}.guidance_start", start, f"at most guidance_end ({end:g})")
        path = resolve_model(unit["model"], folders, f"{where}.model", allow_pickle)
        is_dir = os.path.isdir(path)
        file_sha = model_hash(path) if is_dir else cached_sha256(path)
        field = f"{where}.image"
        images = []
        for p in list_files(field, unit["image"], dirs):
            check_image(field, p)
            images.append((p, sha256_file(p)))
        by_stem = init_folder and _is_folder(unit["image"], dirs)
        name = path.name if is_dir else path.stem
        family = controlnet_family(path, f"{where}.model")
        specs.append(
            UnitSpec(
                name, str(path), a1111_short_hash(path), file_sha, tuple(images), by_stem,
                weight, start, end, mode, module, settings, family, resize, perfect,
            )
        )  # fmt: skip
    return specs


def controls_for(specs: list[UnitSpec], image: str | None) -> list[Control]:
    """The unit combinations one init picture (or a txt2img job: None) renders with: a unit
    matched by stem gives the condition image of the picture's stem, others sweep theirs."""
    combos: list[tuple[ControlUnit, ...]] = [()]
    for i, s in enumerate(specs):
        images = s.images
        if s.by_stem and image is not None:
            stem = Path(image).stem
            images = tuple(x for x in s.images if Path(x[0]).stem == stem)
            if not images:
                allowed = f"a condition image named like each picture ({image} has none)"
                raise RecipeError(f"{FIELD}[{i}].image", stem, allowed)
        units = [
            ControlUnit(
                s.model, s.path, s.hash, s.file_sha256, p, sha, s.weight, s.start, s.end,
                s.mode, s.module, s.settings, s.resize, s.pixel_perfect,
            )
            for p, sha in images
        ]  # fmt: skip
        combos = [(*c, u) for c in combos for u in units]
    return [Control(c) for c in combos]


def check_family(family: str, specs: list[UnitSpec]) -> None:
    """Every unit's model is a ControlNet for the checkpoint's family (SD 1.x or SDXL)."""
    for i, s in enumerate(specs):
        check_unit_family(family, s.family, s.model, f"{FIELD}[{i}].model")
