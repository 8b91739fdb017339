"""How `sdbatch-tools manifest` scales: a synthetic 1M-row manifest, timed end to end.

Builds, in a temp dir, output folders whose manifests hold --rows rows in total (one compacted
segment each, plus part files with newer rows for retried jobs, so newest-row-wins has work),
with a tiny stub file per image so `verify` really opens and hashes a million files. Then runs
the real CLI (`summary`, `summary --by ...`, `merge`, `verify`) as subprocesses and prints each
one's wall time and peak RSS (os.wait4's rusage; the number includes interpreter start-up).

    .venv/bin/python bench/manifest_scale.py                 # 1,000,000 rows, 1 output folder
    .venv/bin/python bench/manifest_scale.py --outputs 4     # the same rows as a 4-job sweep
    .venv/bin/python bench/manifest_scale.py --files 0       # no stub images: verify skipped
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdbatch.outputs.manifest import SCHEMA, Manifest  # noqa: E402

TOOLS = str(Path(sys.executable).parent / "sdbatch-tools")
T0_US = 1_795_000_000 * 1_000_000
STYLES = ["ponytail", "bob cut", "braids", "dreadlocks", "twin tails"]
SAMPLERS = ["Euler a", "DPM++ 2M Karras", "DPM++ SDE Karras"]
RETRIED = 1000  # jobs per output folder recorded failed in the segment, ok in later parts
STUBS = 64  # distinct stub image files; each image path is a hard link to one (ext4: <65000)


def build_output(out: Path, start: int, n: int, files: bool) -> None:
    """One output folder: a seg file of n rows, 10 part files retrying RETRIED of them."""
    ids = [f"{i:016x}" for i in range(start, start + n)]
    style = [STYLES[i % 5] for i in range(n)]
    hair = ["black" if i % 2 else "silver" for i in range(n)]
    sampler = [SAMPLERS[(i // 5) % 3] for i in range(n)]
    cfg = [float(5 + 2 * ((i // 15) % 3)) for i in range(n)]
    seed = list(range(3_120_790_884, 3_120_790_884 + n))
    prompt = [f"{h} hair, long hair, {s}" for h, s in zip(hair, style, strict=True)]
    image = [f"images/{sd}-{j}.png" for sd, j in zip(seed, ids, strict=True)]
    stub_sha = [hashlib.sha256(f"stub {k}".encode()).hexdigest() for k in range(STUBS)]
    sha = [stub_sha[i % STUBS] for i in range(n)]
    info = [
        f"{p}\nNegative prompt: lowres, ((bad anatomy)), ((bad hands)), blurry\nSteps: 20, "
        f"Sampler: {sm}, CFG scale: {c:g}, Seed: {sd}, Size: 512x512, Model hash: 7799073572, "
        "Model: sdbatch-shapes, Version: sdbatch 0.1.0"
        for p, sm, c, sd in zip(prompt, sampler, cfg, seed, strict=True)
    ]
    status = ["failed" if i < RETRIED else "ok" for i in range(n)]
    offsets = pa.array(range(0, 2 * n + 1, 2), pa.int32())
    keys = pa.array(["hair", "style"] * n)
    items = pa.array([v for pair in zip(hair, style, strict=True) for v in pair])
    started = pa.array([T0_US + 400_000 * (start + i) for i in range(n)], pa.int64())
    cols = {
        "job_id": ids, "recipe": ["hair_styles"] * n, "prompt": prompt,
        "negative_prompt": ["lowres, ((bad anatomy)), ((bad hands)), blurry"] * n,
        "template": ["{hair} hair, long hair, {style}"] * n,
        "vars": pa.MapArray.from_arrays(offsets, keys, items), "sampler": sampler,
        "scheduler": ["DPMSolverMultistepScheduler(algorithm_type='dpmsolver++')"] * n,
        "steps": [20] * n, "cfg": cfg, "seed": seed, "width": [512] * n, "height": [512] * n,
        "model": ["sdbatch-shapes"] * n, "model_hash": ["7799073572"] * n,
        "image": [None if s != "ok" else im for s, im in zip(status, image, strict=True)],
        "image_sha256": [None if s != "ok" else h for s, h in zip(status, sha, strict=True)],
        "status": status, "error": [None] * n, "batch": [i // 4 for i in range(n)],
        "started": started.cast(SCHEMA.field("started").type),
        "finished": pa.array(
            [v + 400_000 for v in started.to_pylist()], pa.int64()
        ).cast(SCHEMA.field("finished").type),
        "duration_s": [0.4] * n, "device": ["cuda:0"] * n, "sdbatch_version": ["0.1.0"] * n,
        "torch_version": ["2.13.0"] * n, "diffusers_version": ["0.42.1"] * n, "infotext": info,
    }  # fmt: skip
    arrays = [
        cols[f.name] if isinstance(cols.get(f.name), pa.Array) else pa.array(
            cols.get(f.name, [None] * n), f.type
        )
        for f in SCHEMA
    ]  # fmt: skip
    mdir = out / "manifest"
    mdir.mkdir(parents=True)
    pq.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA),
                   mdir / f"seg-{time.time_ns():020d}-0.parquet", compression="zstd")  # fmt: skip
    retried = pa.Table.from_arrays(arrays, schema=SCHEMA).slice(0, RETRIED).to_pylist()
    for k in range(10):  # the retries: newer rows, ok this time
        chunk = retried[k * RETRIED // 10 : (k + 1) * RETRIED // 10]
        i0 = k * RETRIED // 10
        for j, r in enumerate(chunk):
            r.update(status="ok", image=image[i0 + j], image_sha256=sha[i0 + j])
        Manifest(mdir).append(chunk)
    if files:  # hard links to STUBS small files: 1M paths to open, without 1M inodes to free
        stubs = out / "stubs"
        stubs.mkdir()
        for k in range(STUBS):
            (stubs / str(k)).write_bytes(f"stub {k}".encode())
        (out / "images").mkdir()
        for i, im in enumerate(image):
            os.link(stubs / str(i % STUBS), out / im)


def timed(*cmd: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run a command; (wall seconds, peak RSS in MiB of that process, result).

    The peak comes from os.wait4's rusage. Linux carries ru_maxrss across fork and exec, so
    this parent stays small and builds the data in a child: a fat parent would show up here.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        text = out.read().decode(), err.read().decode()
    return wall, usage.ru_maxrss / 1024, subprocess.CompletedProcess(cmd, proc.returncode, *text)


def report(name: str, wall: float, rss: float, res: subprocess.CompletedProcess) -> None:
    last = (res.stdout.strip().splitlines() or [res.stderr.strip()])[-1]
    print(f"{name:46} {wall:6.2f}s  peak RSS {rss:5.0f} MiB  exit {res.returncode}: {last[:60]}")
    if res.returncode not in (0, 1):
        print(res.stderr, file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--outputs", type=int, default=1, help="output folders (a sweep when > 1)")
    ap.add_argument("--files", type=int, default=1, help="1: stub images (hard links); 0: none")
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="also verify with these")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # internal: the child
    args = ap.parse_args()
    if args.build:
        per = args.rows // args.outputs
        root = Path(args.build) / "outputs" / "hair_styles"
        for k in range(args.outputs):
            out = root if args.outputs == 1 else root / "multirun" / f"cfg={k}"
            build_output(out, k * per, per, bool(args.files))
        print(f"{per * args.outputs:,} rows")
        return
    tmp = Path(tempfile.mkdtemp(prefix="sdbatch-bench-"))
    outputs = str(tmp / "outputs")
    py = sys.executable
    try:
        print(f"python {sys.version.split()[0]}, pyarrow {pa.__version__}, "
              f"{os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}); {tmp}")  # fmt: skip
        build = [py, __file__, "--build", str(tmp), "--rows", str(args.rows),
                 "--outputs", str(args.outputs), "--files", str(args.files)]  # fmt: skip
        report(f"build ({args.outputs} output folder(s))", *timed(*build))
        scan = ("import sys; from pathlib import Path; "
                "from sdbatch.outputs.manifest import Manifest; "
                "print(sum(Manifest(m).read(['job_id', 'status', 'image', 'image_sha256'])"
                ".num_rows for m in Path(sys.argv[1]).rglob('manifest')), 'rows')")  # fmt: skip
        report("Manifest.read, 4 columns (verify's scan)", *timed(py, "-c", scan, outputs))
        steps = [
            ("summary", ["summary", outputs]),
            ("summary --by sampler --by cfg --by vars.style",
             ["summary", outputs, "--by", "sampler", "--by", "cfg", "--by", "vars.style"]),
            ("merge -o all.parquet", ["merge", outputs, "-o", str(tmp / "all.parquet")]),
        ]  # fmt: skip
        if args.files:
            steps.append(("verify (default workers)", ["verify", outputs]))
            steps += [(f"verify --workers {w}", ["verify", outputs, "--workers", str(w)])
                      for w in args.workers]  # fmt: skip
        for name, cli in steps:
            report(name, *timed(TOOLS, "manifest", *cli))
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"(this parent process: peak RSS {own:.0f} MiB)")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            t0 = time.perf_counter()
            shutil.rmtree(tmp)
            print(f"removed the temp dir in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
