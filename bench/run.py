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

``make bench-cpu`` runs the CPU speed comparison instead: fp32 and bf16 ways side by side
(``--ways "a',b,c,a' bf16,b bf16,c bf16"``), the pixel judge on bf16 (bench/dtype_check.py),
bf16, autocast, channels_last and classic attention in one process (bench/cpu_settings.py),
one cold-cache ``torch.compile`` run (where compiling pays), and writes its report as the
``cpu`` section of BENCHMARKS.md (``make bench`` keeps that section).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report
import scale
from report import command_line
from ways import (
    base,
    compare,
    compare_digests,
    label,
    parse_ways,
    plain_images,
    run_compute,
    run_plain,
    run_sdbatch,
    run_way,
    sdbatch_command,
    sdbatch_images,
    way_dtype,
)
from workloads import CHECK, COMPILE, WORKLOADS, batches

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"a": "a_loop", "a'": "a_batched", "b": "b_sdbatch", "b8": "b8_sdbatch", "c": "c_compute"}


def folder(way: str) -> str:
    return FOLDERS[base(way)] + ("" if way_dtype(way) == "fp32" else f"_{way_dtype(way)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each way (median)")
    ap.add_argument(
        "--jobs",
        choices=sorted(WORKLOADS),
        default="default",
        help="default: 64 jobs; cpu: 32 jobs (make bench-cpu); small: 8 jobs for a quick check",
    )
    ap.add_argument("--skip-scale", action="store_true", help="leave out the 1M scale figures")
    ap.add_argument("--batched-loop", action="store_true", help="add way (a'): ~+25%% time")
    ap.add_argument(
        "--ways",
        type=parse_ways,
        help="the ways, comma-separated, e.g. \"a',b,c,b bf16\" (default: a,[a',]b,c)",
    )
    ap.add_argument("--dtype-check", action="store_true", help="judge bf16 on shapes_demo")
    ap.add_argument(
        "--settings-check", action="store_true", help="bf16, channels_last, attention in turn"
    )
    ap.add_argument("--compile-check", action="store_true", help="one cold torch.compile run")
    ap.add_argument("--section", help="write the report as this section of --out")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="report file")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (images, logs)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    return args


def jobs_file_of(workload, tmp: Path) -> Path:
    return tmp / "recipes" / f"{workload.recipe}.jobs.json"


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
            out = tmp / f"{folder(way)}-{rep}"
            res = run_way(way, jobs_file, workload.recipe, out, env, tmp)
            results[way].append(res)
            print(
                f"  rep {rep + 1}/{reps}  {way:7} {label(way):48} {res.wall:7.2f}s  "
                f"(ready {res.ready:.2f}s)  load {os.getloadavg()[0]:.2f}",
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
    """Every way against (b) of its dtype; bf16 against fp32 (a difference, not a check)."""
    lines, ok = [], True
    for dt in ("fp32", "bf16"):
        b_way = "b" if dt == "fp32" else f"b {dt}"
        if b_way not in results:
            continue
        b = sdbatch_images(results[b_way][0].out)
        for way in results:
            if way_dtype(way) != dt or base(way) == "b":
                continue
            if base(way) == "b8":  # other batch-mates: at most one level (tests/integration)
                what = f"({way}) vs ({b_way}), batch size 8 against 4"
                res = compare(what, sdbatch_images(results[way][0].out), b)
                lines.append(res.line(1))
                ok &= res.ok(1)
            elif base(way) in ("a", "a'"):
                tol = 1 if dt == "fp32" else 2
                what = f"({way}) vs ({b_way})" + (", batch size 4" if base(way) == "a" else "")
                res = compare(what, plain_images(results[way][0].out, jobs), b)
                lines.append(res.line(tol))
                ok &= res.ok(tol)
            else:
                res = compare_digests(
                    f"({way}) vs ({b_way}): pixel sha256 of every image",
                    results[way][0].digests,
                    jobs,
                    b,
                )
                tol = 0
                lines.append(res.line(tol) + f" ({way} computes what {b_way} writes)")
                ok &= res.ok(tol)
    if "b" in results and "b bf16" in results:
        res = compare(
            "(b bf16) vs (b): what bf16 changes",
            sdbatch_images(results["b bf16"][0].out),
            sdbatch_images(results["b"][0].out),
        )
        lines.append(res.line(255).rsplit(" (want", 1)[0] + " (a difference, not a check)")
    return lines, ok


def script(name: str, what: str, env: dict, tmp: Path) -> tuple[list[str], dict]:
    """A bench script as a process: its lines as it prints them, and its last-line JSON."""
    print(what, flush=True)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name)],
        env=env, cwd=tmp, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = proc.stdout.rstrip().splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    return [line.strip() for line in lines[:-1]], json.loads(lines[-1])


