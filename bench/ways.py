"""The three ways (plus a'), each run as a whole process, and the checks that they agree.

Wall time is spawn to exit, so Python start-up, imports and model loading count: that is what a
user waits for. Each process also tells when its model was ready and its first image done
(workers print epoch moments; sdbatch's are the first batch's ``started``/``finished`` in its
manifest), which splits the wall into start-up and rendering.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from procs import spawn
from workloads import job_key

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

LABELS = {
    "a": "plain diffusers loop, 1 image/call",
    "a'": "plain loop hand-batched by seed",
    "b": "sdbatch CLI (PNG+infotext, manifest)",
    "b8": "sdbatch CLI, batch_size=8 (its batches span prompts)",
    "c": "compute alone (sdbatch's batches, no I/O)",
}
DTYPES = ("fp32", "bf16")


def base(way: str) -> str:
    """``"b bf16"`` -> ``"b"``: a way is a base way (a, a', b, c) and optionally a dtype."""
    return way.split()[0]


def way_dtype(way: str) -> str:
    parts = way.split()
    return parts[1] if len(parts) > 1 else "fp32"


def label(way: str) -> str:
    dt = way_dtype(way)
    return LABELS[base(way)] + ("" if dt == "fp32" else f", {dt}")


def parse_ways(text: str) -> list[str]:
    """``a,a',b,c,a' bf16,b bf16`` -> the ways, each checked."""
    ways = [w.strip() for w in text.split(",") if w.strip()]
    for way in ways:
        if base(way) not in LABELS or way_dtype(way) not in DTYPES or len(way.split()) > 2:
            raise ValueError(f"unknown way {way!r}: a, a', b, b8 or c, optionally with ' bf16'")
    return ways


@dataclass
class Result:
    way: str
    wall: float  # seconds, spawn to exit
    rss_mib: float  # the process's peak RSS
    ready: float | None  # seconds from spawn to model loaded
    first: float | None  # seconds from spawn to the first image (or batch) done
    cpu: float = 0.0  # user + system CPU seconds
    out: Path | None = None  # where its PNGs are (a, a', b)
    digests: dict[int, str] = field(default_factory=dict)  # job index -> pixel sha (c)
    threads: int | None = None
    batch_seconds: list = field(default_factory=list)  # (c) each batch's seconds


def _worker(script: str, args: list, env: dict, cwd: Path) -> tuple:
    proc = spawn([sys.executable, str(BENCH / script), *map(str, args)], env, str(cwd))
    info = json.loads(proc.last_line())
    ready = info["ready"] - proc.spawned
    first = info["first"] - proc.spawned if info.get("first") else None
    return proc, info, ready, first


def run_plain(
    jobs_file: Path, out: Path, by_seed: bool, env: dict, cwd: Path, dtype: str = "fp32"
) -> Result:
    """(a), or (a') with by_seed."""
    args = [jobs_file, out, *(["--by-seed"] if by_seed else []), "--dtype", dtype]
    proc, info, ready, first = _worker("plain_loop.py", args, env, cwd)
    way = ("a'" if by_seed else "a") + ("" if dtype == "fp32" else f" {dtype}")
    return Result(
        way, proc.wall, proc.rss_mib, ready, first, proc.cpu, out, {}, info.get("threads")
    )


def run_compute(
    jobs_file: Path, env: dict, cwd: Path, dtype: str = "fp32", compile: bool = False
) -> Result:
    """(c): digests instead of files. ``compile``: a cold inductor cache of its own."""
    args = [jobs_file, "--dtype", dtype, *(["--compile"] if compile else [])]
    proc, info, ready, first = _worker("compute_only.py", args, env, cwd)
    digests = {int(k): v for k, v in info["digests"].items()}
    threads = info.get("threads")
    way = "c" + ("" if dtype == "fp32" else f" {dtype}")
    res = Result(way, proc.wall, proc.rss_mib, ready, first, proc.cpu, None, digests, threads)
    res.batch_seconds = info.get("batch_seconds", [])
    return res


BATCH_8 = 8  # (b8): a batch holds every job of a (sampler, cfg) of the cpu workload


def run_sdbatch(
    recipe: str, out: Path, env: dict, cwd: Path, dtype: str = "fp32", batch: int | None = None
) -> Result:
    """(b): the real CLI, end to end, into a fresh folder; (b8) with ``batch_size=8``, which
    lets one forward pass hold several prompts (a hand-batched loop's call holds one)."""
    import pyarrow.parquet as pq

    cmd = [str(BIN / "sdbatch"), f"+recipe={recipe}", f"output.dir={out}", "run.progress=false"]
    if dtype != "fp32":
        cmd.append(f"run.dtype={dtype}")
    if batch is not None:
        cmd.append(f"batch_size={batch}")
    proc = spawn(cmd, env, str(cwd))
    times = pq.read_table(out / "manifest", columns=["started", "finished"])
    ready = min(times["started"].to_pylist()).timestamp() - proc.spawned
    first = min(times["finished"].to_pylist()).timestamp() - proc.spawned
    way = ("b" if batch is None else f"b{batch}") + ("" if dtype == "fp32" else f" {dtype}")
    return Result(way, proc.wall, proc.rss_mib, ready, first, proc.cpu, out)


def run_way(way: str, jobs_file: Path, recipe: str, out: Path, env: dict, cwd: Path) -> Result:
    """Any way by its name (``a``, ``a'``, ``b``, ``b8``, ``c``, each optionally `` bf16``)."""
    b, dt = base(way), way_dtype(way)
    if b in ("a", "a'"):
        return run_plain(jobs_file, out, b == "a'", env, cwd, dt)
    if b == "b":
        return run_sdbatch(recipe, out, env, cwd, dt)
    if b == "b8":
        return run_sdbatch(recipe, out, env, cwd, dt, BATCH_8)
    return run_compute(jobs_file, env, cwd, dt)


def sdbatch_command(recipe: str) -> str:
    return f"sdbatch +recipe={recipe} output.dir=<fresh tmp dir> run.progress=false"


# ---------------------------------------------------------------- do they make the same images?


@dataclass
class Comparison:
    what: str
    compared: int = 0
    identical: int = 0
    max_diff: int = 0
    missing: list = field(default_factory=list)  # keys one side lacks
    diff_sum: float = 0.0  # sum over images of the mean |diff| per pixel

    def ok(self, tolerance: int) -> bool:
        return self.compared > 0 and not self.missing and self.max_diff <= tolerance

    def line(self, tolerance: int) -> str:
        verdict = "PASS" if self.ok(tolerance) else "FAIL"
        want = "bit-identical" if tolerance == 0 else f"max |diff| <= {tolerance}/255"
        miss = f", {len(self.missing)} missing" if self.missing else ""
        return (
            f"{self.what}: {self.identical}/{self.compared} bit-identical, max |diff| "
            f"{self.max_diff}/255, mean {self.mean_diff():.3f}/255{miss} (want {want}): {verdict}"
        )

    def mean_diff(self) -> float:
        return self.diff_sum / self.compared if self.compared else 0.0


def plain_images(out: Path, jobs: list[dict]) -> dict[tuple, Path]:
    """(a)/(a') name images by job index."""
    return {job_key(j): out / f"{j['i']:04d}.png" for j in jobs}


def sdbatch_images(out: Path) -> dict[tuple, Path]:
    """sdbatch's images, keyed from its manifest's prompt/sampler/cfg/seed."""
    import pyarrow.parquet as pq

    cols = ["prompt", "sampler", "cfg", "seed", "image", "status"]
    rows = pq.read_table(out / "manifest", columns=cols).to_pylist()
    return {job_key(r): out / r["image"] for r in rows if r["status"] == "ok"}


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def compare(what: str, left: dict[tuple, Path], right: dict[tuple, Path]) -> Comparison:
    """Decode both sets of PNGs and compare job by job."""
    res = Comparison(what, missing=sorted(set(left) ^ set(right)))
    for key in sorted(set(left) & set(right)):
        a, b = _pixels(left[key]), _pixels(right[key])
        if a.shape != b.shape:
            res.missing.append(key)
            continue
        diff = int(abs(a - b).max())
        res.diff_sum += float(abs(a - b).mean())
        res.compared += 1
        res.identical += diff == 0
        res.max_diff = max(res.max_diff, diff)
    return res


def compare_digests(
    what: str, digests: dict[int, str], jobs: list[dict], right: dict[tuple, Path]
) -> Comparison:
    """(c)'s pixel digests against decoded PNGs: equal means c ran exactly sdbatch's compute."""
    import hashlib

    import numpy as np

    res = Comparison(what)
    for job in jobs:
        key = job_key(job)
        if key not in right or job["i"] not in digests:
            res.missing.append(key)
            continue
        pixels = _pixels(right[key]).astype(np.uint8)
        same = hashlib.sha256(pixels.tobytes()).hexdigest()[:16] == digests[job["i"]]
        res.compared += 1
        res.identical += same
        res.max_diff = max(res.max_diff, 0 if same else 255)  # a digest gives no magnitude
    return res
