"""Per-step conditioning on diffusers' own denoising loop: A1111's prompt editing, alternation
and AND (composable diffusion), image by image.

What A1111 does (its ``prompt_parser`` and ``CFGDenoiser``; the texts themselves come from
``sdbatch.plan.prompt_schedule``):

* A prompt is split at ``AND`` into parts with weights, and each part gets a schedule of texts;
  the negative prompt gets a schedule too but is never split (there ``AND`` and a trailing
  ``:1.2`` are plain text).
* Schedules are planned over the denoiser calls A1111 expects: ``steps``, doubled for its
  second-order samplers (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE; ``total_steps``). The hires
  pass is planned over its own steps (doubled likewise), ``when`` counting on from the first
  pass (``prompt_schedule``'s ``hires_steps``).
* Its denoiser counts its own calls from 0 in each pass, and at call ``n`` every image uses
  ``text_at_step(schedule, n)`` for each part and for the negative prompt.
* AND: each part is a UNet row of its own, and the result is ``uncond + sum_i (cond_i -
  uncond) * w_i * cfg``. A single part with a weight (``a cat:1.5``) is AND with one part.
* Lengths (77-token chunks): the parts are padded to the longest by repeating their last token
  vector; cond and uncond of different lengths are padded with the empty prompt's chunk (its
  "pad prompt/negative prompt to be same length" option, which ``sdbatch.render.encode``
  follows for plain prompts too: diffusers needs one shape for both halves, where A1111 with
  that option off runs them as two UNet batches). On SDXL the padding chunk is the encoded
  empty prompt too, while a negative prompt whose texts are all empty is zeros
  (``PassPrompts.empty_negative``; ``sdbatch.render.encode``), and the pooled text follows
  the hidden states: each text's own, from its first chunk.

How it is done here, without forking the loop:

* diffusers 0.42 calls ``callback_on_step_end`` after every UNet call of its loop, with ``i``
  the index of that call: the order-2 schedulers (Heun, KDPM2, KDPM2 ancestral,
  DPMSolverSDE) list each step's two evaluations as two entries of ``timesteps``, PLMS lists
  its extra first evaluation too, so ``i`` counts model calls exactly as A1111's counter does
  (Heun at 20 steps: 39 calls, planned as 40). The callback hands back ``prompt_embeds`` for
  call ``i + 1`` when any image's text changes: under CFG the ``[uncond, cond]`` batch that
  diffusers concatenated before the loop (2B rows), without CFG the B cond rows; SDXL also
  ``add_text_embeds`` (the pooled pair). Call 0 uses the embeddings passed in.
* AND: ``ComposedUNet`` stands in for ``pipe.unet`` during one pipeline call. It runs the
  uncond rows and every part's rows in one UNet batch and returns, in the text half,
  ``uncond + sum_i w_i * (cond_i - uncond)``, so that diffusers' own ``uncond + cfg * (text -
  uncond)`` gives A1111's result. Without CFG (cfg <= 1, where diffusers runs the cond rows
  only and uses them as they are) it returns ``uncond + cfg * sum_i ...`` itself, A1111's value.
  The callback only moves its call counter. With ControlNet the ControlNet runs on the
  same rows with the same texts (``sdbatch.render.controlnet.composed_controlnet``), as
  the extension runs it inside A1111's UNet call, and its residuals pass through.
* Batches: each image is conditioned as A1111 conditions it in a batch of its own. Its padding
  depends on its texts only, and the renderer shares a forward pass only between images whose
  lengths agree at every call (``signature``), so an image never depends on its batch-mates
  (in an A1111 batch, parts are padded to the longest of the whole batch).
* A prompt without editing, alternation, AND or a trailing weight, with a negative prompt
  without editing, never reaches this module: the renderer encodes it once, as before.
* Hires fix: the img2img pass has its own schedule, its counter starts at 0 again, and it
  counts its own calls (diffusers runs ``int(steps * denoise)`` steps there, the schedule is
  planned over the pass's full steps as A1111 plans it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from sdbatch.plan.prompt_schedule import has_scheduling, prompt_schedule, split_and, text_at_step

Schedule = tuple[tuple[int, str], ...]  # (end_step, text) pairs, as prompt_schedule gives them
# (text, empty_negative) -> (hidden states (1, tokens, C), pooled (1, P) for SDXL, else None).
# ``empty_negative``: the text belongs to a negative prompt whose texts are all empty, which
# A1111 encodes as zeros on SDXL (``force_zero_negative_prompt``); otherwise texts encode alike.
Encode = Callable[[str, bool], tuple[torch.Tensor, torch.Tensor | None]]


def total_steps(steps: int, order: int) -> int:
    """The denoiser calls A1111 plans for: twice the steps for its second-order samplers. They
    are exactly the ones whose diffusers scheduler has ``order == 2`` in our sampler table
    (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE and their Karras variants)."""
    return steps * 2 if order == 2 else steps


@dataclass(frozen=True)
class PassPrompts:
    """What one image is conditioned on in one sampling pass."""

    parts: tuple[tuple[Schedule, float], ...]  # per AND part: its schedule and weight
    negative: Schedule

    @property
    def composed(self) -> bool:
        """AND (or a weighted single part): needs ``ComposedUNet``."""
        return len(self.parts) > 1 or self.parts[0][1] != 1.0

    def texts_at(self, step: int) -> tuple[tuple[str, ...], str]:
        """The part texts and the negative text at denoiser call ``step`` (0-based)."""
        parts = tuple(text_at_step(schedule, step) for schedule, _ in self.parts)
        return parts, text_at_step(self.negative, step)

    @property
    def empty_negative(self) -> bool:
        """Every text of the negative schedule is empty: A1111 zeroes it on SDXL (a negative
        like ``[:ugly:0.5]`` is encoded as text, its empty steps included)."""
        return all(text == "" for _, text in self.negative)

    def schedules(self) -> list[Schedule]:
        return [schedule for schedule, _ in self.parts] + [self.negative]

    def constant(self) -> tuple[str, str] | None:
        """(prompt, negative) when every call uses the same two texts and no AND."""
        if self.composed:
            return None
        prompts = {text for _, text in self.parts[0][0]}
        negatives = {text for _, text in self.negative}
        if len(prompts) == 1 and len(negatives) == 1:
            return prompts.pop(), negatives.pop()
        return None


def pass_prompts(prompt: str, negative: str, steps: int, hires_steps: int | None = None):
    """A1111's schedules of one image for the first pass (``hires_steps`` None) or the hires
    pass; ``steps`` and ``hires_steps`` as ``total_steps`` gives them. A prompt without
    editing, alternation or AND keeps its text unchanged (one entry)."""
    end = steps if hires_steps is None else hires_steps
    if has_scheduling(prompt):
        parts = tuple(
            (tuple(prompt_schedule(text, steps, hires_steps)), weight)
            for text, weight in split_and(prompt)
        )
    else:
        parts = ((((end, prompt),), 1.0),)
    # No "[" means no edit and no alternation; such a negative keeps its text as written.
    if "[" in negative:
        negative_schedule = tuple(prompt_schedule(negative, steps, hires_steps))
    else:
        negative_schedule = ((end, negative),)
    return PassPrompts(parts, negative_schedule)


@dataclass(frozen=True)
class JobPrompts:
    """One image's conditioning in its first pass and (with hires fix) its hires pass."""

    first: PassPrompts
    hires: PassPrompts | None = None

    def plain(self) -> tuple[str, str] | None:
        """(prompt, negative) when both passes use the same two texts throughout: the image
        then takes the plain path (no callback, no wrapper). For a prompt without
        scheduling these are the job's own texts, so its pixels are what they always were."""
        first = self.first.constant()
        if first is None or (self.hires is not None and self.hires.constant() != first):
            return None
        return first


