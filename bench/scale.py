"""Scale figures without a model: a 1,000,000-job plan and a 1,000,000-row manifest.

Each measurement runs in its own child process (``python bench/scale.py CHILD ...``) so its peak
memory is its own: the parent reads it from ``os.wait4``'s rusage (``RUSAGE_CHILDREN`` would
report the largest child so far, which after the image runs is a model process). Children print
one JSON line of their timings.

(i)   ``build_plan`` of 100 x 10 template values x 1000 seeds = 1,000,000 jobs (through the
      CLI, ``run.dry_run=true``, it costs ~1 s more: Hydra start-up).
(ii)  the resume scan over a 1,000,000-row manifest: the real
      ``resume.scan_manifest(verify="size")`` (one read, Arrow filtering, one stat per image)
      with all 1M images on disk (hard links to a few stub files, set up untimed: ~12 s).
(iii) ``Manifest.append`` of one 4-row batch to an empty manifest and to the 1M-row one; and
      ``Manifest.compact`` at 1M rows, which the runner does every 64 batches and at run end.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from procs import spawn  # bench/ is sys.path[0] when run as a script

BENCH = Path(__file__).resolve().parent
VARS_A, VARS_B, SEEDS = 100, 10, 1000  # 1,000,000 jobs
ROWS = 1_000_000
T0_US = 1_795_000_000 * 1_000_000
APPENDS = 9  # appends timed per manifest (median reported)


def plan_config() -> dict:
    """The 1M-job recipe as the composed dict build_plan receives."""
    return {
        "name": "sdbatch_bench_scale",
        "template": "a {subject} in the style of {artist}, highly detailed",
        "vars": {
            "subject": [f"subject number {i}" for i in range(VARS_A)],
            "artist": [f"artist number {i}" for i in range(VARS_B)],
        },
        "negative_prompt": "blurry, lowres",
        "sampler": "Euler a",
        "steps": 20,
        "cfg": 7,
        "size": "64x64",
        "seeds": {"start": 0, "count": SEEDS},
        "batch_size": 4,
    }


# ---------------------------------------------------------------- children (one JSON line each)


def child_plan() -> dict:
    import resource

    import sdbatch.config  # noqa: F401  (build_plan imports it for the recipe folders)
    from sdbatch.plan.recipe import build_plan

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    plan = build_plan(plan_config())
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "jobs": len(plan.jobs),
        "batches": len(plan.batches),
        "rss_before_mib": before,
    }


def _columns(n: int, start: int = 0) -> dict:
    """Realistic values for the columns a runner writes; other SCHEMA columns stay null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = [f"{i:016x}" for i in range(start, start + n)]
    seeds = list(range(start, start + n))
    prompts = [
        f"a subject number {i % 100} in the style of artist number {i // 100 % 10}, highly detailed"
        for i in range(start, start + n)
    ]
    started = pa.array([T0_US + 400_000 * i for i in range(start, start + n)], pa.int64())
    info = [
        f"{p}\nNegative prompt: blurry, lowres\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, "
        f"Seed: {s}, Size: 64x64, Model hash: 7799073572, Model: sdbatch-shapes, "
        "Version: sdbatch 0.1.0"
        for p, s in zip(prompts, seeds, strict=True)
    ]
    const = {
        "recipe": "sdbatch_bench_scale",
        "negative_prompt": "blurry, lowres",
        "template": "a {subject} in the style of {artist}, highly detailed",
        "sampler": "Euler a",
        "scheduler": "EulerAncestralDiscreteScheduler(timestep_spacing='linspace')",
        "steps": 20,
        "cfg": 7.0,
        "width": 64,
        "height": 64,
        "model": "sdbatch-shapes",
        "model_hash": "7799073572",
        "status": "ok",
        "duration_s": 0.1,
        "device": "cpu",
        "sdbatch_version": "0.1.0",
        "torch_version": "2.13.0",
        "diffusers_version": "0.42.1",
    }
    return {
        **const,
        "job_id": ids,
        "prompt": prompts,
        "vars": [
            [("subject", f"subject number {i % 100}"), ("artist", f"artist {i // 100 % 10}")]
            for i in range(start, start + n)
        ],
        "seed": seeds,
        "image": [f"images/{s}-{j}.png" for s, j in zip(seeds, ids, strict=True)],
        "image_sha256": [f"{i:064x}" for i in range(start, start + n)],
        "batch": [i // 4 for i in range(start, start + n)],
        "started": started,
        "finished": pc.add(started, 400_000),
        "infotext": info,
    }


def table(n: int, start: int = 0):
    """A pyarrow table of n rows with sdbatch's manifest SCHEMA, whatever its columns are."""
    import pyarrow as pa

    from sdbatch.outputs.manifest import SCHEMA

    cols = _columns(n, start)
    arrays = []
    for f in SCHEMA:
        v = cols.get(f.name)
        if v is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(v, pa.Array):
            arrays.append(v.cast(f.type))
        elif isinstance(v, list):
            arrays.append(pa.array(v, f.type))
        else:
            arrays.append(pa.repeat(pa.scalar(v, f.type), n))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def child_build(folder: str) -> dict:
    """One seg-<20-digit ns>-<pid>.parquet of ROWS rows, written like Manifest.compact does."""
    import pyarrow.parquet as pq

    t = time.perf_counter()
    mdir = Path(folder)
    mdir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table(ROWS), mdir / f"seg-{time.time_ns():020d}-{os.getpid()}.parquet", compression="zstd"
    )
    size = sum(p.stat().st_size for p in mdir.iterdir())
    return {"seconds": time.perf_counter() - t, "bytes": size}


