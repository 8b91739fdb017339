"""ControlNet passes over the Renderer's own components (no second copy of the UNet or VAE).

The plan gives each job a `Control` (sdbatch.plan.controlnet): per unit a model, a condition
image, a weight, a guidance window and a control mode. Here each ControlNet model loads once
per file (a diffusers folder, or a ``.safetensors`` file with the config beside it in
``<stem>.config/`` or else the config of the checkpoint family's ControlNet shipped in
``sdbatch/models/configs``: SD 1.5's ``controlnet_sd15``, and ``controlnet_sdxl``, which is
``ControlNetModel.from_unet`` of the shipped SDXL UNet config, the layout of the full-size
SDXL ControlNets; so nothing is fetched), the condition images are read (checked against their
planned hash), run through the unit's module (``canny``: sdbatch.plan.preprocessors, at
``processor_res``, or with Pixel Perfect at the resolution the picture's size and the job's
give) and fitted to the job's size by the unit's resize mode
(sdbatch.plan.controlnet_resize: "Just Resize", "Crop and Resize" or "Resize and Fill", as the
extension's ``detectmap_proc``), and diffusers' ControlNet txt2img, img2img or inpaint
pipeline (SD 1.x or SDXL; SDXL's passes the pooled text and size conditioning to the ControlNet
too) is made with ``from_pipe`` from the loaded one. Several units run as diffusers'
``MultiControlNetModel``.

diffusers multiplies each residual by the unit's weight and turns a unit off outside its window
(``i / n < start or (i + 1) / n > end`` over the n steps that run); the control modes other
than "Balanced" rescale the residuals on top of that (sdbatch.render.controlnet_modes).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from sdbatch.plan.controlnet import Control, folder_weights
from sdbatch.plan.controlnet_resize import resize_condition
from sdbatch.plan.image_ops import flatten
from sdbatch.plan.preprocessors import preprocess_image, unit_settings
from sdbatch.plan.recipe import Job
from sdbatch.plan.weights import check_weights_file

CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"
CONFIG = {"sd1": CONFIGS / "controlnet_sd15", "sdxl": CONFIGS / "controlnet_sdxl"}
PIPELINES = {
    "sd1": {
        "txt2img": "StableDiffusionControlNetPipeline",
        "img2img": "StableDiffusionControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionControlNetInpaintPipeline",
    },
    "sdxl": {
        "txt2img": "StableDiffusionXLControlNetPipeline",
        "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionXLControlNetInpaintPipeline",
    },
}


def load_controlnet(path: str, device, dtype, allow_pickle: bool, family: str = "sd1"):
    """One ControlNet model for a checkpoint of ``family``, offline, by the weights policy."""
    from diffusers import ControlNetModel

    p = Path(path)
    if p.is_dir():
        for f in folder_weights(p):
            check_weights_file(f, "controlnet.model", allow_pickle)
        model = ControlNetModel.from_pretrained(
            p, torch_dtype=dtype, local_files_only=True, use_safetensors=not allow_pickle or None
        )
    else:
        check_weights_file(p, "controlnet.model", allow_pickle)
        beside = p.with_name(p.stem + ".config")
        config = beside if (beside / "config.json").is_file() else CONFIG[family]
        model = ControlNetModel.from_single_file(
            str(p), config=str(config), torch_dtype=dtype, local_files_only=True
        )
    return model.to(device)


def _models(renderer, control: Control) -> list:
    cache = renderer.__dict__.setdefault("_controlnets", {})
    allow, family = bool(renderer.model.allow_pickle), renderer.model.family
    out = []
    for u in control.units:
        if u.path not in cache:
            cache[u.path] = load_controlnet(u.path, renderer.device, renderer.dtype, allow, family)
        out.append(cache[u.path])
    return out


def control_pipe(renderer, kind: str, base, jobs: Sequence[Job]):
    """diffusers' ControlNet pipeline of ``kind`` over ``base``'s components (``base`` is the
    renderer's txt2img, img2img or inpaint pipeline), made once per set of models."""
    import diffusers
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    models = _models(renderer, jobs[0].control)
    key = (kind, tuple(u.path for u in jobs[0].control.units))
    cache = renderer.__dict__.setdefault("_controlnet_pipes", {})
    if key not in cache:
        controlnet = models[0] if len(models) == 1 else MultiControlNetModel(models)
        cls = getattr(diffusers, PIPELINES[renderer.model.family][kind])
        with warnings.catch_warnings():  # the swapped-in scheduler's config notices
            warnings.simplefilter("ignore", FutureWarning)
            pipe = cls.from_pipe(base, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        if hasattr(base, "_sdbatch_fill"):  # the inpaint pipeline's latent fills
            from sdbatch.render.image_inputs import _fill_latents

            _fill_latents(pipe)
        cache[key] = pipe
    return cache[key]


@functools.lru_cache(maxsize=16)
def _picture(path: str, sha256: str):
    """A condition image's picture, read and checked against its planned hash once per run:
    the same pose or layout is every prompt's and seed's (transparency over white)."""
    from sdbatch.render.image_inputs import read_image

    return flatten(read_image(path, sha256))


@functools.lru_cache(maxsize=32)
def _preprocessed(path: str, sha256: str, module: str, settings: tuple[int, ...]):
    return preprocess_image(module, _picture(path, sha256), settings)


def _condition(unit, job_size: tuple[int, int]) -> object:
    """The unit's condition image at its module's resolution: the file's picture through the
    unit's preprocessor (with Pixel Perfect, at the resolution of the picture's size and
    ``job_size``, the job's (width, height)). Cached by content hash, so a batch's jobs and the
    next batches do not read, hash and preprocess the same file again; callers must not change
    the image they get (resize_condition makes a new one)."""
    picture = _picture(unit.image, unit.image_sha256)
    settings = unit_settings(unit.settings, unit.pixel_perfect, picture.size, job_size, unit.resize)
    return _preprocessed(unit.image, unit.image_sha256, unit.module, settings)


def control_call(jobs: Sequence[Job], kind: str, size: tuple[int, int] | None = None) -> dict:
    """The pipeline arguments of the batch's units: condition images per unit and image,
    weights and windows (a batch shares models, weights and windows: the plan's batch key).
    ``size``: (width, height) the condition images are fitted to (each unit's resize mode), the
    job's unless given (the
    hires pass's target size, as the extension resizes its condition image for that pass; Pixel
    Perfect's resolution is the job's size's, as the extension's, in both passes)."""
    units = jobs[0].control.units
    w, h = size or (jobs[0].width, jobs[0].height)
    # per job, its condition image of each unit: diffusers reads a nested list as
    # [image of the batch][ControlNet] (and transposes it itself)
    images = [
        [
            resize_condition(u.resize, _condition(u, (j.width, j.height)), w, h)
            for u in j.control.units
        ]
        for j in jobs
    ]
    # an empty window (start == end) never runs its unit; diffusers refuses one, so it runs
    # over the whole window at weight 0 (the same residuals: zeros)
    windows = [(u.weight, u.start, u.end) if u.start < u.end else (0.0, 0.0, 1.0) for u in units]
    weight, start, end = (list(x) for x in zip(*windows, strict=True))
    single = len(units) == 1
    if single:
        control = [per_job[0] for per_job in images]
    elif kind == "txt2img":
        control = images
    else:  # diffusers' ControlNet img2img and inpaint pipelines refuse a nested list: one
        # (B, H, W, 3) array per unit, the floats its image processor makes from pictures
        control = [np.stack([np.asarray(j[k], np.float32) / 255 for j in images]) for k in
                   range(len(units))]  # fmt: skip
    return {
        ("image" if kind == "txt2img" else "control_image"): control,
        "controlnet_conditioning_scale": weight[0] if single else weight,
        "control_guidance_start": start[0] if single else start,
        "control_guidance_end": end[0] if single else end,
    }


def with_control(
    renderer, pipe, call: dict, jobs: Sequence[Job], hires: tuple[int, int] | None = None
) -> tuple[object, dict]:
    """The batch's pipeline and arguments with its ControlNet units: ``pipe`` (the txt2img,
    img2img or inpaint pipeline the Renderer chose, its scheduler set) swapped for its
    ControlNet variant over the same components. ``hires``: the hires pass's (width, height);
    ``pipe`` is then the img2img pipeline of that pass, and the units steer it too."""
    first = jobs[0]
    kind = "txt2img" if first.image is None else "inpaint" if first.image.masked else "img2img"
    if hires is not None:
        kind = "img2img"
    cn_pipe = control_pipe(renderer, kind, pipe, jobs)
    cn_pipe.scheduler = pipe.scheduler
    if hasattr(pipe, "_sdbatch_fill"):
        cn_pipe._sdbatch_fill = pipe._sdbatch_fill
    return cn_pipe, {**call, **control_call(jobs, kind, hires)}


@contextlib.contextmanager
def composed_controlnet(controlnet, unet) -> Iterator[None]:
    """With AND, the ControlNet (or MultiControlNetModel) evaluates the rows the AND wrapper
    ``unet`` (sdbatch.render.conditioning.ComposedUNet) evaluates: the uncond rows and every
    part's row with that part's text, each with its image's condition image, as the extension
    runs it inside A1111's UNet call (diffusers alone would run it on B rows with the texts
    the wrapper does not use). ``forward`` is replaced on the instance only, so the pipeline's
    type checks still see a ControlNet; it is restored when the block ends. SDXL's pooled
    text and size conditioning are the wrapper's rows' too."""
    from sdbatch.render.controlnet_modes import swapped_forward

    original = controlnet.forward

    def forward(sample, timestep, *args, encoder_hidden_states=None, controlnet_cond=None,
                added_cond_kwargs=None, **kwargs):  # fmt: skip
        now, _, _, source = unet.rows(sample)
        if isinstance(timestep, torch.Tensor) and timestep.ndim and timestep.numel() > 1:
            timestep = timestep[source]
        if isinstance(controlnet_cond, list | tuple):  # several units: one tensor each
            cond = [c[source] for c in controlnet_cond]
        else:
            cond = controlnet_cond[source]
        if added_cond_kwargs:  # SDXL
            added_cond_kwargs = {
                "text_embeds": torch.cat([now.uncond_pooled, now.cond_pooled]),
                "time_ids": added_cond_kwargs["time_ids"][source],
            }
        hidden = torch.cat([now.uncond, now.cond])
        return original(sample[source], timestep, *args, encoder_hidden_states=hidden,
                        controlnet_cond=cond, added_cond_kwargs=added_cond_kwargs,
                        **kwargs)  # fmt: skip

    with swapped_forward(controlnet, forward):
        yield


RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")


def fit_residuals(kwargs: dict, source: torch.Tensor, incoming: int) -> dict:
    """The UNet's keyword arguments with the ControlNet residuals on the AND wrapper's rows:
    as they are when `composed_controlnet` ran the ControlNet on those rows, else their
    incoming rows picked as the latents are."""

    def fit(residual):
        if isinstance(residual, list | tuple):
            return [fit(r) for r in residual]
        if residual.shape[0] == source.shape[0]:
            return residual
        if residual.shape[0] == incoming:
            return residual[source]
        raise RuntimeError(f"ControlNet residual of {residual.shape[0]} rows for {incoming}")

    return {**kwargs, **{k: fit(kwargs[k]) for k in RESIDUALS if kwargs.get(k) is not None}}
