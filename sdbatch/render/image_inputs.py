"""img2img and inpainting passes over the Renderer's own components (no second copy of weights).

The plan gives each job an `ImageInput` (sdbatch.plan.image_inputs); here its picture and mask
are read (and checked against the hash in the job id), prepared as A1111 prepares them
(sdbatch.plan.image_ops), and handed to diffusers' img2img or inpaint pipeline, both built once
with ``from_pipe`` from the loaded txt2img pipeline. The Renderer calls `image_call` in place of
its txt2img call, with the same prompt embeddings, per-step conditioning, LoRA and
embeddings, and per-image generators; `finish` pastes the results back as A1111 does.

Steps follow A1111's img2img rule (sdbatch.plan.image_inputs.a1111_steps): a schedule over
``steps``, of which ``int(min(denoise, 0.999) * steps) + 1`` run. A1111's "latent noise" and
"latent nothing" replace the picture's latents inside the mask (by the image's own noise, or
zeros) before noise is added; diffusers' inpaint pipeline then keeps the unmasked latents at
every step, as A1111's sampler does for non-inpainting checkpoints.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from sdbatch.plan.hashing import sha256_bytes
from sdbatch.plan.image_inputs import a1111_steps
from sdbatch.plan.image_ops import (
    MaskOptions,
    Prepared,
    apply_overlay,
    latent_mask_pixels,
    prepare,
)
from sdbatch.plan.recipe import Job

LATENT_FILLS = ("latent noise", "latent nothing")


class ChangedInput(RuntimeError):
    """A picture or mask whose bytes are not the ones the plan hashed into the job id."""


def read_image(path: str, sha256: str) -> Image.Image:
    """The file's picture, if its bytes still have the planned hash."""
    with open(path, "rb") as f:
        data = f.read()
    if sha256_bytes(data) != sha256:
        raise ChangedInput(f"{path} changed since the plan was made; run again to re-plan")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy()


def _prepared(job: Job, factor: int) -> Prepared:
    image = job.image
    f, o = image.file, image.options
    picture = read_image(f.path, f.sha256)
    mask = read_image(f.mask, f.mask_sha256) if f.mask else None
    opts = MaskOptions(o.mask_blur, o.invert, o.fill, o.full_res, o.padding)
    return prepare(picture, mask, job.width, job.height, o.resize_mode, opts, factor)


def _pipeline(renderer, kind: str):
    """The img2img or inpaint pipeline over the renderer's components, made once."""
    if kind == "img2img":
        return renderer._img2img()
    pipe = getattr(renderer, "_inpaint_pipe", None)
    if pipe is None:
        from diffusers import AutoPipelineForInpainting

        with warnings.catch_warnings():  # the swapped-in scheduler's config notices
            warnings.simplefilter("ignore", FutureWarning)
            pipe = AutoPipelineForInpainting.from_pipe(renderer.pipe)
        pipe.set_progress_bar_config(disable=True)
        _fill_latents(pipe)
        renderer._inpaint_pipe = pipe
    return pipe


def _fill_latents(pipe) -> None:
    """Wrap the inpaint pipeline's ``prepare_latents`` so A1111's "latent noise" / "latent
    nothing" start the masked area from the image's noise or from zeros."""
    original = pipe.prepare_latents
    pipe._sdbatch_fill = None  # (fill, latent mask (B, 1, h, w)) for the next call

    def prepare_latents(*args, **kwargs):
        out = original(*args, **kwargs)
        fill = pipe._sdbatch_fill
        if fill is None or not kwargs.get("return_image_latents") or len(out) < 3:
            return out
        mode, mask = fill
        latents, noise, image_latents = out[0], out[1], out[2]
        if kwargs.get("is_strength_max", True):
            return out  # pure noise: nothing of the picture is left to replace
        mask = mask.to(image_latents.device, image_latents.dtype)
        inside = noise if mode == "latent noise" else torch.zeros_like(image_latents)
        start = image_latents * (1 - mask) + inside * mask
        latents = pipe.scheduler.add_noise(start, noise, kwargs["timestep"])
        return (latents, noise, image_latents, *out[3:])

    pipe.prepare_latents = prepare_latents


def image_call(renderer, jobs: Sequence[Job]) -> tuple[object, dict, list[Prepared]]:
    """The pipeline for this batch, its picture arguments and what `finish` pastes back.

    A batch holds jobs of one strength and one set of options (sdbatch.plan.recipe's batch
    key); pictures, masks and crops are per image."""
    first = jobs[0]
    factor = renderer.pipe.vae_scale_factor
    prepared = [_prepared(j, factor) for j in jobs]
    _, strength = a1111_steps(first.steps, first.image.denoise)
    masked = first.image.masked
    pipe = _pipeline(renderer, "inpaint" if masked else "img2img")
    pipe.scheduler = renderer._scheduler(jobs)
    call: dict = {"image": [p.image for p in prepared], "strength": strength}
    if masked:
        masks = [latent_mask_pixels(p.latent_mask, factor) for p in prepared]
        call["mask_image"] = [Image.fromarray(m, mode="L") for m in masks]
        call.update(width=first.width, height=first.height)
        fill = first.image.options.fill
        if fill in LATENT_FILLS:
            small = torch.from_numpy(np.stack([p.latent_mask for p in prepared]))[:, None]
            pipe._sdbatch_fill = (fill, small.float())
        else:
            pipe._sdbatch_fill = None
    return pipe, call, prepared


def finish(images: Sequence[np.ndarray], prepared: Sequence[Prepared]) -> list[np.ndarray]:
    """Each rendered picture (H, W, 3 floats in 0..1) pasted back as A1111 does: into its crop
    ("only masked", then the input's size) and under the input's unmasked pixels. Pictures
    with NaNs are left as they are (the runner records them)."""
    out = []
    for img, prep in zip(images, prepared, strict=True):
        if prep.overlay is None or np.isnan(img).any():
            out.append(img)
            continue
        pixels = (img * 255).round().clip(0, 255).astype(np.uint8)
        pasted = apply_overlay(Image.fromarray(pixels), prep)
        out.append(np.asarray(pasted, dtype=np.float32) / 255)
    return out
