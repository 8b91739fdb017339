"""The benchmark's workloads, defined once so every way renders exactly the same jobs.

Pure Python (no torch): imported by the harness and by the worker scripts. ``Workload.jobs()``
lists jobs in sdbatch's plan order (sampler -> cfg -> prompt -> seed, outermost first) and
``batches()`` mirrors ``sdbatch.plan.recipe.make_batches``, so the compute-alone script runs
the same forward passes as sdbatch. The same workload is written as a recipe for
``sdbatch +recipe=...``.

Prompts are plain on purpose (no emphasis, well under 75 tokens, no ``{``/``|``/``__``): then
sdbatch's A1111 encoder is bit-identical to diffusers' ``encode_prompt`` and images can be
compared pixel for pixel.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROMPTS = (
    "a photo of a red fox standing in fresh snow",
    "an oil painting of a lighthouse at dusk",
    "a bowl of ramen on a wooden table, studio lighting",
    "a watercolor of a mountain lake with pine trees",
)
NEGATIVE = "blurry, lowres, jpeg artifacts"
SAMPLERS = ("Euler a", "DPM++ 2M Karras")
SEED0 = 1000


@dataclass(frozen=True)
class Workload:
    recipe: str  # recipe name (and file name) for sdbatch
    prompts: tuple[str, ...]
    samplers: tuple[str, ...]
    cfgs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int = 20
    width: int = 64
    height: int = 64
    batch_size: int = 4

    def jobs(self) -> list[dict]:
        """Every job, in sdbatch's plan order, as plain JSON-able dicts with an index."""
        product = itertools.product(self.samplers, self.cfgs, self.prompts, self.seeds)
        return [
            {
                "i": i,
                "prompt": prompt,
                "negative_prompt": NEGATIVE,
                "sampler": sampler,
                "steps": self.steps,
                "cfg": float(cfg),
                "seed": seed,
                "width": self.width,
                "height": self.height,
            }
            for i, (sampler, cfg, prompt, seed) in enumerate(product)
        ]

    def describe(self) -> str:
        n = len(self.prompts) * len(self.samplers) * len(self.cfgs) * len(self.seeds)
        return (
            f"{n} jobs = {len(self.prompts)} prompts x {len(self.samplers)} samplers "
            f"({', '.join(self.samplers)}) x {len(self.cfgs)} cfg x {len(self.seeds)} seeds, "
            f"{self.width}x{self.height}, {self.steps} steps, batch size {self.batch_size}"
        )

    def recipe_yaml(self) -> str:
        """The workload as an sdbatch recipe (JSON values are valid YAML)."""
        values = {
            "name": self.recipe,
            "prompt": list(self.prompts),
            "negative_prompt": NEGATIVE,
            "sampler": list(self.samplers),
            "steps": self.steps,
            "cfg": list(self.cfgs),
            "size": f"{self.width}x{self.height}",
            "seeds": list(self.seeds),
            "batch_size": self.batch_size,
        }
        lines = [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in values.items()]
        return "# written by bench/workloads.py\n" + "\n".join(lines) + "\n"

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write ``<recipe>.yaml`` (for SDBATCH_RECIPES) and ``<recipe>.jobs.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        recipe = folder / f"{self.recipe}.yaml"
        recipe.write_text(self.recipe_yaml())
        jobs = folder / f"{self.recipe}.jobs.json"
        jobs.write_text(json.dumps({"batch_size": self.batch_size, "jobs": self.jobs()}))
        return recipe, jobs


def _seeds(n: int) -> tuple[int, ...]:
    return tuple(range(SEED0, SEED0 + n))


WORKLOADS = {
    "default": Workload("sdbatch_bench_default", PROMPTS, SAMPLERS, (5.0, 8.0), _seeds(4)),
    "small": Workload("sdbatch_bench_small", PROMPTS[:1], SAMPLERS, (7.0,), _seeds(4)),
    # make bench-cpu: half the default (8 batches), so six ways x 3 repetitions stay short
    "cpu": Workload("sdbatch_bench_cpu", PROMPTS[:2], SAMPLERS, (5.0, 8.0), _seeds(4)),
}
# The compile check: batches of 6, 6 and a smaller last 4 per (sampler, cfg), so the figure
# pays the recompile a smaller last batch costs (12 batches; not a choice in --jobs).
COMPILE = Workload("sdbatch_bench_compile", PROMPTS, SAMPLERS, (5.0, 8.0), _seeds(4), batch_size=6)
# The bit-identity check: (a) against sdbatch with batch_size=1; both samplers, two prompts.
CHECK = Workload("sdbatch_bench_check", PROMPTS[:2], SAMPLERS, (7.0,), _seeds(1), batch_size=1)


def job_key(job: dict) -> tuple:
    """How a job is matched across ways (sdbatch's manifest has the same four fields)."""
    return (job["prompt"], job["sampler"], float(job["cfg"]), int(job["seed"]))


def render_key(job: dict) -> tuple:
    """What jobs of one forward pass share in sdbatch (model and steps are fixed here)."""
    return (job["sampler"], job["steps"], job["cfg"], job["width"], job["height"])


def batches(jobs: list[dict], size: int, key: Callable[[dict], tuple] = render_key) -> list:
    """Consecutive jobs with the same key, in chunks of ``size`` (sdbatch's make_batches)."""
    out = []
    for _, group in itertools.groupby(jobs, key=key):
        group = list(group)
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out
