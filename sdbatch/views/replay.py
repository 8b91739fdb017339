"""A1111 infotext -> an sdbatch recipe that plans the same job again (``sdbatch-tools replay``).

Pure Python (no torch): it reads text and writes YAML. ``FIELDS`` is the one table saying what
happens to each infotext key, so a field sdbatch learns to reproduce moves from "comment" to
"mapped" by flipping ``mapped`` on its line. Nothing is dropped silently: a field (or a value,
such as an ESRGAN upscaler) that is not reproduced becomes a YAML comment and a warning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdbatch.errors import RecipeError, UserError
from sdbatch.outputs.infotext import (
    Infotext,
    PngTextError,
    format_params,
    parse_infotext,
    read_png_infotext,
)
from sdbatch.outputs.infotext import parse_size as parse_infotext_size
from sdbatch.plan.checkpoints import CHECKPOINT_NAMES, inside_model_dir
from sdbatch.plan.controlnet_infotext import is_infotext_unit, units_from_infotext

__all__ = [
    "FIELDS",
    "Field",
    "ReplayError",
    "ReplayRecipe",
    "a1111_sampler",
    "default_name",
    "one_line",
    "read_infotext_file",
    "recipe_from_infotext",
]


class ReplayError(UserError):
    """An image sdbatch cannot replay; one line naming the file and the field."""


@dataclass(frozen=True)
class Field:
    """What becomes of one infotext key in a replayed recipe."""

    target: str | None = None  # dotted recipe key, now or once sdbatch can reproduce it
    mapped: bool = False  # True: written to `target`; False: a "not reproduced" comment + warning
    convert: Callable[[str], Any] = str  # infotext text -> recipe value (when mapped)
    default: str | None = None  # the value that means what sdbatch does anyway: no warning
    info: bool = False  # does not change pixels: a plain comment, no warning
    note: str = ""  # why it is not reproduced (ends the warning)


def _number(text: str | float) -> int | float:
    """``7`` -> 7 and ``7.5`` -> 7.5, so the YAML reads like the infotext."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _int(text: str, lo: int = -(2**63), hi: int = 2**63) -> int:
    value = float(text)
    if not value.is_integer() or not lo <= value <= hi:
        raise ValueError(text)
    return int(value)


def _unit(text: str) -> int | float:
    """A strength in 0..1 (variation seed strength, denoising strength)."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise ValueError(text)
    return value


def _lower(text: str) -> str:
    return text.strip().lower()


def _upscaler(text: str) -> str:
    """A1111's ``Hires upscaler`` as the recipe spells it (``Latent`` -> ``latent``)."""
    from sdbatch.plan.upscalers import BUILT_IN, REAL_ESRGAN, infotext_name

    name = text.strip()
    for known in (*BUILT_IN, *REAL_ESRGAN):
        if name.lower() in (known.lower(), infotext_name(known).lower()):
            return known
    return name  # an ESRGAN-family file's stem (4x-UltraSharp)


def _built_upscaler(name: str) -> bool:
    from sdbatch.plan.upscalers import NOT_BUILT

    return bool(name) and name.lower() not in {n.lower() for n in NOT_BUILT}


# Values sdbatch has for fields whose other values stay warned comments (LDSR, NV noise).
_CHOICES = {"hires.upscaler": _built_upscaler, "rng": ("cpu", "gpu").__contains__}
_NV = (
    "sdbatch has no CPU copy of NVIDIA's generator; the recipe says rng: gpu, which draws the "
    "same noise on an NVIDIA GPU"
)

_OVERRIDE = "sdbatch runs every schedule type on the model's own sigma range and rho"