def job_prompts(
    prompt: str, negative: str, steps: int, hires_steps: int | None, order: int
) -> JobPrompts:
    """``steps``, ``hires_steps``: as the job has them (hires 0 = the first pass's count);
    ``order``: the scheduler's (2 for second-order samplers)."""
    first_total = total_steps(steps, order)
    hires = None
    if hires_steps is not None:
        hires_total = total_steps(hires_steps or steps, order)
        hires = pass_prompts(prompt, negative, first_total, hires_total)
    return JobPrompts(pass_prompts(prompt, negative, first_total), hires)


def signature(prompts: PassPrompts, tokens: Callable[[str, bool], int]) -> tuple[int, ...]:
    """The padded length at every denoiser call: images share a UNet batch only when these
    agree. ``tokens(text, negative)`` is the encoded length of a text. Every schedule ends at
    the pass's planned calls (``prompt_schedule`` always has that entry), and past its end a
    schedule gives its first text: two calls more cover every call a sampler makes."""
    limit = max(end for schedule in prompts.schedules() for end, _ in schedule) + 2
    out = []
    for step in range(limit):
        parts, negative = prompts.texts_at(step)
        longest = max(tokens(text, False) for text in parts)
        out.append(max(longest, tokens(negative, prompts.empty_negative)))
    return tuple(out)


@dataclass(frozen=True)
class Step:
    """The tensors of one denoiser call for a batch of B images with P parts in all."""

    uncond: torch.Tensor  # (B, L, C)
    cond: torch.Tensor  # (P, L, C): every image's parts, image by image
    owner: torch.Tensor  # (P,) long: the image of each cond row
    weights: torch.Tensor  # (P,) float32
    uncond_pooled: torch.Tensor | None = None  # SDXL: (B, pooled)
    cond_pooled: torch.Tensor | None = None  # SDXL: (P, pooled)


