"""Where A1111 keeps its models, and names looked up in those folders by file stem. Pure.

A1111 users already have ``models/Stable-diffusion``, ``models/Lora``, ``embeddings/``,
``models/VAE`` and ``models/ESRGAN`` (``models/RealESRGAN``). One setting, ``folders.a1111``
(or ``SDBATCH_A1111`` for a whole machine), points at such an install root and finds them all;
each kind can also be set on its own (``folders.lora``, ``SDBATCH_LORA``, ...). The recipe or
command line wins over the environment, which wins over the install root.

Names resolve as A1111 resolves them: by file stem, wherever the file sits below the folder
(``<lora:detail:0.7>`` finds ``models/Lora/styles/detail.safetensors``); a path relative to the
folder (``styles/detail``) picks one of two files with the same stem; case is forgiven when that
is unambiguous. An unknown name is one error line listing what is there and the closest name.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import RecipeError

SAFETENSORS = ".safetensors"
MAX_LISTED = 20


@dataclass(frozen=True)
class Kind:
    key: str  # the `folders.<key>` setting
    env: str  # the environment variable for a whole machine
    below_root: tuple[str, ...]  # A1111's folders below its install root
    suffixes: tuple[str, ...]  # file types of this kind; the first wins between two stems
    what: str  # for messages


KINDS: dict[str, Kind] = {
    k.key: k
    for k in (
        Kind(
            "checkpoints", "SDBATCH_CHECKPOINTS", ("models/Stable-diffusion",),
            (SAFETENSORS, ".ckpt", ".pt", ".pth", ".bin"), "checkpoint",
        ),
        Kind(
            "lora", "SDBATCH_LORA", ("models/Lora", "models/LyCORIS"),
            (SAFETENSORS, ".pt", ".ckpt", ".bin"), "LoRA",
        ),
        Kind(
            "embeddings", "SDBATCH_EMBEDDINGS", ("embeddings",),
            (SAFETENSORS, ".pt", ".bin"), "embedding",
        ),
        Kind(
            "vae", "SDBATCH_VAE", ("models/VAE",),
            (SAFETENSORS, ".pt", ".ckpt", ".bin"), "VAE",
        ),
        Kind(
            "upscalers", "SDBATCH_UPSCALERS", ("models/ESRGAN", "models/RealESRGAN"),
            (SAFETENSORS, ".pth", ".pt"), "upscaler model",
        ),
        Kind(
            "controlnet", "SDBATCH_CONTROLNET", ("models/ControlNet",),
            (SAFETENSORS, ".pth", ".pt", ".ckpt", ".bin"), "ControlNet model",
        ),
    )
}  # fmt: skip
ROOT_ENV = "SDBATCH_A1111"


def folders_of(
    kind: str, folders: Mapping[str, object] | None, env: Mapping[str, str] | None = None
) -> list[Path]:
    """The folders searched for ``kind``, in order (they need not exist).

    ``folders`` is the config's ``folders`` section as a mapping (``a1111`` plus one key per
    kind). A kind set explicitly (config, then environment) is searched alone; otherwise
    A1111's folders below the install root (config, then ``SDBATCH_A1111``).
    """
    k = KINDS[kind]
    folders = folders or {}
    env = os.environ if env is None else env
    own = folders.get(k.key) or env.get(k.env)
    if own not in (None, ""):
        return [Path(os.path.expanduser(str(own)))]
    root = folders.get("a1111") or env.get(ROOT_ENV)
    if root in (None, ""):
        return []
    base = Path(os.path.expanduser(str(root)))
    return [base / sub for sub in k.below_root]


def list_files(kind: str, folders: Mapping[str, object] | None, env=None) -> dict[str, Path]:
    """Name -> file for every file of ``kind`` in its folders. Names are paths relative to
    their folder without the suffix (``styles/detail``); the earlier folder and, between two
    files of one name, the earlier suffix (``.safetensors`` first) win."""
    k = KINDS[kind]
    rank = {s: i for i, s in enumerate(k.suffixes)}
    found: dict[str, Path] = {}
    for root in folders_of(kind, folders, env):
        if not root.is_dir():
            continue
        here_found: dict[str, Path] = {}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = Path(dirpath)
            for fn in sorted(filenames):
                p = here / fn
                suffix = p.suffix.lower()
                if suffix not in rank or fn.startswith("."):
                    continue
                name = p.relative_to(root).with_suffix("").as_posix()
                old = here_found.get(name)
                if old is None or rank[suffix] < rank[old.suffix.lower()]:
                    here_found[name] = p
        for name, p in here_found.items():
            found.setdefault(name, p)
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def safe_name(name: object) -> bool:
    """A name that stays inside its folder: relative, no ``..`` part, not ``~``/``C:``."""
    text = str(name).replace("\\", "/")
    if not text or text.startswith(("/", "~")) or (len(text) > 1 and text[1] == ":"):
        return False
    return ".." not in text.split("/")


def listing(names: list[str]) -> str:
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" ({more} more)" if more > 0 else "")


def match_name(
    found: Mapping[str, Path], name: object, field: str, where: str, suffixes: tuple[str, ...]
) -> Path:
    """The file ``name`` means among ``found`` (see `list_files`): relative path or stem,
    suffix optional, case forgiven when unambiguous; else a `RecipeError` on ``field``."""
    want = str(name).replace("\\", "/").strip("/")
    if Path(want).suffix.lower() in suffixes:
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
            raise RecipeError(field, name, f"ambiguous; write one of: {', '.join(hits)}")
    names = list(found)
    allowed = f"not in {where}; available: {listing(names) or 'none'}"
    stems = {k.rsplit("/", 1)[-1]: k for k in names}
    close = difflib.get_close_matches(want, [*names, *stems], n=1, cutoff=0.4)
    if close:
        allowed += f"; closest match: {stems.get(close[0], close[0])!r}"
    raise RecipeError(field, name, allowed)


def find_file(
    kind: str, name: object, folders: Mapping[str, object] | None, field: str, env=None
) -> Path:
    """The file of ``kind`` called ``name`` (A1111's lookup by stem), or one error line."""
    k = KINDS[kind]
    if not safe_name(name):
        allowed = f"a {k.what} name: its file stem or a path relative to its folder (no '..')"
        raise RecipeError(field, name, allowed)
    roots = folders_of(kind, folders, env)
    if not roots:
        allowed = (
            f"a {k.what} file needs a folder: set folders.{k.key} (or {k.env}), or "
            f"folders.a1111 (or {ROOT_ENV}) to an A1111 install"
        )
        raise RecipeError(field, name, allowed)
    where = " or ".join(str(r) for r in roots)
    return match_name(list_files(kind, folders, env), name, field, where, k.suffixes)
