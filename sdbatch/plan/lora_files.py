"""LoRA / LyCORIS files: the tags that name them, A1111's hash of them, and what they hold.
Pure: no torch (safetensors headers and pickle opcodes are read as bytes).

Tags, as A1111's built-in Lora extension reads them (``extensions-builtin/Lora``):
``<lora:NAME>``, ``<lora:NAME:W>`` (text encoder and UNet at W), ``<lora:NAME:TE:UNET>``,
and named arguments ``te=``, ``unet=`` in any position after the name (a named one wins over
the positional one). The multiplier is 1 when none is given; the UNet's is the text encoder's
unless given. ``<lyco:...>`` is the same (A1111 registers it as an alias). ``dyn`` (DyLoRA's
rank limit, the fourth positional argument) has no diffusers equivalent: a one-line error.
Two tags of one file add up (A1111 applies both; a LoRA's change is linear in its multiplier).

Hash, as A1111 writes ``Lora hashes`` (``extensions-builtin/Lora/network.py`` and
``modules/hashes.py``): the file's ``sshs_model_hash`` metadata when it has one, else for a
``.safetensors`` file kohya's "addnet" hash (sha256 of the bytes after the header), else the
sha256 of the whole file; written as its first 12 hex digits. Cached like the model hashes
(``sdbatch.plan.hashing``), by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from sdbatch.errors import RecipeError
from sdbatch.plan import hashing
from sdbatch.plan.extra_networks import Tag, is_lora, parse_tags
from sdbatch.plan.model_folders import find_file
from sdbatch.plan.networks import LoraUse
from sdbatch.plan.weights import FAMILIES, check_weights_file, pickle_keys, safetensors_header

SHORTHASH = 12
# LyCORIS algorithms whose keys diffusers' LoRA loaders cannot convert: a key part -> the name
# LyCORIS algorithms diffusers' LoRA loaders cannot convert (or would drop a part of, as DoRA's
# magnitudes): what follows the module name in a key -> the algorithm
UNSUPPORTED_TYPES = (
    ("hada_", "LoHa"),
    ("lokr_", "LoKr"),
    ("oft_", "OFT"),
    ("lora_mid", "LoCon with CP decomposition (lora_mid)"),
    ("a1.weight", "GLoRA"),
    ("on_input", "(IA)^3"),
    ("w_norm", "norm-layer (w_norm)"),
    ("diff", "full-weight diff"),
    ("dora_scale", "DoRA (dora_scale), whose magnitudes diffusers drops"),
)
SUPPORTED_FORMS = (
    "<lora:NAME>, <lora:NAME:W>, <lora:NAME:TE:UNET>, named te=W / unet=W (and <lyco:...>)"
)


# ------------------------------------------------------------------------------------ tags


def _multiplier(tag: Tag, what: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise RecipeError(
            "prompt", tag.text, f"the {what} multiplier must be a number, not {value!r}; "
            f"forms: {SUPPORTED_FORMS}",
        )  # fmt: skip
    return number


def lora_weights(tag: Tag) -> tuple[str, float, float]:
    """(name, te multiplier, unet multiplier) of one ``<lora:...>`` tag, as A1111 reads it."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in tag.items:
        parts = item.split("=", 2)  # A1111's ExtraNetworkParams: exactly one "=" is named
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    if not positional or not positional[0].strip():
        raise RecipeError("prompt", tag.text, f"a LoRA name first; forms: {SUPPORTED_FORMS}")
    unknown = sorted(set(named) - {"te", "unet"})
    if "dyn" in named or len(positional) > 3:
        raise RecipeError(
            "prompt", tag.text, "no dyn (DyLoRA rank) argument: diffusers' LoRA loaders cannot "
            f"limit a LoRA's rank; forms: {SUPPORTED_FORMS}",
        )  # fmt: skip
    if unknown:
        raise RecipeError(
            "prompt", tag.text, f"named arguments te= and unet= only (not {', '.join(unknown)})"
        )
    te = _multiplier(tag, "te", positional[1]) if len(positional) > 1 else 1.0
    te = _multiplier(tag, "te", named["te"]) if "te" in named else te
    unet = _multiplier(tag, "unet", positional[2]) if len(positional) > 2 else te
    unet = _multiplier(tag, "unet", named["unet"]) if "unet" in named else unet
    return positional[0], te, unet


def lora_tags(prompt: str) -> list[tuple[Tag, str, float, float]]:
    """(tag, name, te, unet) for each LoRA / LyCORIS tag of ``prompt``, in order."""
    return [(t, *lora_weights(t)) for t in parse_tags(prompt) if is_lora(t)]


# ----------------------------------------------------------------------------------- hashes


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors header ({} when it has none)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def addnet_hash(path: str | os.PathLike) -> str:
    """kohya's hash of a safetensors file: sha256 of everything after the header."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + size)
        while block := f.read(hashing.CHUNK):
            h.update(block)
    return h.hexdigest()


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's short hash of a LoRA file (see the module docstring): 12 hex digits."""
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        given = safetensors_metadata(p).get("sshs_model_hash", "")
        return (given or hashing.cached_sha256(p, "addnet", addnet_hash))[:SHORTHASH]
    return hashing.cached_sha256(p)[:SHORTHASH]


# --------------------------------------------------------------------- what a file holds


def lora_keys(path: Path) -> tuple[dict[str, list], dict[str, str]]:
    """(tensor name -> shape, metadata) of a LoRA file; pickles give names only (no shapes)."""
    if path.suffix.lower() == ".safetensors":
        header = safetensors_header(path)
        shapes = {k: v.get("shape") for k, v in header.items() if isinstance(v, dict)}
        return shapes, safetensors_metadata(path)
    return dict.fromkeys(pickle_keys(path)), {}


