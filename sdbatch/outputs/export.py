"""Export manifests as a Hugging Face ``imagefolder`` dataset. pyarrow only (no torch, no pandas).

Layout (what ``load_dataset("imagefolder", data_dir=OUT)`` reads)::

    OUT/metadata.jsonl        one JSON object per image: file_name + the manifest's columns
    OUT/images/<seed>-<job_id>.png

``file_name`` is relative to ``metadata.jsonl``. Images are hard-linked when OUT is on the same
filesystem (no extra space; PNGs are never edited in place) and copied otherwise. Every image
path is checked first: one that would lead outside its output folder (absolute, ``..``, a
symlink out) stops the export before anything is written (``UnsafeImagePath``, exit code 2).

``datasets`` reads metadata.jsonl in 10 MB blocks and takes the column types from the first
block, so a column that is null there but set later (``template``, ``hydra_job``) would fail to
load. Rows that give each column its first non-null value therefore go first, and every row
carries every column and every template variable (null where absent).
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.outputs.atomic import atomic_file
from sdbatch.errors import UserError
from sdbatch.outputs.image_paths import ImagePaths
from sdbatch.outputs.manifest_tools import (
    DataError,
    Source,
    default_workers,
    one_row_per_job,
    plain_output,
    read_sources,
    var_names,
)

FORMATS = ["imagefolder"]
METADATA = "metadata.jsonl"
IMAGES = "images"
CHUNK = 1024  # files per thread-pool task


@dataclass
class Exported:
    images: int
    linked: int
    copied: int
    metadata: Path


def check_target(out: Path) -> None:
    """OUT must be new, empty, or an earlier export (re-exporting refreshes it)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"-o: {str(out)!r} is a file; give a folder for the dataset")
    other = [p.name for p in out.iterdir() if p.name not in (METADATA, IMAGES)]
    if other:
        raise UserError(
            f"-o: {str(out)!r} holds other files ({', '.join(sorted(other)[:3])}); "
            "give a new or empty folder"
        )


def _place(pairs: list[tuple[Path, Path]], link: bool) -> tuple[int, int]:
    """Hard-link (or copy) each source to its target; returns (linked, copied)."""
    linked = copied = 0
    for src, dst in pairs:
        if dst.exists():
            if link and os.path.samefile(src, dst):
                linked += 1
                continue
            dst.unlink()
        if link:
            try:
                os.link(src, dst)
                linked += 1
                continue
            except FileNotFoundError:
                raise
            except OSError:  # another filesystem, or links not supported: copy
                link = False
        shutil.copyfile(src, dst)
        copied += 1
    return linked, copied


def _rows_first_typed(table: pa.Table) -> pa.Table:
    """Put first the rows holding each column's first non-null value (see module docstring)."""
    first = set()
    for col in table.columns:
        valid = pc.indices_nonzero(pc.is_valid(col))
        if len(valid) and col.null_count:
            first.add(valid[0].as_py())
    if not first:
        return table
    head = sorted(first)
    mask = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), pa.array(head)))
    rest = pc.indices_nonzero(mask)
    return table.take(pa.concat_arrays([pa.array(head, pa.uint64()), rest]))


def _json_value(v):
    return v.isoformat(timespec="microseconds") if isinstance(v, datetime) else v


def _write_metadata(table: pa.Table, names: list[str], path: Path) -> None:
    """One JSON object a line, written to a temp file, fsynced and renamed."""
    var_cols = [f"var_{n}" for n in names]
    with atomic_file(path, "w", encoding="utf-8") as f:
        for batch in table.to_batches(max_chunksize=10_000):
            cols = batch.to_pydict()
            keys = list(cols)
            for values in zip(*cols.values(), strict=True):
                row = {k: _json_value(v) for k, v in zip(keys, values, strict=True)}
                if "vars" in row:
                    row["vars"] = {n: row[c] for n, c in zip(names, var_cols, strict=True)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def export_imagefolder(
    sources: list[Source], out: str | os.PathLike, link: bool = True, workers: int | None = None
) -> Exported:
    """Write OUT/metadata.jsonl and OUT/images/ for every ok row (one per job)."""
    out = Path(out)
    check_target(out)
    table = read_sources(sources)
    table = table.filter(pc.equal(table["status"], "ok"))
    table = one_row_per_job(table)
    if table.num_rows == 0:
        raise UserError("export: no images to export (no row with status ok)")
    missing_path = pc.sum(pc.is_null(table["image"])).as_py() or 0
    if missing_path:
        raise DataError(f"export: {missing_path} ok rows name no image file")
    images = table["image"].to_pylist()
    names = [Path(p).name for p in images]
    if len(set(names)) != len(names):
        raise DataError("export: two images share a file name; cannot flatten them")
    outputs = table["output"].to_pylist()
    checkers = {o: ImagePaths(o) for o in set(outputs)}
    jobs = table["job_id"].to_pylist()
    pairs = [
        (checkers[o](img, job), out / IMAGES / name)
        for o, img, name, job in zip(outputs, images, names, jobs, strict=True)
    ]
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    linked = copied = 0
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        tasks = [
            pool.submit(_place, pairs[i : i + CHUNK], link) for i in range(0, len(pairs), CHUNK)
        ]
        for task in tasks:
            try:
                a, b = task.result()
            except FileNotFoundError as exc:
                raise DataError(
                    f"export: image missing: {exc.filename}; run `sdbatch-tools manifest verify`"
                ) from None
            linked, copied = linked + a, copied + b
    var = var_names(table)
    table = table.drop_columns(["image"])
    table = plain_output(table, keep=len(sources) > 1)
    file_name = pa.array([f"{IMAGES}/{n}" for n in names], pa.string())
    table = table.add_column(0, "file_name", file_name)
    for n in var:
        table = table.append_column(f"var_{n}", pc.map_lookup(table["vars"], n, "first"))
    table = _rows_first_typed(table)
    _write_metadata(table, var, out / METADATA)
    return Exported(len(pairs), linked, copied, out / METADATA)
