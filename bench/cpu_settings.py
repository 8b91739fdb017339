"""Which CPU settings pay on the embedded model? One process, every variant in turn.

One pipeline per variant, all in this process, then batch after batch in turn (fp32, bf16,
autocast, channels_last, classic attention, fp32, ...), so a busy machine slows them alike;
the speed is the median of the per-round ratios to the fp32 batch, the pixel difference is
the last round's images against fp32's (max and mean per pixel, of 255). Variants:

- fp32: diffusers' defaults (SDPA attention, ``AttnProcessor2_0``; contiguous tensors);
- bf16: the whole pipeline in bf16 (what ``run.dtype=bf16`` loads);
- autocast: fp32 weights under ``torch.autocast("cpu", torch.bfloat16)``;
- channels_last: UNet and VAE in ``torch.channels_last``;
- classic attention: ``AttnProcessor`` (matmul + softmax) instead of SDPA.

The last stdout line is JSON for the harness.

    python bench/cpu_settings.py [--batch 4] [--size 64] [--rounds 7]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.plan.samplers import resolve_sampler
from sdbatch.render.schedulers import build_scheduler

VARIANTS = ("fp32", "bf16", "autocast", "channels_last", "classic attention")
PROMPT, NEGATIVE, SAMPLER = "a red circle on a white background", "", "DPM++ 2M Karras"


def pipeline(variant: str):
    dtype = torch.bfloat16 if variant == "bf16" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        EMBEDDED_MODEL_PATH, local_files_only=True, safety_checker=None, torch_dtype=dtype
    )
    pipe.set_progress_bar_config(disable=True)
    if variant == "channels_last":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if variant == "classic attention":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    return pipe


def render(pipe, variant: str, embeds, batch: int, size: int) -> np.ndarray:
    seeds = list(range(batch))
    pipe.scheduler = build_scheduler(resolve_sampler(SAMPLER), pipe.scheduler.config, seeds=seeds)
    cond, uncond = (e.to(pipe.unet.dtype) for e in embeds)
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if variant == "autocast"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), ctx:
        images = pipe(
            prompt_embeds=cond.repeat(batch, 1, 1),
            negative_prompt_embeds=uncond.repeat(batch, 1, 1),
            num_inference_steps=20,
            guidance_scale=7.0,
            width=size,
            height=size,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            output_type="np",
        ).images
    return (np.nan_to_num(images) * 255).round().clip(0, 255).astype(np.int16)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    pipes = {v: pipeline(v) for v in VARIANTS}
    with torch.inference_mode():
        embeds = pipes["fp32"].encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    for v in VARIANTS:  # warm-up
        render(pipes[v], v, embeds, args.batch, args.size)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    images: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for v in VARIANTS:
            t = time.perf_counter()
            images[v] = render(pipes[v], v, embeds, args.batch, args.size)
            seconds[v].append(time.perf_counter() - t)
    result = {"batch": args.batch, "size": args.size, "rounds": args.rounds, "variants": {}}
    for v in VARIANTS:
        diff = np.abs(images[v] - images["fp32"])
        speed = statistics.median(f / s for f, s in zip(seconds["fp32"], seconds[v], strict=True))
        r = result["variants"][v] = {
            "median_s": round(statistics.median(seconds[v]), 3),
            "speed_vs_fp32": round(speed, 3),
            "max_diff": int(diff.max()),
            "mean_diff": round(float(diff.mean()), 3),
        }
        print(
            f"  {v:17} batch of {args.batch} at {args.size}x{args.size}: median "
            f"{r['median_s']:.3f}s, x{r['speed_vs_fp32']:.2f} fp32's speed (median of "
            f"{args.rounds} rounds); vs fp32 max |diff| {r['max_diff']}/255, mean "
            f"{r['mean_diff']:.3f}/255",
            flush=True,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