class StepConditioning:
    """Every image's tensors at every denoiser call of one pass, built when first asked for
    and kept per distinct combination of texts."""

    def __init__(self, images: Sequence[PassPrompts], encode: Encode, empty: torch.Tensor | None):
        """``empty``: the empty prompt's encoding (1, 77, C), the chunk that pads cond or uncond
        to the other's length (A1111's ``cond_stage_model_empty_prompt``, never zeros); None
        only where all texts have one length."""
        self.images = list(images)
        self.composed = any(image.composed for image in self.images)
        self._encode, self._empty = encode, empty
        self._built: dict[tuple, Step] = {}
        owner = [b for b, image in enumerate(self.images) for _ in image.parts]
        weights = [weight for image in self.images for _, weight in image.parts]
        self._owner = torch.tensor(owner, dtype=torch.long)
        self._weights = torch.tensor(weights, dtype=torch.float32)

    def key(self, step: int) -> tuple:
        return tuple(image.texts_at(step) for image in self.images)

    def at(self, step: int) -> Step:
        key = self.key(step)
        if key not in self._built:
            self._built[key] = self._build(key)
        return self._built[key]

    def _build(self, key: tuple) -> Step:
        conds, unconds, cond_pooled, uncond_pooled = [], [], [], []
        for image, (parts, negative) in zip(self.images, key, strict=True):
            encoded = [self._encode(text, False) for text in parts]
            uncond, pooled = self._encode(negative, image.empty_negative)
            length = max(hidden.shape[1] for hidden, _ in encoded)
            cond = torch.cat([_repeat_last(hidden, length) for hidden, _ in encoded])
            cond, uncond = self._pad_pair(cond, uncond)
            conds.append(cond)
            unconds.append(uncond)
            if pooled is not None:
                cond_pooled += [p for _, p in encoded]
                uncond_pooled.append(pooled)
        device = conds[0].device
        cat = torch.cat
        return Step(
            uncond=cat(unconds),
            cond=cat(conds),
            owner=self._owner.to(device),
            weights=self._weights.to(device),
            uncond_pooled=cat(uncond_pooled) if uncond_pooled else None,
            cond_pooled=cat(cond_pooled) if cond_pooled else None,
        )

    def _pad_pair(self, cond: torch.Tensor, uncond: torch.Tensor):
        """A1111's pad_cond_uncond: the shorter side gets whole empty-prompt chunks."""
        gap = cond.shape[1] - uncond.shape[1]
        if gap == 0:
            return cond, uncond
        if self._empty is None or abs(gap) % self._empty.shape[1]:
            raise ValueError(f"cannot pad conditionings of {cond.shape[1]} and "
                             f"{uncond.shape[1]} tokens to one length")  # fmt: skip
        repeats = abs(gap) // self._empty.shape[1]
        if gap > 0:
            return cond, torch.cat([uncond, self._empty.repeat(1, repeats, 1)], dim=1)
        return torch.cat([cond, self._empty.repeat(cond.shape[0], repeats, 1)], dim=1), uncond


def _repeat_last(hidden: torch.Tensor, length: int) -> torch.Tensor:
    """(1, n, C) -> (1, length, C) by repeating the last token vector (A1111's stack_conds)."""
    missing = length - hidden.shape[1]
    if missing == 0:
        return hidden
    return torch.cat([hidden, hidden[:, -1:].expand(-1, missing, -1)], dim=1)


