"""`make bench-lora`: what switching LoRA sets between batches costs, against a batch's render.

The embedded shapes model and the example LoRA (examples/webui/models/Lora/orange.safetensors)
in sdbatch's Renderer, one process, the CPU: three sets in turn (orange at 1, orange at 0.5,
none), each a batch of 8 images (Euler a, 20 steps, 32x32). The file is read once, by the first
batch that uses it; after that a switch only sets the adapters' weights and which are active.
Medians over the repetitions, and the first batch's extra time (reading the file).

    .venv/bin/python bench/lora_switch.py             # ~1-2 min on one thread
    .venv/bin/python bench/lora_switch.py --reps 2    # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEBUI = ROOT / "examples" / "webui"
PROMPT = "a blue circle on a white background"
SETS = [f"{PROMPT} <lora:orange:1>", f"{PROMPT} <lora:orange:0.5>", PROMPT]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="rounds over the three sets")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from sdbatch.plan.recipe import build_plan
    from sdbatch.render.pipeline import Renderer

    torch.set_num_threads(args.threads)
    cfg = {
        "name": "bench-lora", "prompt": SETS, "sampler": "Euler a", "steps": 20,
        "size": "32x32", "seeds": list(range(8)), "batch_size": 8,
        "folders": {"lora": str(WEBUI / "models" / "Lora")},
    }  # fmt: skip
    batches = build_plan(cfg, []).batches
    assert len(batches) == len(SETS), "one batch per LoRA set"
    renderer = Renderer.load(batches[0].jobs[0].model, "cpu", "fp32")
    t = time.perf_counter()
    renderer.render(batches[0].jobs)  # reads the file
    first = time.perf_counter() - t
    switches, renders = [], []
    for _ in range(args.reps):
        for batch in batches:
            t = time.perf_counter()
            renderer._use_loras(batch.jobs[0])
            switches.append(time.perf_counter() - t)
            t = time.perf_counter()
            renderer.render(batch.jobs)
            renders.append(time.perf_counter() - t)
    render = statistics.median(renders)
    switch = statistics.median(switches)
    print(f"torch threads {args.threads}; files read: {renderer._loras.loads}")
    print(f"- switch between LoRA sets: median {switch * 1e3:.1f} ms, max "
          f"{max(switches) * 1e3:.1f} ms over {len(switches)} switches")  # fmt: skip
    print(f"- render of a batch of 8 (Euler a, 20 steps, 32x32): median {render:.3f} s")
    print(f"- switch / batch: {switch / render:.2%}")
    print(f"- first batch with the file (reads it): {first:.3f} s, +{first - render:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
