"""Does ``run.dtype=bf16`` still draw what the prompt says? The shapes-demo prompts, judged.

Renders the prompts of ``recipes/shapes_demo.yaml`` (6 colours x 3 shapes on white; more seeds
than the recipe's two, so the judge has enough pictures to tell a drop) through sdbatch's own
``Renderer`` in three ways, batch after batch in turn so machine load hits them alike:
fp32 (the reference), bf16 weights (what ``run.dtype=bf16`` loads) and fp32 weights under
``torch.autocast("cpu", bfloat16)``. Prints, per way, the pixel judge's accuracy
(``sdbatch.shapes.judge``: colour, shape, background, all three), the pixel difference to the
fp32 image (max and mean per pixel, of 255) and the render time's ratio to fp32 (median of the
per-batch ratios). The last stdout line is JSON for the harness.

    python bench/dtype_check.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from sdbatch.plan.recipe import build_plan
from sdbatch.render.pipeline import Renderer
from sdbatch.shapes.judge import accuracy, judge
from sdbatch.shapes.world import Scene

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "shapes_demo.yaml"
WAYS = ("fp32", "bf16", "autocast")


def plan(seeds: int):
    """The shapes-demo recipe's jobs with ``seeds`` seeds, in its own batches."""
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["seeds"] = list(range(1, seeds + 1))
    cfg.pop("grids", None)
    return build_plan(cfg)


def scene(job) -> Scene:
    v = dict(job.vars)
    return Scene(v["shape"], v["colour"], v["background"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args(argv)
    p = plan(args.seeds)
    model = p.jobs[0].model
    renderers = {
        "fp32": Renderer.load(model, "cpu", "fp32"),
        "bf16": Renderer.load(model, "cpu", "bf16"),
    }
    renderers["autocast"] = renderers["fp32"]
    images: dict[str, list[np.ndarray]] = {w: [] for w in WAYS}
    seconds: dict[str, list[float]] = {w: [] for w in WAYS}
    scenes = []
    for batch in p.batches:
        scenes += [scene(j) for j in batch.jobs]
        for way in WAYS:
            ctx = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if way == "autocast"
                else contextlib.nullcontext()
            )
            t = time.perf_counter()
            with ctx:
                out = renderers[way].render(batch.jobs)
            seconds[way].append(time.perf_counter() - t)
            images[way] += [img for img, _nan in out]
    result = {"images": len(scenes), "seeds": args.seeds, "ways": {}}
    ref = np.stack(images["fp32"]).astype(np.int16)
    for way in WAYS:
        got = np.stack(images[way]).astype(np.int16)
        diff = np.abs(got - ref)
        score = accuracy([judge(img) for img in images[way]], scenes)
        speed = statistics.median(f / s for f, s in zip(seconds["fp32"], seconds[way], strict=True))
        result["ways"][way] = {
            **{k: round(v, 4) for k, v in score.items()},
            "max_diff": int(diff.max()),
            "mean_diff": round(float(diff.mean()), 3),
            "speed_vs_fp32": round(speed, 3),
        }
        r = result["ways"][way]
        print(
            f"  {way:8} judge all {r['all']:.3f} (colour {r['colour']:.3f}, shape "
            f"{r['shape']:.3f}, background {r['background']:.3f}); vs fp32 max |diff| "
            f"{r['max_diff']}/255, mean {r['mean_diff']:.2f}/255; speed x{r['speed_vs_fp32']:.2f}",
            flush=True,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