class ComposedUNet(torch.nn.Module):
    """Stands in for ``pipe.unet`` during one pipeline call with AND (see the module
    docstring). Everything but ``forward`` (config, dtype, add_embedding, ...) is the UNet's."""

    def __init__(self, unet: torch.nn.Module, conditioning: StepConditioning, cfg: float):
        super().__init__()
        self.unet = unet
        self.conditioning = conditioning
        self.cfg = cfg
        self.step = 0  # the denoiser call about to run; the step callback moves it

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    def rows(self, sample: torch.Tensor) -> tuple[Step, int, bool, torch.Tensor]:
        """(this call's Step, images B, under CFG, the incoming rows to evaluate): the uncond
        half (under CFG both halves hold the same latents), then each part of each image
        from that image's cond row."""
        now = self.conditioning.at(self.step)
        b = now.uncond.shape[0]
        guided = sample.shape[0] == 2 * b
        if not guided and sample.shape[0] != b:
            raise RuntimeError(f"UNet batch of {sample.shape[0]} rows for {b} images")
        source = torch.cat([torch.arange(b, device=now.owner.device), now.owner + b * guided])
        return now, b, guided, source.to(sample.device)

    def forward(
        self,
        sample,
        timestep,
        encoder_hidden_states=None,
        *args,
        added_cond_kwargs=None,
        return_dict: bool = True,
        **kwargs,
    ):
        now, b, guided, source = self.rows(sample)
        if isinstance(timestep, torch.Tensor) and timestep.ndim and timestep.numel() > 1:
            timestep = timestep[source]
        if kwargs.get("mid_block_additional_residual") is not None:  # ControlNet's
            from sdbatch.render.controlnet import fit_residuals

            kwargs = fit_residuals(kwargs, source, sample.shape[0])
        if added_cond_kwargs is not None:  # SDXL: per-row pooled text and size conditioning
            unknown = set(added_cond_kwargs) - {"text_embeds", "time_ids"}
            if unknown:
                raise NotImplementedError(f"AND with {sorted(unknown)} is not supported")
            added_cond_kwargs = {
                "text_embeds": torch.cat([now.uncond_pooled, now.cond_pooled]),
                "time_ids": added_cond_kwargs["time_ids"][source],
            }
        hidden = torch.cat([now.uncond, now.cond])
        out = self.unet(
            sample[source], timestep, hidden, *args,
            added_cond_kwargs=added_cond_kwargs, return_dict=False, **kwargs,
        )[0]  # fmt: skip
        uncond, cond = out[:b], out[b:]
        weights = now.weights.to(out.dtype).view(-1, *[1] * (out.ndim - 1))
        parts = (cond - uncond[now.owner]) * weights
        delta = torch.zeros_like(uncond).index_add_(0, now.owner, parts)
        if guided:  # diffusers: uncond + cfg * (text - uncond) = uncond + cfg * delta
            result = torch.cat([uncond, uncond + delta])
        else:  # diffusers uses the output as it is
            result = uncond + self.cfg * delta
        if not return_dict:
            return (result,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=result)


class StepCallback:
    """diffusers' ``callback_on_step_end``: after call ``i``, the conditioning of call
    ``i + 1`` (new embeddings, or the wrapper's counter for AND)."""

    def __init__(self, conditioning: StepConditioning, unet: ComposedUNet | None = None):
        self.conditioning, self.unet = conditioning, unet

    def __call__(self, pipe, i: int, t, tensors: dict) -> dict:
        step = i + 1
        if self.unet is not None:
            self.unet.step = step
            return {}
        if self.conditioning.key(step) == self.conditioning.key(i):
            return {}  # same texts for every image: diffusers keeps its tensors
        now = self.conditioning.at(step)
        guided = tensors["prompt_embeds"].shape[0] == 2 * now.uncond.shape[0]
        out = {"prompt_embeds": torch.cat([now.uncond, now.cond]) if guided else now.cond}
        if now.cond_pooled is not None:
            pooled = torch.cat([now.uncond_pooled, now.cond_pooled])
            out["add_text_embeds"] = pooled if guided else now.cond_pooled
        return out


@contextlib.contextmanager
def conditioned_call(pipe, conditioning: StepConditioning, cfg: float) -> Iterator[dict]:
    """The keyword arguments for one ``pipe(...)`` call that follows ``conditioning`` call by
    call: the embeddings of call 0 and the step callback. With AND, ``pipe.unet`` is the
    ``ComposedUNet`` until the block ends (set on the instance, so the pipeline's config and
    any pipeline sharing the UNet are untouched)."""
    first = conditioning.at(0)
    unet = None
    if conditioning.composed:
        unet = ComposedUNet(pipe.unet, conditioning, cfg)
        # The wrapper builds its own batch; diffusers only needs B rows of matching shapes.
        cond, pooled, inputs = first.uncond, first.uncond_pooled, []
    else:
        cond, pooled, inputs = first.cond, first.cond_pooled, ["prompt_embeds"]
    kwargs = {"prompt_embeds": cond, "negative_prompt_embeds": first.uncond}
    if pooled is not None:
        kwargs["pooled_prompt_embeds"] = pooled
        kwargs["negative_pooled_prompt_embeds"] = first.uncond_pooled
        inputs = inputs and [*inputs, "add_text_embeds"]
    kwargs["callback_on_step_end"] = StepCallback(conditioning, unet)
    kwargs["callback_on_step_end_tensor_inputs"] = inputs
    if unet is None:
        yield kwargs
        return
    original = pipe.unet
    object.__setattr__(pipe, "unet", unet)  # DiffusionPipeline.__setattr__ would edit config
    try:
        if getattr(pipe, "controlnet", None) is None:
            yield kwargs
            return
        from sdbatch.render.controlnet import composed_controlnet

        with composed_controlnet(pipe.controlnet, unet):
            yield kwargs
    finally:
        object.__setattr__(pipe, "unet", original)
