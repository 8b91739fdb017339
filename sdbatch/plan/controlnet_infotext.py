"""The extension's ``ControlNet N`` infotext fields back to a recipe's ``controlnet`` units
(``sdbatch-tools replay``). Pure (no torch).

Each unit's fields are read as the extension's ControlNetUnit.parse reads them (``Key: value``
pairs split at commas) and mapped to the unit keys sdbatch.plan.controlnet validates; what
sdbatch cannot reproduce is one warning line each, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping

from sdbatch.errors import RecipeError
from sdbatch.plan.controlnet import CONTROL_MODES, WEIGHT_MAX, _integer, _number
from sdbatch.plan.controlnet_resize import DEFAULT as RESIZE_DEFAULT
from sdbatch.plan.controlnet_resize import known_resize_mode
from sdbatch.plan.preprocessors import PARAMS


def is_infotext_unit(key: str) -> bool:
    """``ControlNet 0``, ``ControlNet 1``, ...: the extension's unit fields."""
    head, _, index = key.partition(" ")
    return head == "ControlNet" and index.isdigit()


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
    for p in PARAMS[module.lower()]:
        if p.label in fields:
            try:
                unit[p.key] = _integer(p.key, fields[p.label], p.lo, p.hi)
            except RecipeError:
                warnings.append(f"not reproduced: {key} {p.label}: {fields[p.label]}")
    if fields.get("Pixel Perfect", "False") == "True":
        res = unit.get("processor_res", PARAMS[module.lower()][0].default)
        warnings.append(f"not reproduced: {key} Pixel Perfect: True (sdbatch: processor_res {res})")
    return warnings


def units_from_infotext(params: Mapping[str, str]) -> tuple[list[dict], list[str]]:
    """The recipe's ``controlnet`` units from the extension's ``ControlNet N`` fields (parsed
    as its ControlNetUnit.parse does: ``Key: value`` pairs split at commas), and one warning
    line per thing not reproduced. The infotext does not say which condition image was used:
    each unit's ``image`` is left for the user to set (one warning)."""
    units: list[dict] = []
    warnings: list[str] = []
    for key in sorted((k for k in params if is_infotext_unit(k)), key=lambda k: int(k[11:])):
        fields: dict[str, str] = {}
        for item in params[key].split(","):
            name, sep, value = item.strip().partition(": ")
            if sep:
                fields[name.strip()] = value.strip()
        model = fields.get("Model", "None")
        name = model.rsplit(" [", 1)[0] if model.endswith("]") else model
        if name in ("", "None") or "${" in name:  # "${": an interpolation, never a name
            warnings.append(f"not reproduced: {key} (no model name sdbatch can use)")
            continue
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
        if mode in CONTROL_MODES[1:]:
            unit["control_mode"] = mode
        elif mode != "Balanced":
            warnings.append(f"not reproduced: {key} Control Mode: {mode} (sdbatch: Balanced)")
        resize = fields.get("Resize Mode", RESIZE_DEFAULT)
        if (known := known_resize_mode(resize)) is None:
            warnings.append(
                f"not reproduced: {key} Resize Mode: {resize} (sdbatch: {RESIZE_DEFAULT})"
            )
        elif known != RESIZE_DEFAULT:
            unit["resize_mode"] = known
        units.append(unit)
    if units:
        warnings.append(
            "ControlNet: the infotext does not say which condition image was used; set each "
            "controlnet unit's image to run the recipe"
        )
    return units, warnings
