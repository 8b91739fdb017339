"""Which model(s) a recipe means, and their A1111-style identity. Pure: no torch.

`Model` is everything about the weights that decides the pixels; `Model.key` goes into every
job id, and `Model.infotext()` gives the infotext fields A1111 writes for it.

A model is a diffusers folder or a single checkpoint file in the original LDM layout (what
Civitai and A1111's ``models/Stable-diffusion`` hold). The family (SD 1.x or SDXL) is read from
the file's key names without torch: a safetensors file starts with a JSON header listing every
tensor. Pickle checkpoints (``.ckpt``/``.pt``/``.bin``) can run code when loaded, so they are
refused unless ``model.allow_pickle`` is set; even then their keys are read with ``pickletools``
(which parses, never executes).
"""

from __future__ import annotations

import difflib
import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import RecipeError

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = (SAFETENSORS, *PICKLE_SUFFIXES)
FAMILIES = {"sd1": "SD 1.x", "sdxl": "SDXL"}
# diffusers pipeline class (model_index.json) -> family
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd1", "StableDiffusionXLPipeline": "sdxl"}
# Config-only diffusers folders (no weights) that let from_single_file work offline.
CONFIGS_DIR = Path(__file__).resolve().parent / "models" / "configs"
SHIPPED_CONFIGS = {"sd1": CONFIGS_DIR / "sd15", "sdxl": CONFIGS_DIR / "sdxl"}
CONFIG_SUFFIX = ".config"  # <stem>.config/ beside a checkpoint overrides the shipped config
SUPPORTED = (
    "an SD 1.x or SDXL base checkpoint (.safetensors in the original LDM layout, as A1111 and "
    "Civitai use) or a diffusers folder"
)
CLIP_SKIP_MAX = 12  # CLIP ViT-L has 12 layers; A1111's slider stops there too
MAX_LISTED = 20


@dataclass(frozen=True, slots=True)
class Model:
    name: str  # A1111's "Model:" (file stem or folder name)
    path: str  # checkpoint file or diffusers folder
    hash: str  # A1111-style 10 hex chars (see sdbatch.hashing)
    family: str = "sd1"  # sd1 | sdxl
    config: str | None = None  # diffusers config folder for a single file; None for a folder
    config_hash: str | None = None  # set only for a <stem>.config/ folder (it can change pixels)
    vae: str | None = None  # VAE override: file or folder
    vae_name: str | None = None  # A1111's "VAE:" (the file name with its extension)
    vae_hash: str | None = None  # A1111's "VAE hash:" (10 hex chars of the file's sha256)
    clip_skip: int = 1  # A1111 numbering: 1 = last CLIP layer

    @property
    def key(self) -> str:
        """What of the model goes into job ids; the plain hash when nothing is overridden,
        so job ids of plain models stay what they were."""
        parts = [self.hash]
        if self.config_hash:
            parts.append(f"config={self.config_hash}")
        if self.vae:
            parts.append(f"vae={self.vae_hash}")
        if self.clip_skip != 1:
            parts.append(f"clip_skip={self.clip_skip}")
        return " ".join(parts)

    def infotext(self) -> dict[str, object]:
        """A1111's infotext fields for this model, in A1111's order (all of them sit between
        ``Size`` and ``Version`` there; ``Clip skip`` only when it is above 1)."""
        info: dict[str, object] = {"Model hash": self.hash, "Model": self.name}
        if self.vae:
            info["VAE hash"] = self.vae_hash
            info["VAE"] = self.vae_name
        if self.clip_skip > 1:
            info["Clip skip"] = self.clip_skip
        return info


# ---------------------------------------------------------------------------- file inspection


def safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}: the JSON header every safetensors file
    starts with (8 bytes little-endian length, then JSON). Raises ValueError if it is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (size,) = struct.unpack("<Q", head)
        if size > min(os.fstat(f.fileno()).st_size - 8, 1 << 28):
            raise ValueError("header length past the end of the file")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def pickle_keys(path: str | os.PathLike) -> set[str]:
    """The strings in a torch pickle (its state-dict keys among them), without unpickling:
    ``pickletools.genops`` only parses opcodes. Empty when the file cannot be parsed."""
    import pickletools
    import zipfile

    strings: set[str] = set()

    def scan(stream) -> None:
        for _op, arg, _pos in pickletools.genops(stream):
            if isinstance(arg, str):
                strings.add(arg)

    try:
        if zipfile.is_zipfile(path):  # torch >= 1.6: a zip holding <name>/data.pkl
            with zipfile.ZipFile(path) as z:
                member = next(n for n in z.namelist() if n.endswith("data.pkl"))
                scan(io.BytesIO(z.read(member)))
        else:  # legacy: magic, protocol, sys info, then the object itself, one pickle each
            with open(path, "rb") as f:
                for _ in range(4):
                    scan(f)
    except Exception:  # a truncated or foreign file: whatever was read so far
        pass
    return strings


def checkpoint_family(path: str | os.PathLike, field: str = "model.path") -> str:
    """``sd1`` or ``sdxl`` from a single file's key names; anything else is a RecipeError."""
    p = Path(path)
    shapes: dict[str, list] = {}
    if p.suffix.lower() == SAFETENSORS:
        try:
            header = safetensors_header(p)
        except (OSError, ValueError) as exc:
            raise RecipeError(field, str(path), f"a readable .safetensors file ({exc})") from None
        keys: set[str] | dict = header
        shapes = {k: v.get("shape") for k, v in header.items() if isinstance(v, dict)}
    else:
        keys = pickle_keys(p)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.1.model.") and has("model.diffusion_model."):
        family = "sdxl"
    elif has("cond_stage_model.transformer.") and has("model.diffusion_model."):
        family = "sd1"
    else:
        raise RecipeError(field, str(path), f"{_what_is(has)}; supported: {SUPPORTED}")
    shape = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    in_channels = shape[1] if isinstance(shape, list) and len(shape) == 4 else 4
    if in_channels != 4:
        raise RecipeError(
            field, str(path), f"its UNet takes {in_channels} input channels (an inpainting or "
            f"instruct model); supported: SD 1.x or SDXL text-to-image checkpoints (4 channels)",
        )  # fmt: skip
    return family


def _what_is(has) -> str:
    """A short guess at what an unsupported file holds, for the error line."""
    if has("cond_stage_model.model."):
        return "it looks like an SD 2.x checkpoint (OpenCLIP text encoder)"
    if has("conditioner.embedders.0.model."):
        return "it looks like an SDXL refiner checkpoint"
    if has("lora_") or has("lycoris_"):
        return "it looks like a LoRA, not a checkpoint"
    if has("encoder.conv_in.") or has("first_stage_model.") or has("decoder.conv_out."):
        return "it looks like a VAE (use model.vae)"
    if has("down_blocks.") or has("text_model."):
        return "it holds one diffusers component, not a whole checkpoint"
    return "no SD 1.x (cond_stage_model.transformer.*) or SDXL (conditioner.embedders.1.*) keys"


def folder_family(folder: Path, field: str = "model.path") -> str:
    """The family of a diffusers folder, from model_index.json's pipeline class."""
    try:
        cls = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        raise RecipeError(field, str(folder), "a diffusers folder with model_index.json") from None
    if cls not in PIPELINE_FAMILIES:
        allowed = ", ".join(PIPELINE_FAMILIES)
        raise RecipeError(field, str(folder), f"a diffusers folder of {allowed} (found {cls})")
    return PIPELINE_FAMILIES[cls]


def _refuse_pickle(path: Path, field: str, allow_pickle: bool) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise RecipeError(
            field, str(path), "pickle checkpoints can run code when loaded; convert it to "
            ".safetensors or set model.allow_pickle: true",
        )  # fmt: skip


# ------------------------------------------------------------------------------ model folder


