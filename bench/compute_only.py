"""Way (c): the limit. The denoising + VAE decode that sdbatch runs, and nothing else.

Same forward passes as sdbatch: batches of consecutive jobs sharing (sampler, cfg), up to
batch_size, one CPU generator per image, each prompt pair encoded once (diffusers'
``encode_prompt``, bit-identical to sdbatch's encoder for plain prompts), ``output_type="np"``
and sdbatch's float -> uint8 rounding. No PNG encoding, no file I/O, no manifest, no Hydra.

It prints, as its last stdout line, JSON with the ready / first-batch moments (epoch seconds)
and a 16-hex sha256 of every image's uint8 pixels: the harness compares them with sdbatch's
PNGs, which proves this really is sdbatch's compute (hashing 12 KiB per image costs ~10 us).

``--dtype bf16`` loads the weights in bf16; ``--compile`` wraps the UNet in ``torch.compile``
as ``run.compile`` does (the harness gives it a fresh, empty inductor cache, so the compile
time counts as a first run pays it), and the JSON then also holds each batch's seconds.

    python bench/compute_only.py JOBS.json [--dtype bf16] [--compile]
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from plain_loop import dtype  # bench/ is sys.path[0] when run as a script
from workloads import batches

from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.plan.samplers import resolve_sampler
from sdbatch.render.schedulers import build_scheduler


def main() -> None:
    argv = sys.argv[1:]
    spec = json.loads(Path(argv[0]).read_text())
    jobs, batch_size = spec["jobs"], spec["batch_size"]
    pipe = StableDiffusionPipeline.from_pretrained(
        EMBEDDED_MODEL_PATH, local_files_only=True, safety_checker=None, torch_dtype=dtype(argv)
    )
    pipe.set_progress_bar_config(disable=True)
    if "--compile" in argv:
        from sdbatch.render.loading import compile_unet

        compile_unet(pipe)
    ready, first = time.time(), None
    batch_seconds = []
    digests: dict[int, str] = {}
    embeds: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.inference_mode():
        for job in jobs:  # once per distinct (prompt, negative) pair
            key = (job["prompt"], job["negative_prompt"])
            if key not in embeds:
                embeds[key] = pipe.encode_prompt(job["prompt"], pipe.device, 1, True, key[1])
        for batch in batches(jobs, batch_size):
            t = time.perf_counter()
            job, seeds = batch[0], [j["seed"] for j in batch]
            pipe.scheduler = build_scheduler(
                resolve_sampler(job["sampler"]), pipe.scheduler.config, seeds=seeds
            )
            pairs = [embeds[(j["prompt"], j["negative_prompt"])] for j in batch]
            images = pipe(
                prompt_embeds=torch.cat([p[0] for p in pairs]),
                negative_prompt_embeds=torch.cat([p[1] for p in pairs]),
                num_inference_steps=job["steps"],
                guidance_scale=job["cfg"],
                width=job["width"],
                height=job["height"],
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type="np",
            ).images
            for j, img in zip(batch, images, strict=True):
                pixels = (np.nan_to_num(img) * 255).round().clip(0, 255).astype(np.uint8)
                digests[j["i"]] = hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
            first = first or time.time()
            batch_seconds.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "ready": ready,
                "first": first,
                "images": len(jobs),
                "digests": digests,
                "batch_seconds": batch_seconds,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
