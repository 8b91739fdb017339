"""The extension's ControlNet infotext fields back to a recipe's ``controlnet`` units
(``sdbatch-tools replay``). Pure (no torch).

Every layout the extension has written (Mikubill/sd-webui-controlnet's history) is read into
the fields of the current one, then mapped to the unit keys sdbatch.plan.controlnet validates:

- since August 2023 (``ControlNetUnit.serialize``), one field per unit::

      ControlNet 0: "Module: canny, Model: NAME [HASH], Weight: 1, Resize Mode: Crop and Resize,
      Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0,
      Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced"

- May to August 2023, one field per unit, lower-case, two of them tuples (``ControlNet`` when
  only one unit ran; in May each on a line of its own, which sdbatch.outputs.infotext reads
  as part of the params line)::

      ControlNet 0: "preprocessor: canny, model: NAME [HASH], weight: 1, starting/ending: (0, 1),
      resize mode: Crop and Resize, pixel perfect: False, control mode: Balanced,
      preprocessor params: (512, 100, 200)"

- late April to May 2023, flat fields: ``ControlNet 0 Enabled``, ``ControlNet 0 Preprocessor``,
  ``... Model``, ``... Weight``, ``... Starting Step``, ``... Ending Step``, ``... Resize Mode``,
  ``... Pixel Perfect``, ``... Control Mode``, ``... Preprocessor Parameters: (512, 100, 200)``;
- late February to April 2023, flat fields per unit: ``ControlNet-0 Enabled``,
  ``ControlNet-0 Module``, ``ControlNet-0 Model``, ``ControlNet-0 Weight``, ``ControlNet-0
  Guidance Start`` and ``ControlNet-0 Guidance End`` (``ControlNet-0 Guidance Strength``, the
  step fraction the unit stopped at, before March);
- February 2023 and any single unit until May: the same without the index (``ControlNet
  Enabled: True, ControlNet Module: canny, ControlNet Model: ..., ControlNet Weight: 1``).

The layouts before late April 2023 do not write canny's settings: the unit gets the
extension's defaults, written out (one warning says so). ``Pixel Perfect: True`` is the unit's
``pixel_perfect: true`` (with ``Module: none`` it changes nothing and is left out). What
sdbatch cannot reproduce (a module that is not built in, a value out of range, a field it
does not know) is one warning line each, never dropped silently; no value read here reaches
the recipe unless it is a number or one of sdbatch's names, so ``${...}`` never does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sdbatch.errors import RecipeError
from sdbatch.plan.controlnet import CONTROL_MODES, WEIGHT_MAX, _integer, _number
from sdbatch.plan.controlnet_resize import DEFAULT as RESIZE_DEFAULT
from sdbatch.plan.controlnet_resize import known_resize_mode
from sdbatch.plan.preprocessors import PARAMS

# every layout's field name (lower case) -> the current layout's
NAMES = {
    "module": "Module", "preprocessor": "Module", "model": "Model", "weight": "Weight",
    "resize mode": "Resize Mode", "processor res": "Processor Res",
    "threshold a": "Threshold A", "threshold b": "Threshold B",
    "guidance start": "Guidance Start", "starting step": "Guidance Start",
    "guidance end": "Guidance End", "ending step": "Guidance End",
    "guidance strength": "Guidance End",  # Feb 2023: the fraction of steps it ran for
    "pixel perfect": "Pixel Perfect", "control mode": "Control Mode",
}  # fmt: skip
# fields the current extension writes that decide no pixels (memory, saving the map): read, not
# warned about
NO_PIXELS = ("low vram", "save detected map")
# fields with the one value sdbatch does: their other values are not reproduced
ONLY = {"hr option": "Both"}  # the unit runs in both passes of the hires fix, as sdbatch's do
TUPLES = {
    "starting/ending": ("Guidance Start", "Guidance End"),
    "preprocessor params": ("Processor Res", "Threshold A", "Threshold B"),
    "preprocessor parameters": ("Processor Res", "Threshold A", "Threshold B"),
}
_WHOLE = re.compile(r"ControlNet(?: (\d+))?")  # a unit in one field
_FLAT = re.compile(r"(ControlNet(?:[ -](\d+))?) (\w[\w /]*)")  # one field of a unit
_ITEM = re.compile(r"\s*((?:[^,(]|\([^)]*\))*)(?:,|$)")  # "name: value", "(a, b)" kept whole
_CONTROL = {
    **{m.lower(): m for m in CONTROL_MODES},
    "controlmode.balanced": CONTROL_MODES[0], "controlmode.prompt": CONTROL_MODES[1],
    "controlmode.control": CONTROL_MODES[2], "0": CONTROL_MODES[0], "1": CONTROL_MODES[1],
    "2": CONTROL_MODES[2],
}  # fmt: skip


def _flat(key: str) -> re.Match | None:
    m = _FLAT.fullmatch(key)
    known = m is not None and (m.group(3).lower() in NAMES or m.group(3).lower() in TUPLES)
    return m if known or (m is not None and m.group(3) == "Enabled") else None


def is_infotext_unit(key: str) -> bool:
    """A ControlNet unit's infotext field in any of the extension's layouts: ``ControlNet 0``,
    ``ControlNet`` (one unit), ``ControlNet-0 Model``, ``ControlNet 0 Weight``, ..."""
    return _WHOLE.fullmatch(key) is not None or _flat(key) is not None


def _split(text: str) -> list[tuple[str, str]]:
    """A unit's ``name: value`` items, split at commas outside parentheses."""
    items = []
    for m in _ITEM.finditer(text):
        if piece := m.group(1).strip():
            name, sep, value = piece.partition(":")
            items.append((name.strip(), value.strip()) if sep else (piece, ""))
        if m.end() >= len(text):
            break
    return items