def list_checkpoints(folder: str | os.PathLike) -> dict[str, Path]:
    """Name -> checkpoint in a folder like A1111's ``models/Stable-diffusion``: names are
    paths relative to the folder without suffix (``anime/AnythingV5``); ``.safetensors`` wins
    over a pickle of the same name; a subfolder with model_index.json is a diffusers model."""
    root = Path(folder)
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here != root and "model_index.json" in filenames:
            found[here.relative_to(root).as_posix()] = here
            dirnames[:] = []
            continue
        skip = (".",)  # hidden folders; <stem>.config/ folders are configs, not models
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(skip) and not d.endswith(CONFIG_SUFFIX)
        )
        for fn in sorted(filenames):
            p = here / fn
            if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
                continue
            name = p.relative_to(root).with_suffix("").as_posix()
            if name not in found or p.suffix.lower() == SAFETENSORS:
                found[name] = p
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def _listing(names: list[str]) -> str:
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" ({more} more)" if more > 0 else "")


def find_checkpoint(folder: str | os.PathLike, name: object) -> Path:
    """The checkpoint ``name`` means in ``folder``: relative path or file stem, suffix optional,
    case forgiven when that is unambiguous."""
    root = Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        allowed = "an existing folder of checkpoints (like A1111's models/Stable-diffusion)"
        raise RecipeError("model.dir", str(folder), allowed)
    found = list_checkpoints(root)
    if not found:
        raise RecipeError("model.dir", str(folder), "a folder holding .safetensors checkpoints")
    want = str(name).replace("\\", "/").strip("/")
    if Path(want).suffix.lower() in CHECKPOINT_SUFFIXES:
        want = want[: -len(Path(want).suffix)]
    for match in (
        lambda k: k == want,
        lambda k: k.rsplit("/", 1)[-1] == want,
        lambda k: k.lower() == want.lower(),
        lambda k: k.rsplit("/", 1)[-1].lower() == want.lower(),
    ):
        hits = [k for k in found if match(k)]
        if len(hits) == 1:
            return found[hits[0]]
        if len(hits) > 1:
            raise RecipeError("model.name", name, f"ambiguous; write one of: {', '.join(hits)}")
    names = list(found)
    allowed = f"not in {folder}; available: {_listing(names)}"
    stems = {k.rsplit("/", 1)[-1]: k for k in names}
    close = difflib.get_close_matches(want, [*names, *stems], n=1, cutoff=0.4)
    if close:
        allowed += f"; closest match: {stems.get(close[0], close[0])!r}"
    raise RecipeError("model.name", name, allowed)


# -------------------------------------------------------------------------------- resolution


def _clip_skip(value: object) -> int:
    allowed = f"an integer in 1..{CLIP_SKIP_MAX} (A1111 numbering: 1 = last CLIP layer)"
    if isinstance(value, bool):
        raise RecipeError("model.clip_skip", value, allowed)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RecipeError("model.clip_skip", value, allowed) from None
    if not number.is_integer() or not 1 <= number <= CLIP_SKIP_MAX:
        raise RecipeError("model.clip_skip", value, allowed)
    return int(number)


def resolve_vae(value: object, allow_pickle: bool = False) -> tuple[str, str, str]:
    """(path, A1111 name, A1111 hash) of a ``model.vae`` file or diffusers VAE folder."""
    from sdbatch.hashing import model_hash

    allowed = "a VAE .safetensors file (LDM or diffusers layout) or a diffusers VAE folder"
    p = Path(os.path.expanduser(str(value)))
    if p.is_dir():
        if not ((p / "config.json").is_file() or (p / "vae" / "config.json").is_file()):
            raise RecipeError("model.vae", str(value), f"{allowed} (no config.json in it)")
    elif p.is_file():
        _refuse_pickle(p, "model.vae", allow_pickle)
        if p.suffix.lower() == SAFETENSORS:
            try:
                keys = safetensors_header(p)
            except (OSError, ValueError) as exc:
                raise RecipeError("model.vae", str(value), f"{allowed} ({exc})") from None
            if not any(k.endswith("encoder.conv_in.weight") for k in keys):
                raise RecipeError("model.vae", str(value), f"{allowed} (no VAE encoder keys)")
        elif p.suffix.lower() not in PICKLE_SUFFIXES:
            raise RecipeError("model.vae", str(value), allowed)
    else:
        raise RecipeError("model.vae", str(value), f"{allowed}; no such file or folder")
    return str(p), p.name, model_hash(p)