# Keys A1111 (1.5-1.10) and sdbatch write, in A1111's order. Sampler, Schedule type, Size and
# Model have their own code below; every key not listed here is kept as a warned comment.
FIELDS: dict[str, Field] = {
    "Steps": Field("steps", True, _int),
    "Sampler": Field("sampler", True),
    "Schedule type": Field("schedule_type", True),  # with Sampler (sdbatch.plan.samplers)
    "Schedule max sigma": Field(default="0", note=_OVERRIDE),
    "Schedule min sigma": Field(default="0", note=_OVERRIDE),
    "Schedule rho": Field(default="0", note=_OVERRIDE),
    "Discard penultimate sigma": Field(
        note="sdbatch drops it only where A1111 always does (DPM2, DPM2 a, DPM++ 3M SDE)"
    ),
    "CFG scale": Field("cfg", True, _number),
    "Seed": Field("seeds", True, _int),
    "Size": Field("size", True),
    "Model hash": Field(info=True),  # checked against the model, written beside model.name
    "Model": Field("model.name", True),
    "VAE hash": Field(info=True),  # own code: _vae
    "VAE": Field(info=True),
    "Variation seed": Field("subseed", True, lambda t: _int(t, 0, 2**32 - 1)),
    "Variation seed strength": Field("subseed_strength", True, _unit),
    "Seed resize from": Field(note="variation seed resizing"),
    "Denoising strength": Field("hires.denoise", True, _unit),  # only beside Hires upscale
    "Hires upscale": Field("hires.scale", True, _number),
    "Hires resize": Field(note="hires fix to a fixed size"),
    "Hires steps": Field("hires.steps", True, lambda t: _int(t, 0, 1000)),
    "Hires upscaler": Field(
        "hires.upscaler",
        True,
        _upscaler,
        note="an architecture sdbatch does not build (it has the ESRGAN family); the recipe "
        "uses latent",
    ),
    # img2img / inpainting (sdbatch.plan.image_inputs); "Denoising strength" without "Hires
    # upscale" is img2img's (recipe_from_infotext)
    "Mask blur": Field("mask_blur", True, lambda t: _int(t, 0, 64)),
    "Mask mode": Field("inpainting_mask_invert", True),
    "Inpaint area": Field("inpaint_full_res", True, lambda t: t.strip() == "Only masked"),
    "Masked area padding": Field("inpaint_full_res_padding", True, lambda t: _int(t, 0, 256)),
    "Masked content": Field("inpainting_fill", True),
    "Clip skip": Field("model.clip_skip", True, _int),
    "RNG": Field("rng", True, _lower, note=_NV),  # A1111: GPU (not written), CPU or NV
    "ENSD": Field(default="0", note="eta noise seed delta"),
    "Emphasis": Field(default="Original"),
    "Lora hashes": Field(info=True),  # own code: names found in the LoRA folder (_loras)
    "TI hashes": Field(info=True),  # own code: files found in the embeddings folder (_embeddings)
    "Prompt S/R": Field(note="an X/Y/Z plot axis; this image's prompt is already replaced"),
    "Version": Field(info=True),
}
# How users point sdbatch at the checkpoint an infotext names (A1111's "Model:" is its stem).
MODEL_SETTING = "model.dir"
MODEL_HINT = f"set {MODEL_SETTING} to the folder holding this checkpoint (or model.path to it)"
_OWN_CODE = {"Sampler", "Schedule type", "Size", "Model", "Model hash", "Lora hashes"}
_OWN_CODE |= {"VAE", "VAE hash"}  # _vae
_OWN_CODE |= {"TI hashes"}  # _embeddings
_HIRES_PASS = {"Denoising strength", "Hires steps", "Hires upscaler"}  # need Hires upscale
_REQUIRED = ("Steps", "Sampler", "CFG scale", "Seed", "Size")


def a1111_sampler(params: Mapping[str, str]) -> str:
    """The sampler A1111 ran, as sdbatch names the job ("DPM++ 2M Karras"; a bare name is the
    uniform schedule): ``Sampler: DPM++ 2M, Schedule type: Automatic`` (1.9+) is "DPM++ 2M
    Karras", as is ``Sampler: DPM++ 2M Karras`` (< 1.9), while a < 1.9 ``Sampler: DPM++ 2M``
    is "DPM++ 2M". See sdbatch.plan.samplers.from_infotext; a RecipeError for a sampler or
    schedule type sdbatch cannot run."""
    from sdbatch.plan.samplers import from_infotext

    sampler = from_infotext(
        params.get("Sampler", "").strip(), params.get("Schedule type"), params.get("Version")
    )
    return sampler.name


