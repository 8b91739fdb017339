"""Which model(s) a recipe means, and their A1111-style identity. Pure: no torch.

`Model` is everything about the weights that decides the pixels; `Model.key` goes into every
job id, and `Model.infotext()` gives the infotext fields A1111 writes for it.

A model is a diffusers folder or a single checkpoint file in the original LDM layout (what
Civitai and A1111's ``models/Stable-diffusion`` hold). The family (SD 1.x or SDXL) is read from
the file's key names without torch: a safetensors file starts with a JSON header listing every
tensor.

Every weight file sdbatch will load goes through one policy, `check_weights_file`, at plan
time, before anything is created: a ``.safetensors`` file must be whole (its header's tensor
offsets inside the file); a pickle (``.ckpt``/``.pt``/``.pth``/``.bin``) can run code when
loaded, so it is refused unless ``model.allow_pickle`` is set. Even then diffusers (and
transformers) load pickles only with ``torch.load(weights_only=True)``, which refuses every
global but tensors, storages, dtypes and a few containers; so its opcodes are read with
``pickletools`` (which parses, never executes) and a pickle that load would refuse is refused
here, with the global it names, instead of failing after the run has started. A diffusers
folder is checked component by component against its ``model_index.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import RecipeError
from sdbatch.models import SHIPPED_CONFIGS_DIR
from sdbatch.plan.model_folders import find_file, folders_of, listing, match_name, safe_name
from sdbatch.plan.weights import (
    CHECKPOINT_SUFFIXES,
    SAFETENSORS,
    SUPPORTED,
    _check_config_folder,
    check_component_weights,
    check_diffusers_folder,
    check_weights_file,
    checkpoint_family,
    folder_family,
    safetensors_header,
)

CONFIGS_DIR = SHIPPED_CONFIGS_DIR
SHIPPED_CONFIGS = {"sd1": CONFIGS_DIR / "sd15", "sdxl": CONFIGS_DIR / "sdxl"}
CONFIG_SUFFIX = ".config"  # <stem>.config/ beside a checkpoint overrides the shipped config
CLIP_SKIP_MAX = 12  # CLIP ViT-L has 12 layers; A1111's slider stops there too


@dataclass(frozen=True, slots=True)
class Model:
    name: str  # A1111's "Model:" (file stem or folder name)
    path: str  # checkpoint file or diffusers folder
    hash: str  # A1111-style 10 hex chars (see sdbatch.plan.hashing)
    family: str = "sd1"  # sd1 | sdxl
    config: str | None = None  # diffusers config folder for a single file; None for a folder
    config_hash: str | None = None  # set only for a <stem>.config/ folder (it can change pixels)
    vae: str | None = None  # VAE override: file or folder
    vae_name: str | None = None  # A1111's "VAE:" (the file name with its extension)
    vae_hash: str | None = None  # A1111's "VAE hash:" (10 hex chars of the file's sha256)
    clip_skip: int = 1  # A1111 numbering: 1 = last CLIP layer
    allow_pickle: bool = False  # model.allow_pickle: how the loader may read weights (not pixels)

    @property
    def key(self) -> str:
        """What of the model goes into job ids; the plain hash when nothing is overridden,
        so job ids of plain models stay what they were. SDXL carries ``text=a1111``: its
        prompts are encoded as A1111 does since then (emphasis, BREAK, an empty negative as
        zeros), which changed pixels, so older SDXL folders re-render instead of mixing."""
        parts = [self.hash]
        if self.family == "sdxl":
            parts.append("text=a1111")
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


CHECKPOINT_NAMES = (
    "a checkpoint in model.dir: its file stem or a path relative to it like anime/AnythingV5 "
    "(no '..' part, not absolute); a file elsewhere goes in model.path"
)


def inside_model_dir(name: object) -> bool:
    """Whether a checkpoint name is a relative path that stays inside ``model.dir``."""
    text = str(name).replace("\\", "/")
    if text.startswith(("/", "~")) or (len(text) > 1 and text[1] == ":"):  # C:\ too
        return False
    return ".." not in text.split("/")


def find_checkpoint(folder: str | os.PathLike, name: object) -> Path:
    """The checkpoint ``name`` means in ``folder``: relative path or file stem, suffix optional,
    case forgiven when that is unambiguous."""
    if not inside_model_dir(name):
        raise RecipeError("model.name", name, CHECKPOINT_NAMES)
    root = Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        allowed = "an existing folder of checkpoints (like A1111's models/Stable-diffusion)"
        raise RecipeError("model.dir", str(folder), allowed)
    found = list_checkpoints(root)
    if not found:
        raise RecipeError("model.dir", str(folder), "a folder holding .safetensors checkpoints")
    return match_name(found, name, "model.name", str(folder), CHECKPOINT_SUFFIXES)


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


def resolve_vae(
    value: object, allow_pickle: bool = False, folders: dict | None = None
) -> tuple[str, str, str]:
    """(path, A1111 name, A1111 hash) of a ``model.vae`` file or diffusers VAE folder, or of
    a VAE named by its file stem in the VAE folder (``vae-ft-mse-840000-ema-pruned``)."""
    from sdbatch.plan.hashing import model_hash

    allowed = (
        "a VAE .safetensors file (LDM or diffusers layout), a diffusers VAE folder, or a "
        "file stem in the VAE folder (folders.vae, or models/VAE below folders.a1111)"
    )
    p = Path(os.path.expanduser(str(value)))
    if not p.exists() and folders_of("vae", folders) and safe_name(value):
        p = find_file("vae", value, folders, "model.vae")
    if p.is_dir():
        sub = p if (p / "config.json").is_file() else p / "vae"
        if not (sub / "config.json").is_file():
            raise RecipeError("model.vae", str(value), f"{allowed} (no config.json in it)")
        check_component_weights(sub, "the VAE folder", p, "model.vae", allow_pickle)
    elif p.is_file():
        if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise RecipeError("model.vae", str(value), allowed)
        check_weights_file(p, "model.vae", allow_pickle)
        if p.suffix.lower() == SAFETENSORS:
            if not any(k.endswith("encoder.conv_in.weight") for k in safetensors_header(p)):
                raise RecipeError("model.vae", str(value), f"{allowed} (no VAE encoder keys)")
    else:
        raise RecipeError("model.vae", str(value), f"{allowed}; no such file or folder")
    return str(p), p.name, model_hash(p)


def _model(p: Path, name: str | None, opts: dict, field: str) -> Model:
    """A Model for an existing file or folder, with the recipe's VAE and clip skip."""
    from sdbatch.plan.hashing import model_hash

    config = config_hash = None
    allow_pickle = opts["allow_pickle"]
    if p.is_dir():
        family = folder_family(p, field)
        skip = ("vae",) if opts["vae"] else ()  # model.vae replaces the folder's own
        check_diffusers_folder(p, field, allow_pickle, skip)
    else:
        if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise RecipeError(field, str(p), SUPPORTED)
        check_weights_file(p, field, allow_pickle)
        family = checkpoint_family(p, field)
        sibling = p.with_name(p.stem + CONFIG_SUFFIX)
        if (sibling / "model_index.json").is_file():
            _check_config_folder(sibling, field, allow_pickle)
            config, config_hash = str(sibling), model_hash(sibling)
        else:
            config = str(SHIPPED_CONFIGS[family])
    if family == "sdxl" and opts["clip_skip"] != 1:
        allowed = "1 for SDXL checkpoints (A1111 ignores clip skip for SDXL by default)"
        raise RecipeError("model.clip_skip", opts["clip_skip"], allowed)
    vae = opts["vae"] or (None, None, None)
    label = name or (p.name if p.is_dir() else p.stem)
    return Model(
        str(label), str(p), model_hash(p), family, config, config_hash, *vae,
        clip_skip=opts["clip_skip"], allow_pickle=allow_pickle,
    )  # fmt: skip