STUB_LINKS = 60_000  # hard links per stub file (ext4 allows 65,000 links to one inode)


def _stub_images(out: Path, images: list[str]) -> None:
    """Every image of the manifest on disk, non-empty, at its path under ``out``: each name a
    hard link to one of a few small stub files. A real directory entry per name, which is what
    the scan looks up, in ~12 s for 1M (1M separate files take ~60 s and ~2 min to delete)."""
    stubs = out / "stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    for folder in {os.path.dirname(p) for p in images}:
        (out / folder).mkdir(parents=True, exist_ok=True)
    link, root = os.link, os.fspath(out) + os.sep
    for k in range(0, len(images), STUB_LINKS):
        stub = stubs / f"{k}.png"
        stub.write_bytes(b"\x89PNG\r\n\x1a\n stub")  # the size scan reads no more than the size
        for path in images[k : k + STUB_LINKS]:
            link(stub, root + path)


def child_resume(folder: str) -> dict:
    """The real resume scan, ``resume.scan_manifest(verify="size")``, over ROWS rows that are
    all ok and all in the plan (the worst case): one manifest read, Arrow filtering, one stat
    per image. Every image is on disk (``_stub_images``, set up before and removed after the
    timing; both reported), so all ROWS jobs come out done; the dentry cache is warm."""
    import shutil

    from sdbatch.outputs.manifest import Manifest
    from sdbatch.run.resume import scan_manifest

    jobs = [SimpleNamespace(job_id=f"{i:016x}") for i in range(ROWS)]  # reads only .job_id
    out = Path(folder).parent
    manifest = Manifest(folder)
    t0 = time.perf_counter()
    table = manifest.read(columns=["job_id", "status", "image"])  # what the scan reads
    t1 = time.perf_counter()
    images = table["image"].to_pylist()
    del table
    t = time.perf_counter()
    _stub_images(out, images)
    setup = time.perf_counter() - t
    folders = {out / p.split("/")[0] for p in images if "/" in p} | {out / "stubs"}
    del images
    t2 = time.perf_counter()
    done, failed, _ = scan_manifest(jobs, out, manifest, verify="size")
    t3 = time.perf_counter()
    for p in folders:
        shutil.rmtree(p)
    return {
        "read": t1 - t0,
        "total": t3 - t2,
        "done": len(done),
        "failed": len(failed),
        "images_setup": setup,
        "images_cleanup": time.perf_counter() - t3,
    }


