"""The Parquet manifest: one row per image, durable after every batch. pyarrow only.

A manifest is a folder of Parquet files (a Parquet *dataset*), readable at any moment with
``pyarrow.dataset``, ``pandas.read_parquet(DIR)`` or duckdb's ``read_parquet('DIR/*.parquet')``.
Each finished batch adds one small ``part-*.parquet`` file, written to a temporary name, fsynced
and renamed, so appending costs O(batch) and a killed run never leaves a half-written file.
Parts are compacted into one ``seg-*.parquet`` at the end of a run (and when many pile up).
If a job has several rows (a failure later retried), the newest row wins.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.atomic import atomic_file, fsync_dir

TS = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),  # stable hash of everything that determines the image
        ("recipe", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("template", pa.string()),  # null for plain prompts
        ("vars", pa.map_(pa.string(), pa.string())),  # template variable -> value
        ("sampler", pa.string()),  # A1111 name, e.g. "DPM++ 2M Karras"
        ("scheduler", pa.string()),  # diffusers class + options
        ("steps", pa.int32()),
        ("cfg", pa.float64()),
        ("seed", pa.int64()),
        ("width", pa.int32()),  # base size (A1111's "Size"); hires multiplies it
        ("height", pa.int32()),
        ("model", pa.string()),
        ("model_hash", pa.string()),
        ("subseed", pa.int64()),  # A1111's variation seed (null when not used)
        ("subseed_strength", pa.float64()),
        ("rng", pa.string()),  # cpu | gpu: where the noise was drawn
        ("hires", pa.string()),  # hires fix, e.g. "2x Latent, 10 steps, denoise 0.5"; null = off
        ("image", pa.string()),  # path relative to the output folder
        ("image_sha256", pa.string()),
        ("status", pa.string()),  # ok | failed | nan
        ("error", pa.string()),
        ("note", pa.string()),  # e.g. "out of memory at batch size 4; rendered in halves"
        ("batch", pa.int64()),  # index of the batch in the plan
        ("started", TS),
        ("finished", TS),
        ("duration_s", pa.float64()),  # batch wall time / images in the batch
        ("device", pa.string()),
        ("dtype", pa.string()),  # fp32 | fp16 | bf16 (null in manifests older than the column)
        ("sdbatch_version", pa.string()),
        ("torch_version", pa.string()),
        ("diffusers_version", pa.string()),
        ("infotext", pa.string()),
        ("hydra_job", pa.int32()),  # Hydra multirun job number (null for a single run)
        ("overrides", pa.string()),  # the command-line overrides of the run, e.g. "cfg=5"
    ]
)
COMPACT_AFTER = 64  # parts; merged into one segment when more pile up during a run
MAX_SEGMENTS = 16  # beyond this many segments a compaction rewrites everything into one


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write, fsync, rename: the file appears whole or not at all."""
    with atomic_file(path) as f:
        pq.write_table(table, f, compression="zstd")


class Manifest:
    """A manifest folder. Cheap to create; nothing is read until asked."""

    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)

    def files(self) -> list[Path]:
        """Data files in write order (names carry a nanosecond clock)."""
        if not self.dir.is_dir():
            return []
        files = [p for p in self.dir.glob("*.parquet") if p.name.startswith(("part-", "seg-"))]
        return sorted(files, key=lambda p: (p.name.split("-")[1], p.name))

    def append(self, rows: Iterable[dict]) -> Path | None:
        """Add rows as one new part file (O(rows), independent of the manifest's size)."""
        rows = list(rows)
        if not rows:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        path = self.dir / f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        _write_atomic(table, path)
        return path

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows, newest row per job_id."""
        files = self.files()
        cols = None if columns is None else list(dict.fromkeys(["job_id", *columns]))
        if not files:
            empty = _select(SCHEMA, cols).empty_table()
            return empty if columns is None else empty.select(columns)
        tables = [pq.read_table(p, columns=cols, schema=_select(SCHEMA, cols)) for p in files]
        table = pa.concat_tables(tables)
        table = _dedup_last(table)
        return table if columns is None else table.select(columns)

    def compact(self, full: bool = False) -> None:
        """Merge the part files into one new segment (O(parts), not O(manifest)); the old
        files go once the new one is durable. ``full`` (or many segments) merges everything,
        dropping rows that newer ones replaced."""
        files = self.files()
        parts = [p for p in files if p.name.startswith("part-")]
        segments = len(files) - len(parts)
        full = full or segments >= MAX_SEGMENTS
        merge = files if full else parts
        if len(merge) <= 1:
            return
        if full:
            table = self.read()
        else:
            table = _dedup_last(pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in merge]))
        # named after the newest file it holds, so the write order of rows is kept
        stamp = merge[-1].name.split("-")[1]
        path = self.dir / f"seg-{stamp}-{os.getpid()}.parquet"
        _write_atomic(table, path)
        for p in merge:
            if p != path:
                p.unlink(missing_ok=True)
        fsync_dir(self.dir)

    def maybe_compact(self) -> None:
        if sum(p.name.startswith("part-") for p in self.files()) >= COMPACT_AFTER:
            self.compact()


def _select(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    if columns is None:
        return schema
    return pa.schema([schema.field(c) for c in columns])


def _dedup_last(table: pa.Table) -> pa.Table:
    """Keep the last row of each job_id (rows are in write order)."""
    if table.num_rows == 0:
        return table
    unique = pc.unique(table["job_id"])
    if len(unique) == table.num_rows:
        return table
    idx = pa.array(range(table.num_rows), pa.int64())
    last = (
        pa.table({"job_id": table["job_id"], "i": idx})
        .group_by("job_id", use_threads=False)
        .aggregate([("i", "max")])["i_max"]
    )
    return table.take(pc.take(last, pc.array_sort_indices(last)))
