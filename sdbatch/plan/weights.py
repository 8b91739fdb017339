"""What a weight file holds, and whether sdbatch may load it. Pure: no torch.

The family of a single file (SD 1.x or SDXL) is read from its key names without loading it: a
safetensors file starts with a JSON header listing every tensor; a pickle's strings are read
with ``pickletools``, which parses and never executes. The weights policy (one function for every
weight file sdbatch loads: checkpoints, diffusers components, VAE, and later LoRA, embeddings,
upscalers): pickles are refused unless ``model.allow_pickle`` is set on the command line, and
even then one that names a global ``torch.load(weights_only=True)`` would refuse is refused at
plan time; a truncated ``.safetensors`` or an incomplete diffusers folder is one line.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import struct
import zipfile
from pathlib import Path

from sdbatch.errors import RecipeError

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = (SAFETENSORS, *PICKLE_SUFFIXES)
FAMILIES = {"sd1": "SD 1.x", "sdxl": "SDXL"}
# diffusers pipeline class (model_index.json) -> family
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd1", "StableDiffusionXLPipeline": "sdxl"}
SUPPORTED = (
    "an SD 1.x or SDXL base checkpoint (.safetensors in the original LDM layout, as A1111 and "
    "Civitai use) or a diffusers folder"
)
# Config-only diffusers folders (no weights) that let from_single_file work offline.

# ---------------------------------------------------------------------------- file inspection


def safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}: the JSON header every safetensors file
    starts with (8 bytes little-endian length, then JSON). Raises ValueError if it is not one,
    or if it is cut short: the header and the furthest tensor's bytes must fit in the file."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (size,) = struct.unpack("<Q", head)
        if size > 1 << 28:
            raise ValueError("header length past the end of the file")
        if 8 + size > file_size:
            raise ValueError(_truncated(8 + size, file_size))
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise ValueError(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    if 8 + size + end > file_size:
        raise ValueError(_truncated(8 + size + end, file_size))
    return header


def _truncated(need: int, have: int) -> str:
    return f"truncated: its header needs {need:,} bytes, the file has {have:,}; download it again"


def _scan(stream, strings: set[str], ops: list[tuple[str, object]]) -> None:
    """One pickle's opcodes, parsed by ``pickletools.genops`` (nothing is executed)."""
    for op, arg, _pos in pickletools.genops(stream):
        ops.append((op.name, arg))
        if isinstance(arg, str):
            strings.add(arg)