def lora_type_problem(keys: Mapping[str, object]) -> str | None:
    """Why diffusers cannot load these keys (a LyCORIS type it does not convert), or None."""
    ends = {k.split(".", 1)[1] for k in keys if "." in k and k.startswith(("lora_", "lycoris_"))}
    for part, name in UNSUPPORTED_TYPES:
        if any(end.startswith(part) for end in ends):
            return (
                f"a LoRA (lora_down/lora_up) or LoCon file; this is LyCORIS {name}, which "
                f"diffusers' LoRA loaders cannot convert"
            )
    known = ("lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up", "lora_linear")
    if not any(part in k for k in keys for part in known):
        return "a LoRA file (no lora_down/lora_up or lora_A/lora_B weights found in it)"
    return None


CROSS_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # the text width cross-attention reads


def _cross_attention_dim(keys: Mapping[str, object]) -> int | None:
    """The input width of a cross-attention key projection's LoRA (``attn2`` ``to_k``)."""
    for k, shape in keys.items():
        low = k.replace(".", "_")
        down = any(part in low for part in ("lora_down", "lora_A", "lora_linear_layer_down"))
        cross_k = "attn2" in low and "to_k" in low
        if cross_k and down and isinstance(shape, list) and len(shape) == 2:
            return shape[1]
    return None


def lora_family(keys: Mapping[str, object], meta: Mapping[str, str]) -> str | None:
    """``sd1``, ``sd2`` or ``sdxl`` from a LoRA's metadata and key names, None when they do
    not say (a UNet-only LoRA in diffusers' layout: the loader checks its shapes)."""
    base = meta.get("ss_base_model_version", "")
    if base.startswith("sdxl_"):
        return "sdxl"
    if meta.get("ss_v2") == "True" or base.startswith("sd_v2"):
        return "sd2"

    cross = CROSS_DIMS.get(_cross_attention_dim(keys))
    if cross:
        return cross

    def has(part: str) -> bool:
        return any(part in k for k in keys)

    # SDXL: a second text encoder, or the UNet's SGM block names (kohya's SDXL layout); a lone
    # lora_te1_ is no sign (diffusers' kohya export names SD 1.x's one text encoder so)
    if has("lora_te2_") or has("text_encoder_2.") or has("lora_unet_input_blocks_"):
        return "sdxl"
    if has("lora_unet_output_") or has("lora_unet_middle_block"):
        return "sdxl"
    if has("lora_te_") or has("lora_te1_") or has("lora_unet_down_blocks_"):
        return "sd1"
    if base.startswith("sd_v1"):
        return "sd1"
    return None


def check_lora_file(path: Path, tag: str, family: str, allow_pickle: bool) -> None:
    """The weights policy, then the LyCORIS type and the model family: one error line each."""
    check_weights_file(path, "prompt", allow_pickle)
    keys, meta = lora_keys(path)
    problem = lora_type_problem(keys)
    if problem:
        raise RecipeError("prompt", tag, f"{problem} ({path.name})")
    made_for = lora_family(keys, meta)
    if made_for is not None and made_for != family:
        names = {**FAMILIES, "sd2": "SD 2.x"}
        raise RecipeError(
            "prompt", tag, f"a LoRA for {names[family]} models: {path.name} is a "
            f"{names[made_for]} LoRA, and the model is {names[family]}",
        )  # fmt: skip


def resolve_loras(
    prompt: str, family: str, folders: Mapping[str, object] | None, allow_pickle: bool
) -> tuple[LoraUse, ...]:
    """The LoRA files ``prompt``'s tags name, checked and hashed, one entry per file (two tags
    of one file add their multipliers, as A1111 applies both)."""
    uses: dict[str, LoraUse] = {}
    checked: set[Path] = set()
    for tag, name, te, unet in lora_tags(prompt):
        path = find_file("lora", name, folders, "prompt")
        if path not in checked:
            check_lora_file(path, tag.text, family, allow_pickle)
            checked.add(path)
        key = str(path)
        old = uses.get(key)
        if old is not None:
            te, unet = old.te_weight + te, old.unet_weight + unet
            name = old.name
        uses[key] = LoraUse(name, key, lora_hash(path), te, unet)
    return tuple(uses.values())


# ------------------------------------------------------------------------------- replay


def find_lora(
    name: str, want: str, folders: Mapping[str, object] | None = None, env=None
) -> tuple[str | None, str]:
    """The LoRA folder's name for a ``Lora hashes`` entry: by hash first (the file whose name
    matches is hashed first, then the others), then by name alone. (name or None, a note for
    the user when the match is not exact, else "")."""
    from sdbatch.plan.model_folders import folders_of, list_files, match_name

    roots = folders_of("lora", folders, env)
    if not roots:
        return None, "no LoRA folder is set (folders.lora, SDBATCH_LORA or SDBATCH_A1111)"
    files = list_files("lora", folders, env)
    try:
        named: Path | None = match_name(files, name, "prompt", "", (".safetensors",))
    except RecipeError:
        named = None

    def short(path: Path) -> str:
        try:
            return lora_hash(path)
        except (OSError, ValueError):
            return ""

    if named is not None and short(named) == want:
        return name, ""
    stems = [k.rsplit("/", 1)[-1] for k in files]
    for key, path in files.items():
        if path != named and short(path) == want:
            stem = key.rsplit("/", 1)[-1]
            found = stem if stems.count(stem) == 1 else key  # A1111 names a file by its stem
            return found, f"found by its hash as {found!r}"
    if named is not None:
        return name, f"{named.name} has hash {short(named)}, not {want}: another version"
    where = " or ".join(str(r) for r in roots)
    return None, f"no file with this name or hash in {where}"