def child_append(folder: str, empty_root: str) -> dict:
    """Median time of appending one 4-row batch: to empty manifests, then to the 1M-row one."""
    from sdbatch.outputs.manifest import Manifest

    rows = table(4, start=ROWS + 10).to_pylist()

    def timed(manifest: Manifest) -> tuple[float, Path]:
        t = time.perf_counter()
        path = manifest.append(rows)
        return time.perf_counter() - t, path

    empty = [timed(Manifest(Path(empty_root) / f"m{k}"))[0] for k in range(APPENDS)]
    big = Manifest(folder)
    full, parts = [], []
    for _ in range(APPENDS):
        seconds, path = timed(big)
        full.append(seconds)
        parts.append(path)
    t = time.perf_counter()
    big.maybe_compact()  # what the runner does after every batch (a listing, below 64 parts)
    check = time.perf_counter() - t
    for p in parts:  # back to ROWS rows
        p.unlink()
    return {
        "empty": statistics.median(empty),
        "full": statistics.median(full),
        "maybe_compact": check,
    }


def child_compact(folder: str) -> dict:
    """The runner's compaction (new parts only) beside a full rewrite, at ROWS rows."""
    from sdbatch.outputs.manifest import Manifest

    manifest = Manifest(folder)
    manifest.append(table(4, start=ROWS + 100).to_pylist())
    manifest.append(table(4, start=ROWS + 200).to_pylist())
    t = time.perf_counter()
    manifest.compact()
    parts = time.perf_counter() - t
    t = time.perf_counter()
    manifest.compact(full=True)
    return {"parts_seconds": parts, "seconds": time.perf_counter() - t,
            "files": len(manifest.files())}  # fmt: skip


CHILDREN = {
    "plan": child_plan,
    "build": child_build,
    "resume": child_resume,
    "append": child_append,
    "compact": child_compact,
}


# ---------------------------------------------------------------- parent


def child(name: str, *args: str) -> tuple[float, float, dict]:
    """Run one measurement in its own process: (wall, its peak RSS in MiB, its JSON)."""
    proc = spawn([sys.executable, str(BENCH / "scale.py"), name, *args])
    return proc.wall, proc.rss_mib, json.loads(proc.last_line())


def measure(tmp: Path, say=print) -> dict:
    """All scale figures, as a dict for the report. ``tmp`` is a scratch folder."""
    res: dict = {}
    wall, rss, out = child("plan")
    res["plan"] = {**out, "wall": wall, "rss_mib": rss}
    say(f"scale: build_plan 1M jobs {out['seconds']:.1f}s, peak RSS {rss:.0f} MiB")
    mdir = tmp / "scale_out" / "manifest"
    wall, rss, out = child("build", str(mdir))
    res["build"] = {**out, "wall": wall}
    say(f"scale: wrote a {ROWS:,}-row manifest in {out['seconds']:.1f}s")
    wall, rss, out = child("resume", str(mdir))
    res["resume"] = {**out, "rss_mib": rss}
    say(
        f"scale: resume scan {out['total']:.2f}s ({out['done']:,} images on disk, done), "
        f"peak RSS {rss:.0f} MiB; image links set up in {out['images_setup']:.1f}s, untimed"
    )
    wall, rss, out = child("append", str(mdir), str(tmp / "scale_empty"))
    res["append"] = out
    say(
        f"scale: append 4 rows {out['empty'] * 1e3:.1f} ms (empty) vs "
        f"{out['full'] * 1e3:.1f} ms (1M rows)"
    )
    wall, rss, out = child("compact", str(mdir))
    res["compact"] = {**out, "rss_mib": rss}
    say(f"scale: compact at 1M rows {out['seconds']:.1f}s, peak RSS {rss:.0f} MiB")
    return res


if __name__ == "__main__":
    print(json.dumps(CHILDREN[sys.argv[1]](*sys.argv[2:])))
