"""Which checkpoint family (SD 1.x or SDXL) a ControlNet model is for. Pure (no torch).

Read without loading the weights: a diffusers folder's ``config.json`` (SDXL's ControlNet has
``addition_embed_type: text_time``, the size and pooled-text conditioning SDXL adds), a file's
key names (its safetensors header, or a pickle's strings): SDXL ControlNets hold that
conditioning's layers, ``add_embedding.*`` in diffusers' layout and ``label_emb.*`` in the
original one; SD 1.x ControlNets hold neither. An SDXL file in the original layout is refused:
diffusers' single-file converter (``convert_controlnet_checkpoint``) does not map its
``label_emb`` layers, so the model would load without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sdbatch.errors import RecipeError
from sdbatch.plan.weights import FAMILIES, SAFETENSORS, pickle_keys, safetensors_header

SDXL_KEYS = ("add_embedding.", "label_emb.")
ORIGINAL_KEYS = ("input_hint_block.", "zero_convs.", "input_blocks.")  # the original layout


def controlnet_family(path: str | os.PathLike, field: str) -> str:
    """``sd1`` or ``sdxl``; an unreadable file or folder is a RecipeError naming ``field``."""
    p = Path(path)
    if p.is_dir():
        try:
            config = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            raise RecipeError(field, p.name, "a ControlNet folder with a config.json") from None
        kind = config.get("addition_embed_type") if isinstance(config, dict) else None
        return "sdxl" if kind == "text_time" else "sd1"
    if p.suffix.lower() == SAFETENSORS:
        try:
            keys = set(safetensors_header(p))
        except (OSError, ValueError) as exc:
            raise RecipeError(field, p.stem, f"a readable .safetensors file ({exc})") from None
    else:
        keys = pickle_keys(p)
    # original layout: the same names under "control_model." (or bare); diffusers: bare
    sdxl = any(k.split("control_model.", 1)[-1].startswith(SDXL_KEYS) for k in keys)
    if sdxl and any(k.split("control_model.", 1)[-1].startswith(ORIGINAL_KEYS) for k in keys):
        allowed = (
            "an SDXL ControlNet in diffusers' layout (this file is in the original layout, "
            "and diffusers' converter drops its SDXL conditioning layers, label_emb)"
        )
        raise RecipeError(field, p.stem, allowed)
    return "sdxl" if sdxl else "sd1"


def check_unit_family(family: str, unit_family: str, model: str, field: str) -> None:
    """A ControlNet for another family than the checkpoint's: its layers do not fit the
    checkpoint's UNet (other widths, no SDXL conditioning)."""
    if unit_family != family:
        allowed = (
            f"an {FAMILIES.get(family, family)} ControlNet for an {FAMILIES.get(family, family)} "
            f"checkpoint ({model} is an {FAMILIES[unit_family]} ControlNet)"
        )
        raise RecipeError(field, model, allowed)