def _read_pickle(path: str | os.PathLike, strings: set[str], ops: list) -> None:
    """The strings and opcodes of a torch pickle, as ``torch.load`` reads it: a zip holding
    ``<name>/data.pkl`` (torch >= 1.6), or the legacy layout of several pickles in a row (magic
    number, protocol, sys info, then the object). Raises (ValueError, OSError, ...) when the
    file is no torch pickle or is cut short; what was read so far stays in ``strings``/``ops``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if member is None:
                raise ValueError("a zip without data.pkl, not a torch.save file")
            _scan(io.BytesIO(z.read(member)), strings, ops)
        return
    with open(path, "rb") as f:
        first: list[tuple[str, object]] = []
        _scan(f, strings, first)
        ops.extend(first)
        if ("LONG1", TORCH_MAGIC) not in first:
            raise ValueError("not a torch.save file (no torch magic number)")
        for _ in range(3):
            _scan(f, strings, ops)


def pickle_keys(path: str | os.PathLike) -> set[str]:
    """The strings in a torch pickle (its state-dict keys among them), without unpickling:
    ``pickletools.genops`` only parses opcodes. What could be read when the file is cut short
    or foreign."""
    strings: set[str] = set()
    try:
        _read_pickle(path, strings, [])
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


# ------------------------------------------------------------------------ the weights policy

TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy (pre-zip) torch.save file
_STORAGES = "BFloat16 Bool Byte Char ComplexDouble ComplexFloat Double Float Half Int Long Short"
_QSTORAGES = "QInt32 QInt8 QUInt2x4 QUInt4x2 QUInt8"
_TENSORS = "BFloat16 Bool Byte Char Double Float Half Int Long Short"
_DTYPES = (
    "bfloat16 bits16 bits1x8 bits2x4 bits4x2 bits8 bool complex128 complex32 complex64 float16 "
    "float32 float4_e2m1fn_x2 float64 float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz "
    "float8_e8m0fnu qint32 qint8 quint2x4 quint4x2 quint8 "
    + " ".join(f"int{n} uint{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64))
)
_QSCHEMES = (
    "per_channel_affine per_channel_affine_float_qparams per_channel_symmetric "
    "per_tensor_affine per_tensor_symmetric"
)
_REBUILDS = (
    "device_tensor_from_cpu_tensor device_tensor_from_numpy meta_tensor_no_storage "
    "nested_tensor parameter parameter_with_state qtensor sparse_tensor tensor tensor_v2 "
    "tensor_v3 wrapper_subclass"
)
# The globals torch.load(weights_only=True) accepts: torch/_weights_only_unpickler.py's
# _get_allowed_globals() (torch 2.13), spelled out so that checking needs no torch. diffusers
# and transformers read every pickle with weights_only=True, so a pickle naming anything else
# fails to load whatever model.allow_pickle says.
WEIGHTS_ONLY_GLOBALS = frozenset(
    [
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch._tensor._rebuild_from_type_v2",
        *(f"torch._utils._rebuild_{f}" for f in _REBUILDS.split()),
        *(f"torch.{t}" for t in (*_DTYPES.split(), *_QSCHEMES.split())),
        *(f"torch.{s}Storage" for s in (*_STORAGES.split(), *_QSTORAGES.split())),
        *(f"torch.cuda.{s}Storage" for s in _STORAGES.split()),
        *(f"torch{m}.{t}Tensor" for m in ("", ".cuda") for t in _TENSORS.split()),
        *(
            f"torch{m}.sparse.{t}Tensor"
            for m in ("", ".cuda")
            for t in _TENSORS.split()
            if t != "Bool"
        ),
    ]
)
# The opcodes its unpickler reads (pickle protocol 2, what torch.save writes); any other,
# such as protocol 4's FRAME or STACK_GLOBAL, makes it refuse the file.
WEIGHTS_ONLY_OPCODES = frozenset(
    "GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 "
    "NONE NEWFALSE NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 "
    "BINFLOAT BINUNICODE SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1 "
    "PROTO STOP".split()
)
_STRING_OPS = {
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8",
}  # fmt: skip
WEIGHT_FILES = "a weight file: .safetensors (or with model.allow_pickle a .ckpt, .pt, .pth or .bin)"
PICKLE_REFUSED = (
    "pickle weights can run code when loaded; convert it to .safetensors or pass "
    "model.allow_pickle=true on the command line"
)
WEIGHTS_ONLY = "torch.load(weights_only=True)"  # how diffusers and transformers read pickles


def pickle_globals(ops: list[tuple[str, object]]) -> list[str]:
    """``module.name`` of every global a pickle's opcodes import (GLOBAL, and STACK_GLOBAL with
    its two strings pushed just before), in order, as torch names them (Python 2's
    ``__builtin__`` is ``builtins``). STACK_GLOBAL's names are read back best effort, for the
    message only: torch's weights-only unpickler has no STACK_GLOBAL, so the opcode check
    refuses such a pickle whatever it names."""
    found: list[str] = []
    recent: list[object] = []  # values the last string pushes and memo reads left on the stack
    memo: dict[object, object] = {}
    for name, arg in ops:
        if name in _STRING_OPS:
            recent.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(arg))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.append(f"{module}.{qualname}")
        elif name == "STACK_GLOBAL":
            module, qualname = (recent[-2:] if len(recent) >= 2 else ["?", "?"])[:2]
            found.append(f"{module}.{qualname}")
    return [("builtins." + g[12:]) if g.startswith("__builtin__.") else g for g in found]


def weights_only_problem(path: str | os.PathLike) -> str | None:
    """Why ``torch.load(path, weights_only=True)`` would refuse a pickle, or None: the first
    global it does not allow, else the first opcode it cannot read, else a file it cannot
    parse. Read with ``pickletools``, never unpickled."""
    ops: list[tuple[str, object]] = []
    try:
        _read_pickle(path, set(), ops)
    except Exception as exc:  # pickletools' ValueError, zipfile's BadZipFile, OSError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"a readable torch pickle ({reason}); download it again or convert it"
    for name in pickle_globals(ops):
        if name not in WEIGHTS_ONLY_GLOBALS:
            return (
                f"its pickle needs {name}, which {WEIGHTS_ONLY} refuses (it allows tensors, "
                "dicts and lists only; diffusers loads pickles only that way); re-save just its "
                "state_dict, or convert it to .safetensors"
            )
    for name, _arg in ops:
        if name not in WEIGHTS_ONLY_OPCODES:
            return (
                f"its pickle uses opcode {name}, which {WEIGHTS_ONLY} cannot read "
                "(it reads pickle protocol 2, what torch.save writes; diffusers loads pickles only "
                "that way); convert it to .safetensors"
            )
    return None


def check_weights_file(path: str | os.PathLike, field: str, allow_pickle: bool) -> None:
    """The one policy for every weight file sdbatch loads (checkpoints, VAEs, the components
    of a diffusers folder; LoRAs, embeddings and upscalers when they come): a ``.safetensors``
    file must be whole; a pickle is refused unless ``allow_pickle``, and then must be one
    ``torch.load(weights_only=True)`` reads. A RecipeError naming ``field`` and the file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS:
        try:
            safetensors_header(p)
        except (OSError, ValueError, RecursionError) as exc:
            raise RecipeError(field, str(p), f"a readable .safetensors file ({exc})") from None
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise RecipeError(field, str(p), PICKLE_REFUSED)
        problem = weights_only_problem(p)
        if problem:
            raise RecipeError(field, str(p), problem)
    else:
        raise RecipeError(field, str(p), WEIGHT_FILES)