def _grouped(params: Mapping[str, str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(label, its items) per unit, in unit order; the label is the unit as the infotext names
    it (``ControlNet 0``, ``ControlNet-1``, ``ControlNet``)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    index: dict[str, int] = {}
    for key, value in params.items():
        if m := _WHOLE.fullmatch(key):
            groups.setdefault(key, []).extend(_split(value))
            index[key] = int(m.group(1) or 0)
        elif m := _flat(key):
            groups.setdefault(m.group(1), []).append((m.group(3), value.strip()))
            index[m.group(1)] = int(m.group(2) or 0)
    return sorted(groups.items(), key=lambda kv: (index[kv[0]], kv[0]))


def _fields(label: str, items: list[tuple[str, str]], warnings: list[str]) -> dict | None:
    """The items as the current layout's fields (None: a unit that did not run)."""
    fields: dict[str, str] = {}
    for name, value in items:
        low = name.lower()
        if low in NAMES:
            fields[NAMES[low]] = value
            if low == "guidance strength":  # it always started at the first step
                fields.setdefault("Guidance Start", "0")
        elif low in TUPLES:
            parts = [
                p.strip() for p in value.strip().removeprefix("(").removesuffix(")").split(",")
            ]
            if value.startswith("(") and value.endswith(")") and len(parts) == len(TUPLES[low]):
                fields.update(zip(TUPLES[low], parts, strict=True))
            else:
                warnings.append(f"not reproduced: {label} {name}: {value}")
        elif low in NO_PIXELS:
            continue
        elif low in ONLY:
            if value.strip().lower() != ONLY[low].lower():
                warnings.append(f"not reproduced: {label} {name}: {value} (sdbatch: {ONLY[low]})")
        elif low == "enabled":
            if value != "True":
                warnings.append(f"not reproduced: {label} (Enabled: {value}: it did not run)")
                return None
        else:
            shown = f"{name}: {value}" if value else name
            warnings.append(
                f"not reproduced: {label} {shown} (not a ControlNet field sdbatch knows)"
            )
    return fields


def _module_from_infotext(key: str, fields: Mapping[str, str], unit: dict) -> list[str]:
    """A built-in module and its settings into ``unit``; warnings for what is not."""
    module = fields.get("Module", "none")
    if module.lower() == "none":
        return []
    if module.lower() not in PARAMS:
        return [
            f"{key}: Module {module} is not built in: set image to its preprocessed "
            "condition image (module: none)"
        ]
    unit["module"] = module.lower()
    warnings = []
    params = PARAMS[module.lower()]
    for p in params:
        if p.label in fields:
            try:
                unit[p.key] = _integer(p.key, fields[p.label], p.lo, p.hi)
            except RecipeError:
                warnings.append(f"not reproduced: {key} {p.label}: {fields[p.label]}")
    if not any(p.label in fields for p in params):  # written out, as the current layout has
        unit.update((p.key, p.default) for p in params)
        defaults = ", ".join(f"{p.key} {p.default}" for p in params)
        warnings.append(
            f"{key}: the infotext does not give {module.lower()}'s settings; the recipe has the "
            f"extension's defaults ({defaults})"
        )
    perfect = fields.get("Pixel Perfect", "False")
    if perfect.strip().lower() == "true":
        unit["pixel_perfect"] = True
    elif perfect.strip().lower() != "false":
        warnings.append(f"not reproduced: {key} Pixel Perfect: {perfect} (sdbatch: False)")
    return warnings


def _unit(key: str, fields: Mapping[str, str], warnings: list[str]) -> dict | None:
    model = fields.get("Model", "None")
    name = model.rsplit(" [", 1)[0] if model.endswith("]") else model
    if name in ("", "None") or "${" in name:  # "${": an interpolation, never a name
        warnings.append(f"not reproduced: {key} (no model name sdbatch can use)")
        return None
    unit: dict = {"model": name, "image": None}
    for field, target, lo, hi in (
        ("Weight", "weight", 0, WEIGHT_MAX),
        ("Guidance Start", "guidance_start", 0, 1),
        ("Guidance End", "guidance_end", 0, 1),
    ):
        if field in fields:
            try:
                unit[target] = _number(target, fields[field], lo, hi, "a number")
            except RecipeError:
                warnings.append(f"not reproduced: {key} {field}: {fields[field]}")
    warnings += _module_from_infotext(key, fields, unit)
    mode = fields.get("Control Mode", "Balanced")
    if (known := _CONTROL.get(mode.strip().lower())) is None:
        warnings.append(f"not reproduced: {key} Control Mode: {mode} (sdbatch: Balanced)")
    elif known != CONTROL_MODES[0]:
        unit["control_mode"] = known
    resize = fields.get("Resize Mode", RESIZE_DEFAULT)
    if (known := known_resize_mode(resize)) is None:
        warnings.append(f"not reproduced: {key} Resize Mode: {resize} (sdbatch: {RESIZE_DEFAULT})")
    elif known != RESIZE_DEFAULT:
        unit["resize_mode"] = known
    return unit


def units_from_infotext(params: Mapping[str, str]) -> tuple[list[dict], list[str]]:
    """The recipe's ``controlnet`` units from the extension's fields (any layout above), and
    one warning line per thing not reproduced. The infotext does not say which condition
    image was used: each unit's ``image`` is left for the user to set (one warning)."""
    units: list[dict] = []
    warnings: list[str] = []
    for key, items in _grouped(params):
        fields = _fields(key, items, warnings)
        if fields is not None and (unit := _unit(key, fields, warnings)) is not None:
            units.append(unit)
    if units:
        warnings.append(
            "ControlNet: the infotext does not say which condition image was used; set each "
            "controlnet unit's image to run the recipe"
        )
    return units, warnings