def _model(p: Path, name: str | None, opts: dict, field: str) -> Model:
    """A Model for an existing file or folder, with the recipe's VAE and clip skip."""
    from sdbatch.hashing import model_hash

    config = config_hash = None
    if p.is_dir():
        family = folder_family(p, field)
    else:
        if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise RecipeError(field, str(p), SUPPORTED)
        _refuse_pickle(p, field, opts["allow_pickle"])
        family = checkpoint_family(p, field)
        sibling = p.with_name(p.stem + CONFIG_SUFFIX)
        if (sibling / "model_index.json").is_file():
            config, config_hash = str(sibling), model_hash(sibling)
        else:
            config = str(SHIPPED_CONFIGS[family])
    if family == "sdxl" and opts["clip_skip"] != 1:
        allowed = "1 for SDXL checkpoints (A1111 ignores clip skip for SDXL by default)"
        raise RecipeError("model.clip_skip", opts["clip_skip"], allowed)
    vae = opts["vae"] or (None, None, None)
    label = name or (p.name if p.is_dir() else p.stem)
    return Model(
        str(label), str(p), model_hash(p), family, config, config_hash, *vae, opts["clip_skip"]
    )


def _options(model: dict) -> dict:
    allow_pickle = bool(model.get("allow_pickle") or False)
    vae = model.get("vae")
    return {
        "allow_pickle": allow_pickle,
        "clip_skip": _clip_skip(1 if model.get("clip_skip") is None else model["clip_skip"]),
        "vae": resolve_vae(vae, allow_pickle) if vae not in (None, "") else None,
    }


def resolve_model(model: dict) -> Model:
    """The model a recipe names with ``model.path``, or the embedded tiny model."""
    from sdbatch.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PATH

    opts = _options(model)
    path, name = model.get("path"), model.get("name")
    if isinstance(name, list | tuple):
        raise RecipeError("model.name", name, "one name with model.path; a list needs model.dir")
    if path in (None, ""):
        return _model(EMBEDDED_MODEL_PATH, name or EMBEDDED_MODEL_NAME, opts, "model.path")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise RecipeError("model.path", str(path), f"an existing file or folder: {SUPPORTED}")
    if p.is_dir() and not (p / "model_index.json").is_file():
        raise RecipeError("model.path", str(path), "a diffusers folder with model_index.json")
    return _model(p, name, opts, "model.path")


def resolve_models(model: dict) -> list[Model]:
    """The model axis of a recipe: ``model.path`` (or the embedded model), or every
    ``model.name`` looked up in ``model.dir``, in the order written."""
    folder = model.get("dir")
    if folder in (None, ""):
        return [resolve_model(model)]
    if model.get("path") not in (None, ""):
        raise RecipeError("model.dir", str(folder), "leave it unset when model.path is set")
    names = model.get("name")
    names = list(names) if isinstance(names, list | tuple) else [names]
    if not names or any(n in (None, "") for n in names):
        root = Path(os.path.expanduser(str(folder)))
        found = _listing(list(list_checkpoints(root))) if root.is_dir() else "none"
        allowed = f"a checkpoint name (or a list) from model.dir; available: {found}"
        raise RecipeError("model.name", model.get("name"), allowed)
    opts = _options(model)
    paths = list(dict.fromkeys(find_checkpoint(folder, n) for n in names))
    return [_model(p, None, opts, "model.name") for p in paths]
