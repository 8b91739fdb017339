"""What the cluster tests check on the outputs: the shards' union against an unsharded run.

Rows are read raw (every Parquet file of every manifest folder, no newest-row-wins), so a job
rendered twice shows up as two rows; images are hashed from their bytes on disk.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import BIN, sdbatch_env

SDBATCH = str(BIN / "sdbatch")
TOOLS = str(BIN / "sdbatch-tools")
# A recipe of 12 batches (6 a shard) at a fraction of a second each on a CPU: once a shard's
# first batch is on disk, five are left for a signal or a kill to land in, even on a faster
# machine; short enough for the test budget.
SHARDED = [
    "+recipe=quick",
    "steps=4",
    "size=64x64",
    "seeds.count=12",
    "batch_size=2",
    "run.progress=false",
]
SHARDED_JOBS = 24
SHARD_JOBS = SHARDED_JOBS // 2  # each of 2 shards
# Columns that say when, where and in which sweep a row was written, not what it is.
PER_RUN = {"started", "finished", "duration_s", "hydra_job", "overrides", "batch", "note"}


def sdbatch(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    """``sdbatch ARGS`` as a user runs it: (exit code, stdout + stderr)."""
    full = sdbatch_env(**(env or {}))
    full.pop("CUDA_VISIBLE_DEVICES", None)
    res = subprocess.run(
        [SDBATCH, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )
    return res.returncode, res.stdout + res.stderr


def tools(*args: str, cwd: Path, timeout: float = 120):
    res = subprocess.run(
        [TOOLS, *args], cwd=cwd, env=sdbatch_env(), capture_output=True, text=True, timeout=timeout
    )
    return res.returncode, res.stdout + res.stderr


def raw_rows(out_dir: Path) -> list[dict]:
    """Every row of every manifest file below ``out_dir`` (its own, or a sweep's job folders),
    with ``_out``: the output folder the row belongs to."""
    rows = []
    for f in sorted(out_dir.rglob("manifest/*.parquet")):
        if f.name.startswith((".", "_")):
            continue
        for r in pq.read_table(f).to_pylist():
            r["_out"] = f.parent.parent
            rows.append(r)
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_as_reference(shard_root: Path, reference: Path, jobs: int) -> list[dict]:
    """The shards' rows: one per job, all ok, each image's bytes and row (less PER_RUN) equal
    to the unsharded reference's. Returns the shards' rows."""
    rows, ref = raw_rows(shard_root), raw_rows(reference)
    assert len(ref) == jobs and {r["status"] for r in ref} == {"ok"}
    ids = [r["job_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a job has two rows: rendered twice"
    assert sorted(ids) == sorted(r["job_id"] for r in ref), "the shards lost or added jobs"
    by_id = {r["job_id"]: r for r in ref}
    for r in rows:
        want = by_id[r["job_id"]]
        assert r["status"] == "ok"
        got_bytes = sha256(r["_out"] / r["image"])
        assert got_bytes == sha256(want["_out"] / want["image"]) == r["image_sha256"], r["image"]
        for key in (set(r) & set(want)) - PER_RUN - {"_out"}:
            assert r[key] == want[key], (key, r[key], want[key])
    images = [p for p in shard_root.rglob("images/*.png")]
    assert len(images) == jobs, "an image without a row, or a row without its image"
    return rows


def merge_and_verify(shard_root: Path, cwd: Path, jobs: int) -> None:
    """The documented end of a sharded run: ``manifest verify`` and ``manifest merge``."""
    code, out = tools("manifest", "verify", str(shard_root), cwd=cwd)
    assert code == 0 and f"{jobs} images checked: {jobs} intact, 0 problems" in out, out
    merged = cwd / "merged.parquet"
    code, out = tools("manifest", "merge", str(shard_root), "-o", str(merged), cwd=cwd)
    assert code == 0 and f"wrote {merged}: {jobs} rows" in out, out
    table = pq.read_table(merged)
    assert table.num_rows == jobs and len(set(table.column("job_id").to_pylist())) == jobs