def from_pretrained_kwargs(allow_pickle: bool) -> dict[str, object]:
    """What the loader passes to diffusers' ``from_pretrained``: without model.allow_pickle
    it may read ``.safetensors`` only (the plan already refused pickles; this holds even if a
    folder changed since)."""
    return {} if allow_pickle else {"use_safetensors": True}


def _component_kind(cls: str) -> str:
    if "Scheduler" in cls:
        return "scheduler"
    if "Tokenizer" in cls:
        return "tokenizer"
    if cls.endswith(("ImageProcessor", "FeatureExtractor")):
        return "processor"
    return "model"


_COMPONENT_CONFIG = {
    "scheduler": "scheduler_config.json",
    "processor": "preprocessor_config.json",
    "model": "config.json",
}
_INCOMPLETE = "a complete diffusers folder (an interrupted copy or download?)"


def check_component_weights(
    sub: Path, label: str, value: Path, field: str, allow_pickle: bool
) -> None:
    """A model component's folder (``unet/``, a VAE folder): its weights are there, every
    shard an ``*.index.json`` lists exists, and what diffusers will read passes the policy
    (it takes ``.safetensors`` when there is one, else the pickle)."""
    files = sorted(f for f in sub.iterdir() if f.is_file())
    for index in (f for f in files if f.name.endswith(".index.json")):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            raise RecipeError(field, str(index), f"a readable shard index; {_INCOMPLETE}") from None
        missing = sorted(s for s in shards if not (sub / str(s)).is_file())
        if missing:
            allowed = f"{label} misses {missing[0]}, listed in {index.name}; {_INCOMPLETE}"
            raise RecipeError(field, str(value), allowed)
    safe = [f for f in files if f.suffix.lower() == SAFETENSORS]
    pickles = [f for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
    if not safe and not pickles:
        where = "" if sub == value else f" in {sub.relative_to(value).as_posix()}/"
        allowed = f"{label} holds no weights (no .safetensors or .bin file{where}); {_INCOMPLETE}"
        raise RecipeError(field, str(value), allowed)
    for f in safe or pickles:
        check_weights_file(f, field, allow_pickle)


def check_diffusers_folder(
    folder: Path, field: str, allow_pickle: bool, skip: tuple[str, ...] = ()
) -> None:
    """Every component ``model_index.json`` lists (``[library, class]``, not ``[null, null]``)
    has its sub-folder, its config and, for models, weights that pass the policy. ``skip``:
    components the loader replaces (``vae`` with model.vae; the safety checker it drops)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        raise RecipeError(field, str(folder), "a diffusers folder with model_index.json") from None
    for name, spec in index.items() if isinstance(index, dict) else ():
        if name.startswith("_") or name in (*skip, "safety_checker"):
            continue
        if not (isinstance(spec, list) and len(spec) == 2 and all(spec)):
            continue  # [null, null]: an optional component left out
        cls = str(spec[1])
        sub = folder / name
        label = f"{name} ({cls})"
        if not sub.is_dir():
            allowed = f"model_index.json lists {label}, but {name}/ is missing; {_INCOMPLETE}"
            raise RecipeError(field, str(folder), allowed)
        kind = _component_kind(cls)
        config = _COMPONENT_CONFIG.get(kind)
        if config and not (sub / config).is_file():
            allowed = f"{label} has no {name}/{config}; {_INCOMPLETE}"
            raise RecipeError(field, str(folder), allowed)
        if kind == "tokenizer" and not any(f.is_file() for f in sub.iterdir()):
            raise RecipeError(field, str(folder), f"{name}/ is empty; {_INCOMPLETE}")
        if kind == "model":
            check_component_weights(sub, label, folder, field, allow_pickle)


def _check_config_folder(folder: Path, field: str, allow_pickle: bool) -> None:
    """A ``<stem>.config/`` folder is configs; weights in it would be read too, so they pass
    the same policy."""
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix.lower() in CHECKPOINT_SUFFIXES:
            check_weights_file(f, field, allow_pickle)