@dataclass
class ReplayRecipe:
    """A recipe for one image: values in write order, plus what could not be reproduced."""

    name: str
    values: dict[str, Any]
    source: str = ""
    model_note: str = ""  # comment beside model.name (the hash to look for)
    comments: list[str] = field(default_factory=list)  # trailing "# ..." lines
    warnings: list[str] = field(default_factory=list)  # one line each, for stderr

    def to_yaml(self, recipe_id: str | None = None) -> str:
        """The recipe file; ``recipe_id`` is the file's stem (what ``+recipe=`` names). Text
        from the image (its file name, field names and values) goes into comments escaped, so
        no line break YAML knows (\\n, \\r, \\x85, \\u2028, \\u2029) can end a comment."""
        rid = recipe_id or self.name
        lines = [
            f"# Replayed from {one_line(self.source or 'infotext')} by sdbatch-tools replay.",
            f"# Run: SDBATCH_RECIPES=<this folder> sdbatch +recipe={rid}",
        ]
        note = one_line(self.model_note)
        for key, value in self.values.items():
            if isinstance(value, dict):
                lines.append(f"{key}:")
                for sub, v in value.items():
                    beside = key == "model" and sub == "name" and note
                    lines.append(f"  {sub}: {_scalar(v)}" + (f"  # {note}" if beside else ""))
            elif isinstance(value, list):  # controlnet units: one flow-style line
                flow = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
                lines.append(f"{key}: {flow.strip()}")  # no "${" in them (units_from_infotext)
            else:
                lines.append(f"{key}: {_scalar(value)}")
        if note and "name" not in self.values.get("model", {}):
            lines.append(f"# {note}")
        lines.extend(f"# {one_line(c)}" for c in self.comments)
        return "\n".join(lines) + "\n"


_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


def one_line(text: str) -> str:
    """Text from an image made safe for one line, of a YAML comment or of the terminal: control
    characters (escape sequences included) and line separators are written as escapes
    (``\\u2028``), which a reader sees and neither YAML nor the terminal acts on."""
    return _UNSAFE.sub(lambda m: json.dumps(m.group())[1:-1], text)


