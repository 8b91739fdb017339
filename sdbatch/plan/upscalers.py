"""``hires.upscaler`` names, as A1111 names its upscalers. Pure: no torch.

A1111's built-in upscalers that need no model file (the latent modes, None, Lanczos, Nearest)
run as A1111 runs them. Model upscalers are files in the upscaler folders
(sdbatch.plan.model_folders: ``models/ESRGAN``, ``models/RealESRGAN``): A1111's Real-ESRGAN
names (``R-ESRGAN 4x+`` is ``RealESRGAN_x4plus.pth``) and any ESRGAN-family file by its stem
(``4x-UltraSharp``), which is also what A1111 writes in the infotext. A model file passes the
weights policy (a ``.pth`` is a pickle: model.allow_pickle) and must hold one of the
architectures sdbatch.render.upscalers builds, checked here from its key names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from sdbatch.errors import RecipeError
from sdbatch.plan.model_folders import KINDS, folders_of, list_files, match_name
from sdbatch.plan.weights import SAFETENSORS, check_weights_file, pickle_keys, safetensors_header

FIELD = "hires.upscaler"
# our name -> (torch interpolate mode, antialias): A1111's shared.latent_upscale_modes
LATENT_MODES = {
    "latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS = ("None", "lanczos", "Nearest")  # decode, resize the picture, encode again
INFOTEXT_NAMES = {"latent": "Latent", "lanczos": "Lanczos"}  # the rest are A1111's already
BUILT_IN = (*LATENT_MODES, *PIXEL_UPSCALERS)
_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
# A1111's name -> the file it downloads into models/RealESRGAN (modules/realesrgan_model.py)
REAL_ESRGAN = {
    "R-ESRGAN General 4xV3": f"{_RELEASES}/v0.2.5.0/realesr-general-x4v3.pth",
    "R-ESRGAN General WDN 4xV3": f"{_RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
    "R-ESRGAN AnimeVideo": f"{_RELEASES}/v0.2.5.0/realesr-animevideov3.pth",
    "R-ESRGAN 4x+": f"{_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth",
    "R-ESRGAN 4x+ Anime6B": f"{_RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
    "R-ESRGAN 2x+": f"{_RELEASES}/v0.2.1/RealESRGAN_x2plus.pth",
}
# A1111's other built-in upscalers: other architectures, not built here
NOT_BUILT = ("LDSR", "ScuNET GAN", "ScuNET PSNR", "SwinIR 4x", "DAT x2", "DAT x3", "DAT x4")
# key names of the architectures sdbatch.render.upscalers builds (any one set suffices)
_ARCH_KEYS = (
    ("conv_first.weight", "body.0.rdb1.conv1.weight"),  # Real-ESRGAN RRDBNet
    ("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"),  # ESRGAN (old layout)
    ("conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight"),  # BSRGAN / RealSR
    ("body.0.weight", "body.1.weight"),  # Real-ESRGAN Compact (SRVGGNetCompact)
)


def infotext_name(name: str) -> str:
    """What A1111 writes as ``Hires upscaler``."""
    return INFOTEXT_NAMES.get(name, name)


def accepted() -> str:
    built = ", ".join(infotext_name(n) for n in BUILT_IN)
    return (
        f"one of {built}; {', '.join(REAL_ESRGAN)} (with their files in the upscaler folder); "
        "or an ESRGAN-family model file's stem in the upscaler folder (folders.upscalers, or "
        "models/ESRGAN and models/RealESRGAN below folders.a1111)"
    )


def _closest(want: str, names: list[str]) -> str:
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(want.lower(), list(by_lower), n=1, cutoff=0.4)
    return f"; closest match: {by_lower[close[0]]!r}" if close else ""


def resolve_upscaler(
    value: object, folders: Mapping[str, object] | None, allow_pickle: bool, env=None
) -> tuple[str, str | None, str | None]:
    """(name, file, hash) for ``hires.upscaler``: a built-in's name (``latent`` and
    ``lanczos`` spelled as before, so their job ids stay), or a model upscaler's A1111 name
    with its file and that file's hash; else one error line with the closest name."""
    text = str(value if value is not None else "latent").strip()
    lower = text.lower()
    for name in BUILT_IN:
        if lower in (name.lower(), infotext_name(name).lower()):
            return name, None, None
    for name, url in REAL_ESRGAN.items():
        if lower == name.lower():
            return name, *_model_file(value, Path(url).stem, folders, allow_pickle, env, url)
    for name in NOT_BUILT:
        if lower == name.lower():
            allowed = f"A1111's {name} is an architecture sdbatch does not build; {accepted()}"
            raise RecipeError(FIELD, value, allowed)
    found = list_files("upscalers", folders, env)
    try:
        path = match_name(found, text, FIELD, "", KINDS["upscalers"].suffixes)
    except RecipeError as exc:
        if "ambiguous" in exc.allowed:
            raise
        stems = [k.rsplit("/", 1)[-1] for k in found]
        names = [infotext_name(n) for n in BUILT_IN] + list(REAL_ESRGAN) + stems
        where = _where(folders, env)
        raise RecipeError(FIELD, value, f"{accepted()}{where}{_closest(text, names)}") from None
    label, file, digest = path.stem, *_checked(path, allow_pickle)
    return label, file, digest


def _where(folders, env) -> str:
    roots = folders_of("upscalers", folders, env)
    if not roots:
        return "; no upscaler folder is set"
    files = list_files("upscalers", folders, env)
    listed = ", ".join(k.rsplit("/", 1)[-1] for k in files) or "none"
    return f"; model files in {' or '.join(str(r) for r in roots)}: {listed}"


def _model_file(value, stem: str, folders, allow_pickle: bool, env, url: str):
    """The file of a Real-ESRGAN name: ``<stem>.pth`` (or .safetensors) in the folders."""
    hits = [p for k, p in list_files("upscalers", folders, env).items() if Path(k).name == stem]
    if not hits:
        roots = folders_of("upscalers", folders, env)
        where = " or ".join(str(r) for r in roots) or (
            "the upscaler folder (set folders.upscalers, or folders.a1111)"
        )
        allowed = f"it is {stem}.pth, not found in {where}; A1111 downloads it from {url}"
        raise RecipeError(FIELD, value, allowed)
    return _checked(hits[0], allow_pickle)


def _checked(path: Path, allow_pickle: bool) -> tuple[str, str]:
    """The weights policy, then the architecture from key names (nothing is unpickled)."""
    from sdbatch.plan.hashing import model_hash

    check_weights_file(path, FIELD, allow_pickle)
    keys = safetensors_header(path) if path.suffix.lower() == SAFETENSORS else pickle_keys(path)
    if any(".conv1x1." in k for k in keys) or not any(
        all(k in keys for k in need) for need in _ARCH_KEYS
    ):
        allowed = (
            "an ESRGAN-family upscaler (ESRGAN, Real-ESRGAN RRDBNet or Compact); its keys are "
            "none of these (SwinIR, DAT, HAT, ESRGAN+ and other architectures are not built)"
        )
        raise RecipeError(FIELD, str(path), allowed)
    return str(path), model_hash(path)
