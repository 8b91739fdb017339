"""`make bench`: is sdbatch faster than the plain diffusers loop you would write?

Runs, side by side in one go and as whole processes, alternating a, a', b, c, a, ...:
  (a)  the plain loop (bench/plain_loop.py), one pipe() call per image, PNG via Pillow;
  (a') with --batched-loop: the same loop hand-batched by seed (off by default: here it runs
       exactly sdbatch's forward passes, so it adds a quarter to the run time for a number
       close to (c)'s plus PNG saving);
  (b)  `sdbatch +recipe=<bench recipe>` end to end (plan, batches, PNG + infotext, manifest);
  (c)  the compute alone (bench/compute_only.py): sdbatch's forward passes without any I/O.
Checks that they make the same images, measures the 1M-job / 1M-row scale figures
(bench/scale.py), prints a Markdown report and writes it to --out (BENCHMARKS.md).

    .venv/bin/python bench/run.py              # the default: 6-9 min on a quiet 2-core machine
    .venv/bin/python bench/run.py --jobs small --reps 1 --skip-scale   # smoke check, ~1-2 min
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import report
import scale
from report import command_line
from ways import (
    LABELS,
    compare,
    compare_digests,
    plain_images,
    run_compute,
    run_plain,
    run_sdbatch,
    sdbatch_command,
    sdbatch_images,
)
from workloads import CHECK, WORKLOADS

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"a": "a_loop", "a'": "a_batched", "b": "b_sdbatch", "c": "c_compute"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each way (median)")
    ap.add_argument(
        "--jobs",
        choices=sorted(WORKLOADS),
        default="default",
        help="default: 64 jobs; small: 8 jobs for a quick check",
    )
    ap.add_argument("--skip-scale", action="store_true", help="leave out the 1M scale figures")
    ap.add_argument("--batched-loop", action="store_true", help="add way (a'): ~+25%% time")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="report file")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (images, logs)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    return args


def check_identical(tmp: Path, env: dict) -> tuple[str, bool]:
    """Untimed (and a warm-up): (a) against sdbatch with batch_size=1 must be bit-identical."""
    recipes = tmp / "recipes"
    jobs_file = recipes / f"{CHECK.recipe}.jobs.json"
    a = run_plain(jobs_file, tmp / "check_a", False, env, tmp)
    b = run_sdbatch(CHECK.recipe, tmp / "check_b", env, tmp)
    res = compare(
        f"(a) vs (b) with batch_size=1, {len(CHECK.jobs())} jobs (untimed)",
        plain_images(a.out, CHECK.jobs()),
        sdbatch_images(b.out),
    )
    return res.line(0), res.ok(0)


def timed_runs(ways: list[str], workload, tmp: Path, env: dict, reps: int) -> dict[str, list]:
    """Alternate the ways for every repetition; keep the first repetition's images."""
    jobs_file = tmp / "recipes" / f"{workload.recipe}.jobs.json"
    results: dict[str, list] = {w: [] for w in ways}
    start = time.perf_counter()
    for rep in range(reps):
        for way in ways:
            out = tmp / f"{FOLDERS[way]}-{rep}"
            if way in ("a", "a'"):
                res = run_plain(jobs_file, out, way == "a'", env, tmp)
            elif way == "b":
                res = run_sdbatch(workload.recipe, out, env, tmp)
            else:
                res = run_compute(jobs_file, env, tmp)
            results[way].append(res)
            print(
                f"  rep {rep + 1}/{reps}  {way:2} {LABELS[way]:42} {res.wall:7.2f}s  "
                f"(ready {res.ready:.2f}s)",
                flush=True,
            )
            if rep and out.exists():
                shutil.rmtree(out)  # only the first repetition's images are compared
        if rep == 0 and reps > 1:
            took = time.perf_counter() - start
            print(
                f"  repetition 1 took {took:.0f}s; about {took * (reps - 1):.0f}s to go", flush=True
            )
    return results


def image_checks(results: dict, jobs: list[dict]) -> tuple[list[str], bool]:
    b = sdbatch_images(results["b"][0].out)
    lines, ok = [], True
    if "a" in results:
        res = compare("(a) vs (b), batch size 4", plain_images(results["a"][0].out, jobs), b)
        lines.append(res.line(1))
        ok &= res.ok(1)
    if "a'" in results:
        res = compare("(a') vs (b)", plain_images(results["a'"][0].out, jobs), b)
        lines.append(res.line(1))
        ok &= res.ok(1)
    if "c" in results:
        res = compare_digests(
            "(c) vs (b): pixel sha256 of every image", results["c"][0].digests, jobs, b
        )
        lines.append(res.line(0) + " (c computes exactly what b writes)")
        ok &= res.ok(0)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = WORKLOADS[args.jobs]
    ways = ["a", *(["a'"] if args.batched_loop else []), "b", "c"]
    command = command_line("bench")
    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="sdbatch-bench-"))
    env = {**os.environ, "SDBATCH_RECIPES": str(tmp / "recipes")}
    try:
        workload.write(tmp / "recipes")
        CHECK.write(tmp / "recipes")
        print(f"workload: {workload.describe()}")
        print(f"(b) is: {sdbatch_command(workload.recipe)}   (recipes in {tmp / 'recipes'})")
        print(
            "check: (a) vs sdbatch with batch_size=1 (untimed; also warms the caches)", flush=True
        )
        line, ok = check_identical(tmp, env)
        print(f"  {line}", flush=True)
        print(f"timed: {args.reps} repetition(s) of {', '.join(ways)}", flush=True)
        results = timed_runs(ways, workload, tmp, env, args.reps)
        lines, ok_images = image_checks(results, workload.jobs())
        checks = [line, *lines]
        ok &= ok_images
        scale_res = {} if args.skip_scale else scale.measure(tmp)
        stats = report.summarize(results, len(workload.jobs()))
        threads = next((r.threads for r in results["a"] if r.threads), None)
        text = report.markdown(
            command=command,
            info=report.machine(threads),
            workload=workload.describe(),
            reps=args.reps,
            stats=stats,
            results=results,
            checks=checks,
            scale=scale_res,
            load=(load0, os.getloadavg()[0]),
        )
        print()
        print(text)
        args.out.write_text(text)
        print(f"wrote {args.out}; image checks {'passed' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