def compile_check(env: dict, tmp: Path) -> list[str]:
    """(c) eager, then (c) with torch.compile and an empty inductor cache, on COMPILE's jobs
    (a smaller last batch in every group): the compile time a first run pays (recompiles
    included), the steady batch time, and after how many batches compiling pays."""
    print(f"compile check: (c) eager, then compiled, cold cache; {COMPILE.describe()}")
    jobs_file = jobs_file_of(COMPILE, tmp)
    eager = run_compute(jobs_file, env, tmp)
    cold = {**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor-cache")}
    res = run_compute(jobs_file, cold, tmp, "fp32", True)
    sizes = [len(b) for b in batches(COMPILE.jobs(), COMPILE.batch_size)]
    full = [i for i, n in enumerate(sizes) if n == COMPILE.batch_size]
    steady = statistics.median(res.batch_seconds[i] for i in full[2:])
    plain = statistics.median(eager.batch_seconds[i] for i in full)
    cost = sum(res.batch_seconds) - sum(eager.batch_seconds) * steady / plain
    saving = plain - steady
    pays = f"pays after about {cost / saving:.0f} batches" if saving > 0 else "never pays here"
    same = sum(res.digests.get(i) == d for i, d in eager.digests.items())
    line = (
        f"torch.compile (UNet, cold cache), {COMPILE.describe()}: compiling and recompiling "
        f"cost {cost:.0f}s (first batch {res.batch_seconds[0]:.1f}s), then {steady:.3f}s a "
        f"batch of {COMPILE.batch_size} against eager {plain:.3f}s (x{plain / steady:.2f}): "
        f"{pays}; whole run {res.wall:.1f}s against eager {eager.wall:.1f}s; {same}/"
        f"{len(eager.digests)} images bit-identical to eager; load {os.getloadavg()[0]:.2f}"
    )
    print(f"  {line}", flush=True)
    return [line]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = WORKLOADS[args.jobs]
    ways = args.ways or ["a", *(["a'"] if args.batched_loop else []), "b", "c"]
    command = command_line("bench-cpu" if args.section == "cpu" else "bench")
    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="sdbatch-bench-"))
    env = {**os.environ, "SDBATCH_RECIPES": str(tmp / "recipes")}
    try:
        workload.write(tmp / "recipes")
        CHECK.write(tmp / "recipes")
        COMPILE.write(tmp / "recipes")
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
        judged = settings = ([], {})
        if args.dtype_check:
            what = "dtype check: shapes_demo prompts, fp32 vs bf16 vs autocast, judged"
            judged = script("dtype_check.py", what, env, tmp)
        if args.settings_check:
            what = "settings check: fp32, bf16, autocast, channels_last, attention, in turn"
            settings = script("cpu_settings.py", what, env, tmp)
        compiled = compile_check(env, tmp) if args.compile_check else []
        scale_res = {} if args.skip_scale else scale.measure(tmp)
        stats = report.summarize(results, len(workload.jobs()))
        threads = next((r.threads for rs in results.values() for r in rs if r.threads), None)
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
            judged=judged,
            settings=settings,
            compiled=compiled,
            scaled=not args.section,
        )
        print()
        print(text)
        report.write(args.out, text, args.section)
        print(f"wrote {args.out}; image checks {'passed' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