def _options(model: dict, folders: dict | None = None) -> dict:
    allow_pickle = bool(model.get("allow_pickle") or False)
    vae = model.get("vae")
    return {
        "allow_pickle": allow_pickle,
        "clip_skip": _clip_skip(1 if model.get("clip_skip") is None else model["clip_skip"]),
        "vae": resolve_vae(vae, allow_pickle, folders) if vae not in (None, "") else None,
    }


def resolve_model(model: dict, folders: dict | None = None) -> Model:
    """The model a recipe names with ``model.path``, or the embedded tiny model."""
    from sdbatch.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PATH

    opts = _options(model, folders)
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


def resolve_models(model: dict, folders: dict | None = None) -> list[Model]:
    """The model axis of a recipe: ``model.path`` (or the embedded model), or every
    ``model.name`` looked up in ``model.dir``, in the order written. Without ``model.dir``, a
    ``model.name`` (and no ``model.path``) is looked up in the checkpoints folder of
    ``folders`` (``folders.checkpoints``, or ``models/Stable-diffusion`` below the A1111 root)."""
    folder = model.get("dir")
    if folder in (None, "") and model.get("path") in (None, "") and model.get("name"):
        roots = [r for r in folders_of("checkpoints", folders) if r.is_dir()]
        folder = str(roots[0]) if roots else None
    if folder in (None, ""):
        return [resolve_model(model, folders)]
    if model.get("path") not in (None, ""):
        raise RecipeError("model.dir", str(folder), "leave it unset when model.path is set")
    names = model.get("name")
    names = list(names) if isinstance(names, list | tuple) else [names]
    if not names or any(n in (None, "") for n in names):
        root = Path(os.path.expanduser(str(folder)))
        found = listing(list(list_checkpoints(root))) if root.is_dir() else "none"
        allowed = f"a checkpoint name (or a list) from model.dir; available: {found}"
        raise RecipeError("model.name", model.get("name"), allowed)
    opts = _options(model, folders)
    paths = list(dict.fromkeys(find_checkpoint(folder, n) for n in names))
    return [_model(p, None, opts, "model.name") for p in paths]