def _escape_interpolation(text: str) -> str:
    """OmegaConf reads ``${...}`` as an interpolation; ``\\${`` (backslashes doubled) is literal.
    Matches start only where a run of backslashes starts, so a long run costs linear time."""
    return re.sub(r"(?<!\\)(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)


def _scalar(value: Any) -> str:
    """One YAML scalar on one line: plain when YAML reads it back as the same string."""
    if isinstance(value, str):
        value = _escape_interpolation(value)
        plain = yaml.safe_dump(value, allow_unicode=True, width=1 << 30).removesuffix("\n...\n")
        if "\n" not in plain.strip() and not plain.startswith(("'", '"')):
            return plain.strip()
        style = '"'
    else:
        style = None
    dumped = yaml.safe_dump(value, allow_unicode=True, width=1 << 30, default_style=style)
    return dumped.removesuffix("\n...\n").strip()


def _set(values: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        values = values.setdefault(p, {})
    values[last] = value


def _bad(source: str, key: str, value: str, allowed: str) -> ReplayError:
    return ReplayError(f"{source}: {key}: {value!r} is not allowed; {allowed}")


def _core(info: Infotext, source: str, out: ReplayRecipe) -> None:
    """Steps, sampler, CFG, seed and size: validated as the planner will."""
    from sdbatch.plan.recipe import SEED_MAX, parse_cfg
    from sdbatch.plan.samplers import SAMPLERS, recipe_fields, resolve_sampler, split_sampler

    p = info.params
    for key in _REQUIRED:
        if key not in p:
            raise ReplayError(f"{source}: the infotext has no {key}; cannot replay it")
    try:
        steps = _int(p["Steps"], 1, 1000)
    except ValueError:
        raise _bad(source, "Steps", p["Steps"], "an integer in 1..1000") from None
    shown = p["Sampler"]
    if "Schedule type" in p:
        shown += f", Schedule type: {p['Schedule type']}"
    try:
        split_sampler(p["Sampler"].strip())
    except RecipeError as exc:  # no "closest match": a near name would make a different image
        if "cannot run" in exc.allowed:  # Restart, DPM fast, the CFG++ variants, ...
            raise ReplayError(f"{source}: Sampler: {shown}: {exc.allowed}") from None
        raise ReplayError(
            f"{source}: Sampler: {shown} is not a sampler sdbatch has; known samplers: "
            f"{', '.join(SAMPLERS)}"
        ) from None
    try:
        sampler = resolve_sampler(a1111_sampler(p))
    except RecipeError as exc:  # a schedule type this sampler cannot run, or an unknown one
        raise ReplayError(f"{source}: Sampler: {shown}: {exc}") from None
    try:
        cfg = parse_cfg(p["CFG scale"])
    except RecipeError as exc:
        raise _bad(source, "CFG scale", p["CFG scale"], exc.allowed) from None
    try:
        seed = _int(p["Seed"], 0, SEED_MAX)
    except ValueError:
        raise _bad(source, "Seed", p["Seed"], f"an integer in 0..{SEED_MAX}") from None
    try:
        width, height = parse_infotext_size(p["Size"])
    except ValueError:
        raise _bad(source, "Size", p["Size"], "WIDTHxHEIGHT like 512x768") from None
    w8, h8 = width // 8 * 8, height // 8 * 8
    if not (w8 and h8):
        raise _bad(source, "Size", p["Size"], "at least 8x8")
    if (w8, h8) != (width, height):
        out.warnings.append(
            f"Size: {p['Size']} is not a multiple of 8; A1111 sampled a {w8 // 8}x{h8 // 8} "
            f"latent, so the recipe says {w8}x{h8}"
        )
    out.values.update(recipe_fields(sampler))  # sampler (and schedule_type where it must say)
    out.values.update(steps=steps, cfg=_number(cfg), seeds=seed, size=f"{w8}x{h8}")


def _model(params: Mapping[str, str], source: str, out: ReplayRecipe) -> None:
    """Our embedded model stays the default; any other model is named, with its hash."""
    from sdbatch.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PATH

    name, want = params.get("Model"), params.get("Model hash")
    if name is None:
        out.warnings.append("Model: not in the infotext; the recipe uses the default model")
        if want:
            out.model_note = f"Model hash: {want}"
        return
    if name == EMBEDDED_MODEL_NAME:
        from sdbatch.plan.hashing import model_hash

        have = model_hash(EMBEDDED_MODEL_PATH)
        if want and want != have:
            out.warnings.append(
                f"Model hash: {want} is not the embedded {name}'s ({have}); the image came from "
                "another build of it"
            )
        return
    if not inside_model_dir(name):  # A1111 writes the checkpoint's file stem, never a path
        raise ReplayError(f"{source}: Model: {name!r} is not allowed; {CHECKPOINT_NAMES}")
    out.values["model"] = {"name": name}
    hash_text = f"hash {want}" if want else "no hash given"
    out.model_note = f"Model hash: {want}; " if want else ""
    out.model_note += MODEL_HINT
    out.warnings.append(
        f"Model: {name} ({hash_text}): {MODEL_HINT}; without either sdbatch uses its embedded "
        "tiny model"
    )


def _prompt_checks(info: Infotext, out: ReplayRecipe) -> None:
    """A1111 reads prompts literally; sdbatch's ``prompt:`` also expands dynamic prompts."""
    text = info.prompt
    if "{" in text or "__" in text:
        out.warnings.append(
            "prompt: holds '{' or '__', which sdbatch expands as dynamic-prompts syntax "
            "({a|b} variants, __wildcards__); the replayed prompt may differ"
        )
    for tag in dict.fromkeys(re.findall(r"<(hypernet):", text + info.negative_prompt)):
        out.warnings.append(f"prompt: <{tag}:...> tags are removed and not applied by sdbatch")
    if re.search(r"\sAND\s", text):
        out.warnings.append("prompt: A1111 composes 'AND' prompts; sdbatch reads AND as text")


def _loras(info: Infotext, out: ReplayRecipe) -> None:
    """``Lora hashes`` back to names in the LoRA folder (SDBATCH_LORA / SDBATCH_A1111): by
    hash, then by name. A file found under another name renames the prompt's tags; one that is
    missing is one warning line (the recipe then stops at that tag, naming the closest file)."""
    from sdbatch.plan.lora_files import find_lora
    from sdbatch.plan.networks import parse_hash_list

    value = info.params.get("Lora hashes")
    if value is None:
        return
    out.comments.append(format_params({"Lora hashes": value}))
    for name, want in parse_hash_list(value):
        found, note = find_lora(name, want)
        if found is None:
            out.warnings.append(f"Lora hashes: {name} ({want}) is missing: {note}")
            continue
        if found != name:
            tag = re.compile(rf"<(lora|lyco):{re.escape(name)}(?=[:>])")
            out.values["prompt"] = tag.sub(
                lambda m, f=found: f"<{m.group(1)}:{f}", out.values["prompt"]
            )
        if note:
            out.warnings.append(f"Lora hashes: {name} ({want}): {note}")


def _embeddings(info: Infotext, out: ReplayRecipe) -> None:
    """``TI hashes`` back to files in the embeddings folder (SDBATCH_EMBEDDINGS /
    SDBATCH_A1111): by hash, then by name. A file found under another stem renames the word
    in both prompts; one that is missing is one warning line (the word then stays text)."""
    from sdbatch.plan.embedding_files import find_embedding
    from sdbatch.plan.networks import parse_hash_list

    value = info.params.get("TI hashes")
    if value is None:
        return
    out.comments.append(format_params({"TI hashes": value}))
    for name, want in parse_hash_list(value):
        found, note = find_embedding(name, want)
        if found is None:
            out.warnings.append(f"TI hashes: {name} ({want}) is missing: {note}")
            continue
        if found.lower() != name.lower():
            word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
            for key in ("prompt", "negative_prompt"):
                if isinstance(out.values.get(key), str):
                    out.values[key] = word.sub(found, out.values[key])
        if note:
            out.warnings.append(f"TI hashes: {name} ({want}): {note}")


def recipe_from_infotext(text: str, name: str, source: str = "") -> ReplayRecipe:
    """The recipe that plans the infotext's job again, or a ReplayError naming the field."""
    source = one_line(source or "infotext")
    info = parse_infotext(text)
    out = ReplayRecipe(name, {"name": name}, source)
    out.values["prompt"] = info.prompt
    out.values["negative_prompt"] = info.negative_prompt
    _core(info, source, out)
    _model(info.params, source, out)
    _prompt_checks(info, out)
    _loras(info, out)
    _embeddings(info, out)
    units, notes = units_from_infotext(info.params)  # sdbatch.plan.controlnet_infotext
    if units:
        out.values["controlnet"] = units
    out.warnings.extend(notes)
    for key, value in info.params.items():
        if key in _OWN_CODE or key in _REQUIRED or is_infotext_unit(key):
            continue
        spec = FIELDS.get(key, Field(note="not an A1111 field sdbatch knows"))
        shown = format_params({key: value})  # as the infotext wrote it: one line, quoted
        if key in _HIRES_PASS and "Hires upscale" not in info.params:
            spec = Field(note=_no_hires(key, info.params))
            if key == "Denoising strength" and "Hires resize" not in info.params:
                spec = Field("denoise", True, _unit)  # img2img's strength
                out.warnings.append(IMG2IMG)
        choices = _CHOICES.get(spec.target or "")
        if spec.mapped and spec.target and (not choices or choices(spec.convert(value))):
            try:
                _set(out.values, spec.target, spec.convert(value))
            except ValueError:
                raise _bad(source, key, value, f"a value for {spec.target}") from None
        elif spec.info:
            out.comments.append(shown)
        elif spec.default is not None and value == spec.default:
            out.comments.append(f"{shown} (what sdbatch does)")
        else:
            out.comments.append(f"not reproduced: {shown}")
            why = f" ({spec.note})" if spec.note else ""
            out.warnings.append(f"not reproduced: {shown}{why}")
            if key == "RNG" and value.strip() == "NV":  # NV reproduces CUDA's torch.randn
                out.values["rng"] = "gpu"
    _vae(info.params, out)
    _upscaler_file(out)
    if "RNG" not in info.params:  # A1111 writes RNG only when it is not its default, the GPU
        out.values["rng"] = "gpu"
        out.comments.append("no RNG field: A1111's default noise source, the GPU")
    return out


def _vae(params: Mapping[str, str], out: ReplayRecipe) -> None:
    """``VAE`` / ``VAE hash`` to ``model.vae``: the file in the VAE folder (SDBATCH_VAE /
    SDBATCH_A1111) with that stem, else with that hash; one warning line when there is none."""
    from sdbatch.plan.hashing import model_hash
    from sdbatch.plan.model_folders import folders_of, list_files

    name, want = params.get("VAE"), params.get("VAE hash")
    if name is None and want is None:
        return
    if want is not None:
        out.comments.append(format_params({"VAE hash": want}))
    key = "VAE" if name is not None else "VAE hash"
    shown = format_params({key: params[key]})
    files = list_files("vae", None)
    stem = Path(name.replace("\\", "/")).stem.lower() if name else None  # A1111: the file name
    hits = [k for k in files if k.rsplit("/", 1)[-1].lower() == stem] if stem else []
    if not hits and want:
        hits = [k for k, p in files.items() if model_hash(p) == want.strip()]
    if not hits:
        roots = " or ".join(str(r) for r in folders_of("vae", None))
        where = f"not in {roots}" if roots else "no VAE folder (SDBATCH_VAE or SDBATCH_A1111)"
        out.comments.append(f"not reproduced: {shown}")
        out.warnings.append(f"not reproduced: {shown} ({where}; the recipe uses the model's VAE)")
        return
    out.values.setdefault("model", {})["vae"] = hits[0]
    if name is not None:
        out.comments.append(shown)
    path = files[hits[0]]
    have = model_hash(path)
    if path.suffix.lower() != ".safetensors":
        out.warnings.append(f"VAE: {path} is a pickle: run with model.allow_pickle=true")
    if want and have != want.strip():
        out.warnings.append(f"VAE hash: {want} is not {hits[0]}'s ({have}): another file")


def _upscaler_file(out: ReplayRecipe) -> None:
    """A model upscaler the recipe names must be in the upscaler folder (SDBATCH_UPSCALERS /
    SDBATCH_A1111): one warning line when it is not, or when it needs model.allow_pickle."""
    from sdbatch.plan.upscalers import BUILT_IN, resolve_upscaler

    name = out.values.get("hires", {}).get("upscaler")
    if name is None or name in BUILT_IN:
        return
    try:
        file, _ = resolve_upscaler(name, None, allow_pickle=True)[1:]
    except RecipeError as exc:
        out.warnings.append(f"Hires upscaler: {name}: {exc.allowed}")
        return
    if Path(file).suffix.lower() != ".safetensors":
        out.warnings.append(
            f"Hires upscaler: {name} is {file}, a pickle: run with model.allow_pickle=true"
        )


IMG2IMG = (
    "img2img: A1111 does not write which picture it started from; set init_images (and masks "
    "for inpainting) to run the recipe"
)


def _no_hires(key: str, params: Mapping[str, str]) -> str:
    """Why a hires-pass field is not reproduced when the infotext has no ``Hires upscale``."""
    if "Hires resize" in params:
        return "the hires fix ran to a fixed size (Hires resize), which sdbatch lacks"
    return "no Hires upscale: the hires fix did not run"


def read_infotext_file(path: str | Path) -> str:
    """The A1111 infotext of an image file, or a one-line ReplayError naming the file. The
    reader is capped (sdbatch.outputs.infotext.read_png_infotext): no pixels are decoded, a header
    over Pillow's decompression-bomb limit is refused, and so is infotext over 1 MiB."""
    shown = one_line(str(path))
    try:
        text = read_png_infotext(path)
    except FileNotFoundError:
        raise ReplayError(f"{shown}: no such file") from None
    except PngTextError as exc:  # not a PNG, over the pixel limit, infotext over the cap
        raise ReplayError(f"{shown}: {exc}") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or one_line(str(exc))
        raise ReplayError(f"{shown}: cannot read it ({reason})") from None
    if not text or not text.strip():
        raise ReplayError(f"{shown}: no A1111 infotext (no 'parameters' text chunk)")
    return text


def default_name(path: str | Path) -> str:
    """``replay_<file stem>``, with what Hydra's override grammar dislikes turned into ``_``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_") or "image"
    return f"replay_{stem}"
