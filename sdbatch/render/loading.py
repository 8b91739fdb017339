"""Load a diffusers pipeline for a `Model`, offline. Imports torch and diffusers.

A diffusers folder loads with ``from_pretrained(local_files_only=True)``. A single LDM-layout
file loads with ``from_single_file(config=<local config folder>, local_files_only=True)``:
without ``config`` diffusers 0.42 asks the hub for one even with ``local_files_only``, and
``original_config`` still fetches the CLIP tokenizer. The config folder is ``Model.config``:
a ``<stem>.config/`` folder beside the checkpoint, or the family's config-only folder shipped
in ``sdbatch/models/configs/`` (SD 1.5's and SDXL base's real configs, no weights). The shipped
folders hold no ``vocab.json``/``merges.txt``: they are the same CLIP BPE files as the embedded
tiny model's, so the tokenizers are built from those (one copy in the package).

Weights follow ``sdbatch.plan.checkpoints``' policy, checked again here in case a file changed
since the plan: without ``model.allow_pickle`` every ``from_pretrained`` gets
``use_safetensors=True`` (diffusers then refuses a folder that has only ``.bin`` weights) and
a single pickle file is refused before diffusers opens it. With it, diffusers reads pickles
with ``torch.load(weights_only=True)``, which the plan has already checked them against.

Speed settings (BENCHMARKS.md has the figures): ``run.compile`` wraps the UNet in
``torch.compile`` (``compile_unet``); channels_last and a non-default attention processor were
measured on the CPU and did not pay, so the pipeline keeps diffusers' defaults (SDPA attention,
contiguous tensors). ``cpu_features`` reads what the CPU can do (AMX, AVX-512 BF16) so every
benchmark figure, and the ``model:`` line of a bf16 run on the CPU, says which kernels ran.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from sdbatch.plan.checkpoints import Model, check_weights_file
from sdbatch.plan.weights import from_pretrained_kwargs

PIPELINES = {"sd1": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
TOKENIZERS = ("tokenizer", "tokenizer_2")
BPE_FILES = ("vocab.json", "merges.txt")
# /proc/cpuinfo flags that decide bf16 speed on a CPU (oneDNN uses AMX, then AVX-512 BF16)
BF16_FLAGS = ("amx_bf16", "amx_tile", "amx_fp16", "avx512_bf16", "avx512f", "avx512_vnni")


def cpu_features(cpuinfo: str | None = None) -> dict:
    """The CPU model, its bf16-relevant flags and torch's kernel level (``AVX512``, ...).

    ``cpuinfo``: the text of /proc/cpuinfo (read when None; empty where there is none)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    found = [f for f in BF16_FLAGS if f in flags]
    amx = "amx_bf16" in flags and "amx_tile" in flags
    return {
        "model": model or platform.processor() or platform.machine(),
        "flags": found,
        "bf16": "AMX" if amx else "AVX-512 BF16" if "avx512_bf16" in flags else "none",
        "torch": torch.backends.cpu.get_cpu_capability(),
    }


def describe_cpu(features: dict | None = None) -> str:
    """One line: ``AMD EPYC; bf16 kernels: AVX-512 BF16; torch AVX512``."""
    f = features or cpu_features()
    return f"{f['model']}; bf16 kernels: {f['bf16']}; torch {f['torch']}"


def compile_unet(pipe) -> None:
    """``torch.compile`` the UNet in place (default mode, shapes made dynamic on the first
    recompile: a smaller last batch or a hires size compiles once more, not per shape)."""
    pipe.unet = torch.compile(pipe.unet)


def describe_speedups(pipe, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """What the ``model:`` line adds: the compiled UNet and, for bf16 on the CPU, which CPU
    (whether it has bf16 kernels decides what bf16 is worth)."""
    out = ", torch.compile UNet" if hasattr(pipe.unet, "_orig_mod") else ""
    if device.type == "cpu" and dtype == torch.bfloat16:
        out += f" ({describe_cpu()})"
    return out


def _quiet() -> None:
    """Progress bars and advisory logs while loading would bury sdbatch's own lines."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    dlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    tlogging.set_verbosity_error()


def load_tokenizer(folder: str | Path):
    """A CLIPTokenizer from a folder that may lack the BPE files (the shipped configs):
    they are taken from the embedded tiny model, in a temporary copy of the folder."""
    from transformers import CLIPTokenizer

    from sdbatch.models import EMBEDDED_MODEL_PATH

    folder = Path(folder)
    if all((folder / f).is_file() for f in BPE_FILES):
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    with tempfile.TemporaryDirectory(prefix="sdbatch-tokenizer-") as tmp:
        for f in folder.iterdir():
            shutil.copy(f, tmp)
        for name in BPE_FILES:
            shutil.copy(EMBEDDED_MODEL_PATH / "tokenizer" / name, tmp)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def load_vae(vae: str | Path, config: str | Path, dtype: torch.dtype, allow_pickle: bool = False):
    """``model.vae``: a diffusers VAE folder, or a single file in LDM or diffusers layout read
    against ``<config>/vae/config.json`` (the model's own VAE config: scaling factor included)."""
    from diffusers import AutoencoderKL

    p = Path(vae)
    if p.is_dir():
        sub = None if (p / "config.json").is_file() else "vae"
        return AutoencoderKL.from_pretrained(
            p, subfolder=sub, torch_dtype=dtype, local_files_only=True,
            **from_pretrained_kwargs(allow_pickle),
        )  # fmt: skip
    check_weights_file(p, "model.vae", allow_pickle)
    return AutoencoderKL.from_single_file(
        str(p), config=str(config), subfolder="vae", torch_dtype=dtype, local_files_only=True
    )


def load_pipeline(model: Model, device: torch.device, dtype: torch.dtype, compile: bool = False):
    """The model's pipeline class, offline, with the VAE override, without a safety checker;
    its UNet compiled with ``compile`` (run.compile)."""
    import diffusers

    _quiet()
    cls = getattr(diffusers, PIPELINES[model.family])
    kwargs: dict = {"torch_dtype": dtype, "local_files_only": True}
    if model.family == "sdxl":
        kwargs["add_watermarker"] = False  # A1111 does not watermark
    else:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    config = model.config or model.path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype rename
        if model.vae:
            kwargs["vae"] = load_vae(model.vae, config, dtype, model.allow_pickle)
        if Path(model.path).is_dir():
            pipe = cls.from_pretrained(
                model.path, **kwargs, **from_pretrained_kwargs(model.allow_pickle)
            )
        else:
            check_weights_file(model.path, "model.path", model.allow_pickle)
            for name in TOKENIZERS:
                if (Path(config) / name).is_dir():
                    kwargs[name] = load_tokenizer(Path(config) / name)
            pipe = cls.from_single_file(model.path, config=str(config), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if compile:
        compile_unet(pipe)
    return pipe
