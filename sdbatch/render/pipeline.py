"""A thin adapter over a diffusers StableDiffusionPipeline: jobs in, uint8 images out.

One `Renderer` per model. Per batch it swaps the scheduler (``from_config``, no reload), reuses
cached prompt embeddings (one encode per distinct (prompt, negative) pair), gives every image its
own CPU ``torch.Generator`` seeded from its seed (so an image does not depend on its batch-mates,
up to kernel rounding), and returns pixels plus a NaN flag per image. Prompts with A1111's prompt
editing, alternation or AND follow their schedules step by step (sdbatch.render.conditioning);
all others take the plain path, one set of embeddings for the whole call.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sdbatch.plan.checkpoints import Model
from sdbatch.plan.extra_networks import strip_tags
from sdbatch.plan.prompt_schedule import has_scheduling
from sdbatch.plan.recipe import Job
from sdbatch.plan.samplers import resolve_sampler
from sdbatch.plan.upscalers import LATENT_MODES
from sdbatch.render.conditioning import (
    JobPrompts,
    StepConditioning,
    conditioned_call,
    job_prompts,
    signature,
)
from sdbatch.render.embeddings import EmbeddingStore, with_embeddings
from sdbatch.render.encode import encode_pair, encode_texts, pipeline_encoders
from sdbatch.render.loading import describe_speedups, load_pipeline
from sdbatch.render.lora import LoraSwitch
from sdbatch.render.noise import image_noise
from sdbatch.render.schedulers import build_scheduler

# Library chatter (progress bars while loading, optional-backend notices) would bury our plan
# and progress lines; real problems still raise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# torchsde compares float times with a strict >=; rounding in the last digit makes it warn on
# every DPM++ SDE image although the interval is correct.
warnings.filterwarnings("ignore", message="Should have ta>=t0", module="torchsde")


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Renderer.embeddings() tuples, position by position, as pipeline arguments
EMBED_ARGS = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA in fp16 when present, otherwise CPU in fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from sdbatch.errors import RecipeError

        raise RecipeError("run.device", device, "auto or cpu (no CUDA device is available)")
    if dtype == "auto":
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        from sdbatch.errors import RecipeError

        raise RecipeError("run.dtype", dtype, f"one of auto, {', '.join(DTYPES)}")
    return dev, DTYPES[dtype]


@dataclass
class Renderer:
    model: Model
    pipe: object
    device: torch.device
    dtype: torch.dtype
    _embeds: dict = field(default_factory=dict)
    _img2img_pipe: object = None
    _inpaint_pipe: object = None  # made by sdbatch.render.image_inputs on the first mask
    _texts: dict = field(default_factory=dict)  # (text, negative) -> text_embedding()
    _upscalers: dict = field(default_factory=dict)  # upscaler model file -> loaded model
    _loras: LoraSwitch | None = None  # the LoRA files loaded on this model (render/lora)
    _by_lora: dict = field(default_factory=dict)  # LoRA set -> its (_embeds, _texts) caches
    _ti: EmbeddingStore = field(default_factory=EmbeddingStore)  # TI files met (render/embeddings)

    @classmethod
    def load(
        cls, model: Model, device: str = "auto", dtype: str = "auto", compile: bool = False
    ) -> Renderer:
        """``compile``: torch.compile the UNet (run.compile, decided by the plan's size)."""
        dev, dt = pick_device(device, dtype)
        return cls(model, load_pipeline(model, dev, dt, compile=compile), dev, dt)

    def describe(self) -> str:
        dt = {v: k for k, v in DTYPES.items()}[self.dtype]
        extra = describe_speedups(self.pipe, self.device, self.dtype)
        return f"{self.model.name} (hash {self.model.hash}) on {self.device} {dt}{extra}"

    def environment(self) -> dict:
        import diffusers

        from sdbatch import __version__

        return {
            "device": str(self.device),
            "sdbatch_version": __version__,
            "torch_version": torch.__version__,
            "diffusers_version": diffusers.__version__,
        }

    def embeddings(self, prompt: str, negative: str) -> tuple[torch.Tensor, ...]:
        """(cond, uncond), each (1, 77*k, hidden), A1111's emphasis and chunks
        (sdbatch.render.encode); SDXL adds (pooled, uncond pooled) and zeroes an empty
        negative as A1111 does. Cached per (prompt, negative) pair."""
        key = (prompt, negative, self._ti.key)  # the TI words these texts use
        if key not in self._embeds:
            sdxl = self.model.family == "sdxl"
            with torch.inference_mode():
                embeds = encode_pair(
                    self._encoders(), prompt, negative, zero_empty_negative=sdxl,
                    device=self.device, dtype=self.dtype,
                )  # fmt: skip
            self._embeds[key] = embeds if sdxl else embeds[:2]
        return self._embeds[key]

    def _encoders(self):
        encoders = pipeline_encoders(self.pipe, self.model.family, self.model.clip_skip)
        return with_embeddings(encoders, self._ti)

    def text_embedding(self, text: str, negative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One text on its own for per-step conditioning: ((1, 77*k, hidden), pooled) with
        ``k`` its own chunk count, pooled (1, P) for SDXL and None for SD 1.x. ``negative``
        marks an all-empty negative prompt: for SDXL ``""`` is then zeros (A1111), otherwise
        prompt and negative texts encode alike."""
        zero = negative and text == "" and self.model.family == "sdxl"
        key = (text, zero, self._ti.key)
        if key not in self._texts:
            with torch.inference_mode():
                self._texts[key] = encode_texts(
                    self._encoders(), text, zero=zero, device=self.device, dtype=self.dtype
                )
        return self._texts[key]

    def render(self, jobs: Sequence[Job]) -> list[tuple[np.ndarray, bool]]:
        """Images for jobs sharing model, size, sampler, steps and cfg, in the jobs' order.

        Prompts of different lengths (77-token chunk counts) run as separate forward passes
        inside the batch; which ones is fixed by the batch itself, never by resume state.
        Prompts that change during sampling (editing, alternation, AND) run apart from the
        plain ones, in passes of images whose lengths agree at every step and that all use
        AND or none does.
        """
        self._use_loras(jobs[0])
        self._ti.use(u for j in jobs for u in j.networks.embeddings)  # files load once
        prompts = self._prompts(jobs)
        plain = [p.plain() for p in prompts]
        simple = [i for i, texts in enumerate(plain) if texts is not None]
        embeds = {i: self.embeddings(*plain[i]) for i in simple}
        out: list[tuple[np.ndarray, bool] | None] = [None] * len(jobs)
        groups = []
        order = sorted(simple, key=lambda i: embeds[i][0].shape[1])
        for _, group in itertools.groupby(order, key=lambda i: embeds[i][0].shape[1]):
            groups.append((list(group), None))
        scheduled: dict[tuple, list[int]] = {}
        for i, texts in enumerate(plain):
            if texts is None:
                scheduled.setdefault(self._signature(prompts[i]), []).append(i)
        groups += [(idx, [prompts[i] for i in idx]) for idx in scheduled.values()]
        for idx, schedules in groups:
            batch = [jobs[i] for i in idx]
            if schedules is None:
                images = self._call(batch, [embeds[i] for i in idx])
            else:
                images = self._call(batch, None, schedules)
            for i, img in zip(idx, images, strict=True):
                out[i] = img
        return out  # type: ignore[return-value]

    def _use_loras(self, job: Job) -> None:
        """The batch's LoRA set (make_batches gives a batch one set) made active; the text
        embeddings cached under another set's text-encoder weights are put aside, not reused."""
        if self._loras is None:
            if not job.networks.loras:
                return
            self._loras = LoraSwitch(self.pipe)
            self._by_lora[()] = (self._embeds, self._texts)
        if self._loras.apply(job.networks):
            caches = self._by_lora.setdefault(job.networks.batch_key(), ({}, {}))
            self._embeds, self._texts = caches

    def _prompts(self, jobs: Sequence[Job]) -> list[JobPrompts]:
        """Each job's schedules, planned over A1111's denoiser calls for this sampler."""
        # the text encoder never sees extra-network tags: A1111 removes them before it parses
        # emphasis and schedules (the job's prompt keeps them for the infotext)
        texts = [strip_tags(j.prompt) for j in jobs]
        order = 1  # only scheduled prompts need the scheduler's order; plain ones keep their text
        negatives = [j.negative_prompt for j in jobs]
        if any(has_scheduling(t) or "[" in n for t, n in zip(texts, negatives, strict=True)):
            order = self._scheduler(jobs).order
        out = []
        for text, j in zip(texts, jobs, strict=True):
            hires = j.extras.hires
            hires_steps = None if hires is None else hires.steps
            out.append(job_prompts(text, j.negative_prompt, j.steps, hires_steps, order))
        return out

    def _signature(self, prompts: JobPrompts) -> tuple:
        """What must agree for scheduled images to share a forward pass: their lengths at every
        call of each pass and whether AND is used (the UNet wrapper) in it."""

        def tokens(text: str, negative: bool) -> int:
            return self.text_embedding(text, negative)[0].shape[1]

        passes = [prompts.first] if prompts.hires is None else [prompts.first, prompts.hires]
        return tuple((signature(p, tokens), p.composed) for p in passes)

    def _conditioned(self, pipe, jobs: Sequence[Job], tensors: dict | None, prompts):
        """``pipe``'s keyword arguments for one pass: the plain embeddings as they are, or the
        per-step conditioning of ``prompts`` (one PassPrompts per job)."""
        if prompts is None:
            return contextlib.nullcontext(tensors)
        empty = self.text_embedding("", False)[0]  # A1111's padding chunk: never zeros
        conditioning = StepConditioning(prompts, self.text_embedding, empty)
        return conditioned_call(pipe, conditioning, jobs[0].cfg)

    def _generators(self, jobs: Sequence[Job]) -> list[torch.Generator]:
        """One generator per image, on the CPU (``rng: cpu``) or the render device (``gpu``)."""
        device = self.device if jobs[0].extras.rng == "gpu" else torch.device("cpu")
        return [torch.Generator(device).manual_seed(j.seed) for j in jobs]

    def _latents(self, jobs: Sequence[Job], width: int, height: int) -> torch.Tensor | None:
        """Initial noise blended with variation seeds (txt2img's start, or the noise img2img
        adds to the picture's latents); None lets diffusers draw plain noise."""
        ex = jobs[0].extras
        if not ex.subseed_strength:
            return None
        from sdbatch.render.noise import variation_noise

        f = self.pipe.vae_scale_factor
        shape = (self.pipe.vae.config.latent_channels, height // f, width // f)
        device = self.device if ex.rng == "gpu" else torch.device("cpu")
        noise = [
            variation_noise(j.seed, j.extras.subseed, j.extras.subseed_strength, shape, device)
            for j in jobs
        ]
        return torch.stack(noise).to(self.device, self.dtype)  # (B, C, h, w)

    def _scheduler(self, jobs: Sequence[Job]):
        return build_scheduler(
            resolve_sampler(jobs[0].sampler),
            self.pipe.scheduler.config,
            seeds=[j.seed for j in jobs],
            family=self.model.family,  # the Align Your Steps table (computed schedule types)
        )

    def _call(
        self, jobs: Sequence[Job], embeds, prompts: list[JobPrompts] | None = None
    ) -> list[tuple[np.ndarray, bool]]:
        """One forward pass (and its hires pass): ``embeds`` per job for plain prompts, or
        ``prompts`` (then ``embeds`` is None) for scheduled ones."""
        first = jobs[0]
        hires = first.extras.hires
        self.pipe.scheduler = self._scheduler(jobs)
        with torch.inference_mode():
            tensors = None
            if prompts is None:  # (B, 77k, hidden) cond and uncond; SDXL adds its pooled pair
                stacked = [torch.cat(parts) for parts in zip(*embeds, strict=True)]
                tensors = dict(zip(EMBED_ARGS, stacked, strict=False))
            passes = None if prompts is None else [p.first for p in prompts]
            pipe, prepared, noise = self.pipe, None, None
            call = {"width": first.width, "height": first.height}
            if first.image is not None:  # img2img / inpainting (sdbatch.render.image_inputs)
                from sdbatch.render.image_inputs import finish, image_call

                pipe, call, prepared = image_call(self, jobs)
                noise = self._latents(jobs, first.width, first.height)
            else:
                call["latents"] = self._latents(jobs, first.width, first.height)
            modes = contextlib.nullcontext()
            if first.control is not None:  # ControlNet units (sdbatch.render.controlnet)
                from sdbatch.render.controlnet import with_control
                from sdbatch.render.controlnet_modes import control_modes

                pipe, call = with_control(self, pipe, call, jobs)
                modes = control_modes(pipe, jobs)
            with (
                modes,  # outside the AND wrapper's ControlNet rows (entered after it)
                self._conditioned(pipe, jobs, tensors, passes) as kwargs,
                image_noise(pipe, noise),
            ):
                result = pipe(
                    **kwargs,
                    **call,
                    num_inference_steps=first.steps,
                    guidance_scale=first.cfg,
                    generator=self._generators(jobs),
                    output_type="latent" if hires else "np",
                )
            images = result.images if prepared is None else finish(result.images, prepared)
            if hires:
                passes = None if prompts is None else [p.hires for p in prompts]
                images = self._hires(jobs, tensors, images, passes)
        out = []
        for img in images:  # (H, W, 3) floats in [0, 1]
            nan = bool(np.isnan(img).any())
            pixels = (np.nan_to_num(img) * 255).round().clip(0, 255).astype(np.uint8)
            out.append((pixels, nan))
        return out

    def _hires(self, jobs: Sequence[Job], tensors: dict | None, latents: torch.Tensor, passes=None):
        """A1111's hires fix: upscale the first pass, then img2img at the target size with the
        same components, the same prompts and fresh per-image generators (A1111 reseeds).
        ``passes``: the hires-pass schedules of scheduled prompts (then ``tensors`` is None)."""
        first = jobs[0]
        hires = first.extras.hires
        width, height = hires.target(first.width, first.height)
        total, strength = hires.pass_steps(first.steps)
        f = self.pipe.vae_scale_factor
        latent_mode = LATENT_MODES.get(hires.upscaler)
        if latent_mode:  # A1111's "Latent" (bilinear, no antialiasing) and its other modes
            mode, antialias = latent_mode
            image = torch.nn.functional.interpolate(
                latents, size=(height // f, width // f), mode=mode, antialias=antialias
            )
        else:  # decode, upscale the pictures (a resize or a model), img2img encodes them again
            from sdbatch.render.upscalers import hires_resize

            decoded = self.pipe.vae.decode(
                latents / self.pipe.vae.config.scaling_factor, return_dict=False
            )[0]
            pil = self.pipe.image_processor.postprocess(decoded, output_type="pil")
            models = self._upscalers
            image = [hires_resize(im, width, height, hires, models, self.device) for im in pil]
        img2img = self._img2img()
        img2img.scheduler = self._scheduler(jobs)
        call = {"image": image, "strength": strength}
        modes = contextlib.nullcontext()
        if first.control is not None:  # the extension steers the hires pass too
            from sdbatch.render.controlnet import with_control
            from sdbatch.render.controlnet_modes import control_modes

            img2img, call = with_control(self, img2img, call, jobs, hires=(width, height))
            modes = control_modes(img2img, jobs, hires=True)
        with modes, self._conditioned(img2img, jobs, tensors, passes) as kwargs:
            result = img2img(
                **kwargs,
                **call,
                num_inference_steps=total,
                guidance_scale=first.cfg,
                generator=self._generators(jobs),
                output_type="np",
            )
        return result.images

    def _img2img(self):
        """The img2img pipeline over the same components (no second copy of the weights)."""
        if self._img2img_pipe is None:
            from diffusers import AutoPipelineForImage2Image

            with warnings.catch_warnings():  # the swapped-in scheduler's config notices
                warnings.simplefilter("ignore", FutureWarning)
                self._img2img_pipe = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._img2img_pipe.set_progress_bar_config(disable=True)
        return self._img2img_pipe
