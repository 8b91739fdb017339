"""Way (a): the loop a user would write with plain diffusers; (a') with --by-seed.

(a) one ``pipe(prompt, ...)`` call per image, its own CPU generator, ``image.save(path)``.
(a') the same loop hand-batched by seed: one call per (prompt, sampler, cfg) with
``num_images_per_prompt=len(seeds)`` and one generator per seed.

The scheduler comes from ``sdbatch.plan.samplers.build_scheduler`` so "Euler a" is the same
scheduler as in sdbatch (a pure module: it costs no extra imports). Progress bars are off, as in
sdbatch's timed run. Jobs come from the JSON the harness wrote, so every way renders the same
set; images are named ``<index>.png``. The last stdout line is JSON with the moment the model
was ready and the first image was saved (epoch seconds), for the harness.

With ``--dtype bf16`` the weights load in bf16 (the expert's best CPU dtype, as sdbatch's
``run.dtype=bf16`` loads them).

    python bench/plain_loop.py JOBS.json OUT_DIR [--by-seed] [--dtype bf16]
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.plan.samplers import resolve_sampler
from sdbatch.render.schedulers import build_scheduler


def dtype(argv: list[str]) -> torch.dtype:
    """``--dtype bf16`` (or fp32, the default) from the command line."""
    name = argv[argv.index("--dtype") + 1] if "--dtype" in argv else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def main() -> None:
    argv = sys.argv[1:]
    jobs_file, out = Path(argv[0]), Path(argv[1])
    by_seed = "--by-seed" in argv[2:]
    jobs = json.loads(jobs_file.read_text())["jobs"]
    out.mkdir(parents=True, exist_ok=True)

    pipe = StableDiffusionPipeline.from_pretrained(
        EMBEDDED_MODEL_PATH, local_files_only=True, safety_checker=None, torch_dtype=dtype(argv)
    )
    pipe.set_progress_bar_config(disable=True)
    ready, first = time.time(), None

    if by_seed:  # one call per (prompt, sampler, cfg): all its seeds at once
        groups = [
            list(g)
            for _, g in itertools.groupby(
                jobs, key=lambda j: (j["prompt"], j["sampler"], j["cfg"], j["steps"])
            )
        ]
    else:
        groups = [[job] for job in jobs]
    for group in groups:
        job, seeds = group[0], [j["seed"] for j in group]
        sampler = resolve_sampler(job["sampler"])
        pipe.scheduler = build_scheduler(sampler, pipe.scheduler.config, seeds=seeds)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        images = pipe(
            job["prompt"],
            negative_prompt=job["negative_prompt"],
            num_inference_steps=job["steps"],
            guidance_scale=job["cfg"],
            width=job["width"],
            height=job["height"],
            num_images_per_prompt=len(group),
            generator=generators if by_seed else generators[0],
        ).images
        for j, image in zip(group, images, strict=True):
            image.save(out / f"{j['i']:04d}.png")
        first = first or time.time()

    print(
        json.dumps(
            {
                "ready": ready,
                "first": first,
                "images": len(jobs),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
