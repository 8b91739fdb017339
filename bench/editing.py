"""`make bench-editing`: what A1111's prompt editing costs against a plain prompt.

One batch of 4 images, 20 steps, on the embedded shapes model and the CPU, rendered by
sdbatch's Renderer in one process: ``a [red:blue:0.5] circle ...`` (per-step conditioning: a
step callback that swaps diffusers' prompt embeddings halfway) against ``a red circle ...``
(the plain path, one set of embeddings). Both ways alternate, a b b a a b ..., after one
warm-up each; every timed render starts with empty embedding caches, so each pays its own
text encoding (the edited prompt has two texts). Medians, and every repetition.

    .venv/bin/python bench/editing.py                # ~1 min on one thread
    .venv/bin/python bench/editing.py --reps 3       # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAYS = {
    "plain": "a red circle on a white background",
    "edited": "a [red:blue:0.5] circle on a white background",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9, help="timed renders of each way (median)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4, help="images per batch (seeds 1..N)")
    ap.add_argument("--sampler", default="Euler a")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    return ap.parse_args(argv)


def jobs_for(prompt: str, args: argparse.Namespace) -> list:
    """The batch as sdbatch plans it: one prompt, seeds 1..N, the embedded model."""
    from sdbatch.plan.recipe import build_plan

    cfg = {
        "name": "bench-editing",
        "model": {"path": None, "name": None},
        "prompt": [prompt],
        "negative_prompt": "",
        "sampler": args.sampler,
        "steps": args.steps,
        "cfg": 7.0,
        "size": "32x32",
        "seeds": list(range(1, args.batch + 1)),
        "batch_size": args.batch,
        "run": {"dry_run": False, "device": "cpu", "dtype": "fp32", "progress": False},
    }
    plan = build_plan(cfg)
    assert len(plan.batches) == 1, "one batch per way"
    return list(plan.batches[0].jobs)


def timed_render(renderer, jobs) -> tuple[float, float, list]:
    """(wall s, CPU s of this process, images). CPU time is the steadier figure on a busy
    machine: with one torch thread, waiting for a core does not count."""
    renderer._embeds.clear()  # each render encodes its own texts, as a new prompt would
    renderer._texts.clear()
    start, cpu = time.perf_counter(), time.process_time()
    out = renderer.render(jobs)
    return time.perf_counter() - start, time.process_time() - cpu, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import command_line, machine

    from sdbatch.render.pipeline import Renderer

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    jobs = {way: jobs_for(prompt, args) for way, prompt in WAYS.items()}
    renderer = Renderer.load(jobs["plain"][0].model, device="cpu", dtype="fp32")
    pictures = {}
    for way in WAYS:  # warm-up: first-call costs (allocations, scheduler tables) not counted
        *_, pictures[way] = timed_render(renderer, jobs[way])
    assert not any(nan for out in pictures.values() for _, nan in out), "NaN image"
    same = all((a[0] == b[0]).all() for a, b in zip(*pictures.values(), strict=True))
    assert not same, "the edited prompt should change the pictures"

    times: dict[str, list[float]] = {way: [] for way in WAYS}
    cpu: dict[str, list[float]] = {way: [] for way in WAYS}
    for rep in range(args.reps):
        order = list(WAYS) if rep % 2 == 0 else list(WAYS)[::-1]  # a b, b a, a b, ...
        for way in order:
            seconds, cpu_seconds, _ = timed_render(renderer, jobs[way])
            times[way].append(seconds)
            cpu[way].append(cpu_seconds)

    med = {way: statistics.median(values) for way, values in times.items()}
    ratio = med["edited"] / med["plain"]
    med_cpu = {way: statistics.median(values) for way, values in cpu.items()}
    cpu_ratio = med_cpu["edited"] / med_cpu["plain"]
    paired = [e / p for e, p in zip(times["edited"], times["plain"], strict=True)]
    lines = [
        "# Prompt editing: cost against a plain prompt",
        "",
        f"Command: `{command_line('bench-editing')}`",
        "",
        *[f"- {key}: {value}" for key, value in machine(torch.get_num_threads()).items()],
        f"- load average (1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f}",
        "",
        f"One batch of {args.batch} images, {args.steps} steps, {args.sampler}, CFG 7, 32x32, "
        f"embedded sdbatch-shapes model, CPU fp32, {args.reps} repetitions each, alternating; "
        "each render encodes its own texts.",
        "",
        "| way | prompt | median wall s | images/s | median CPU s | every wall s |",
        "|---|---|---:|---:|---:|---|",
    ]
    for way, prompt in WAYS.items():
        every = ", ".join(f"{t:.3f}" for t in times[way])
        lines.append(
            f"| {way} | `{prompt}` | {med[way]:.3f} | {args.batch / med[way]:.2f} "
            f"| {med_cpu[way]:.3f} | {every} |"
        )
    lines += [
        "",
        f"- **edited / plain** (median wall): **{ratio:.3f}x** "
        f"({(med['edited'] - med['plain']) * 1000:+.0f} ms per batch)",
        f"- edited / plain by CPU seconds (steadier on a busy machine): **{cpu_ratio:.3f}x** "
        f"({(med_cpu['edited'] - med_cpu['plain']) * 1000:+.0f} ms)",
        f"- per repetition (edited / plain wall, same round): "
        f"{', '.join(f'{r:.3f}' for r in paired)}; median {statistics.median(paired):.3f}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
