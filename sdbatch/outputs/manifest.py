"""The Parquet manifest: one row per image, durable after every batch. pyarrow only.

A manifest is a folder of Parquet files (a Parquet *dataset*). Each finished batch adds one
small ``part-*.parquet`` file, written to a temporary name, fsynced and renamed, so appending
costs O(batch) and a killed run never leaves a half-written file. Parts are compacted into one
``seg-*.parquet`` at the end of a run (and when many pile up). If a job has several rows (a
failure later retried), the newest row wins: ``Manifest.read()`` always applies that rule.

What a plain Parquet reader should open: the folder itself, ``pyarrow.parquet.read_table(DIR)``,
``pyarrow.dataset.dataset(DIR)``, ``pandas.read_parquet(DIR)``, or duckdb's
``read_parquet('DIR/*.parquet')`` (not ``DIR/**``). Those readers skip names starting with
``_`` or ``.``, which is where everything that is not data lives: ``_compaction.json`` (the
journal below), ``_quarantine/`` (damaged files moved aside) and ``.*.tmp`` (writes in
progress). They do not apply newest-row-wins, so sdbatch keeps the folder at one row per job:

* Compaction journal. Before writing a segment, ``_compaction.json`` names the new segment and
  the files it replaces; after the segment's atomic rename those files are unlinked, then the
  journal. A kill in between leaves the journal. Once the segment exists its rows are durable:
  reads skip the replaced files, and the next writer unlinks them. If the segment was never
  written, the writer drops the journal and the old files stand as they were. No step loses a
  row.
* A run that re-renders jobs which already have a row (``run.retry_failed``, lost images) ends
  with a full compaction. If it was killed first, duplicates remain; the next run
  (``sdbatch.outputs.heal``) compacts everything, newest row winning.
* "The next writer" is any sdbatch command that reads the folder: the run, and the tools
  (summary, merge, verify, export, gallery, grid...) when their read finds a journal or a
  superseded row and the output lock is free (``sdbatch.outputs.heal.tidy``; a live run holding the
  lock tidies up itself when it ends). A dry run writes nothing.

A damaged file (truncated, not Parquet, not a manifest) makes ``read()`` raise
``DamagedManifest`` naming it, or, with ``skip_damaged=True``, read the rest and list it in
``Manifest.damaged``. ``sdbatch.outputs.heal`` moves such files into ``_quarantine/`` (never deletes
them) and recovers the lost rows from the images on disk.

Image paths in rows are relative to the output folder; ``sdbatch.outputs.image_paths``
refuses any that would lead outside it.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.errors import UserError
from sdbatch.outputs.atomic import atomic_file, fsync_dir

TS = pa.timestamp("us", tz="UTC")

# One entry per LoRA file a job applied: the tag's name, A1111's short hash (as "Lora hashes"
# writes it), the text-encoder and UNet multipliers. A list of structs, so a query can unnest it.
LORAS = pa.list_(
    pa.struct(
        [("name", pa.string()), ("hash", pa.string()),
         ("te_weight", pa.float64()), ("unet_weight", pa.float64())]
    )
)  # fmt: skip
# One entry per textual-inversion embedding the prompt or negative prompt used: the word (the
# file's stem) and A1111's short hash, as "TI hashes" writes them.
EMBEDDINGS = pa.list_(pa.struct([("name", pa.string()), ("hash", pa.string())]))
# One entry per ControlNet unit (sdbatch.plan.controlnet): the model's name and the hash the
# extension writes, the condition image as planned and its sha256, the weight and its window,
# the module that preprocessed the image (none | canny), the control mode (Balanced, My prompt
# is more important, ControlNet is more important) and the resize mode (Just Resize, Crop and
# Resize, Resize and Fill); each null in manifests older than it.
CONTROLNET = pa.list_(
    pa.struct(
        [("model", pa.string()), ("hash", pa.string()), ("image", pa.string()),
         ("image_sha256", pa.string()), ("weight", pa.float64()),
         ("start", pa.float64()), ("end", pa.float64()), ("module", pa.string()),
         ("control_mode", pa.string()), ("resize_mode", pa.string())]
    )
)  # fmt: skip

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
        ("loras", LORAS),  # the LoRA files the prompt's tags applied (empty list: none)
        ("embeddings", EMBEDDINGS),  # the TI embeddings the texts used (empty list: none)
        ("init_image", pa.string()),  # img2img input picture as planned (null: txt2img)
        ("init_image_sha256", pa.string()),  # its content hash (in the job id)
        ("mask", pa.string()),  # inpainting mask (null: none)
        ("mask_sha256", pa.string()),
        ("denoise", pa.float64()),  # A1111's Denoising strength of the img2img pass
        ("controlnet", CONTROLNET),  # ControlNet units (empty list: none)
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
JOURNAL = "_compaction.json"  # an unfinished compaction: its segment and the files it replaces
QUARANTINE = "_quarantine"  # damaged files moved aside (plain readers skip "_" names)
READ_TRIES = 5  # a file listed, then removed by a concurrent compaction: list again
CHECK_BATCH = 65_536  # rows decoded at a time when checking a whole file


class DamagedManifest(UserError):
    """A manifest file that cannot be read: truncated, not Parquet, or not a manifest."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(
            f"manifest file {self.path} is damaged ({reason}); the next run of the recipe, or "
            f"`sdbatch-tools manifest repair {self.path.parent.parent}`, moves it aside into "
            f"{QUARANTINE}/ and recovers its rows from the images"
        )


class ManifestUnreadable(UserError):
    """A manifest file the operating system will not let us read (permissions, I/O error)."""


def write_parquet_atomic(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    """Write, fsync, rename: the file appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=row_group_size)


def _reason(exc: BaseException) -> str:
    """Arrow's message on one short line, without the path (the caller names the file)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def _read_file(path: Path, cols: list[str] | None) -> pa.Table:
    """One data file in the manifest's schema (columns missing from old files are null)."""
    try:
        table = pq.read_table(path, columns=cols, schema=_select(SCHEMA, cols))
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise ManifestUnreadable(f"cannot read manifest file {path}: {exc.strerror}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DamagedManifest(path, _reason(exc)) from None
    if table["job_id"].null_count:
        raise DamagedManifest(path, "not a manifest file: rows without a job_id")
    return table


def check_file(path: Path) -> pa.ChunkedArray:
    """Decode every page of a data file (streaming, flat memory) and check its schema; its
    job_id column, or a ``DamagedManifest`` naming what is wrong."""
    try:
        f = pq.ParquetFile(path)
        names = [n for n in f.schema_arrow.names if n in SCHEMA.names]
        if "job_id" not in names:
            raise DamagedManifest(path, "not a manifest file: no job_id column")
        target, at, ids = pa.schema([SCHEMA.field(n) for n in names]), names.index("job_id"), []
        for batch in f.iter_batches(batch_size=CHECK_BATCH, columns=names):
            batch = batch.cast(target)
            if batch.column(at).null_count:
                raise DamagedManifest(path, "not a manifest file: rows without a job_id")
            ids.append(batch.column(at))
        return pa.chunked_array(ids, pa.string())
    except (DamagedManifest, FileNotFoundError):
        raise
    except PermissionError as exc:
        raise ManifestUnreadable(f"cannot read manifest file {path}: {exc.strerror}") from None
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise DamagedManifest(path, _reason(exc)) from None


@dataclass
class Health:
    """What ``Manifest.check()`` found: the damaged files, the job ids of all the others."""

    damaged: list[DamagedManifest]
    job_ids: pa.ChunkedArray

    @property
    def superseded(self) -> int:
        """Rows a newer row of the same job replaces (a plain reader sees those jobs twice)."""
        n = len(self.job_ids)
        return n - len(pc.unique(self.job_ids)) if n else 0


def _data_name(name: object) -> bool:
    """A name a journal may list: a plain data file name in this folder, nothing else."""
    return (
        isinstance(name, str)
        and name == os.path.basename(name)
        and name.startswith(("part-", "seg-"))
        and name.endswith(".parquet")
    )


class Manifest:
    """A manifest folder. Cheap to create; nothing is read until asked."""

    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)
        self.damaged: list[DamagedManifest] = []  # files the last read(skip_damaged=True) skipped
        self.superseded = 0  # rows the last read() dropped for a newer row of the same job

    def files(self) -> list[Path]:
        """Data files in write order (names carry a nanosecond clock), including any that an
        interrupted compaction already replaced (see ``live_files``)."""
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return []
        files = [
            Path(e.path)
            for e in entries
            if e.name.startswith(("part-", "seg-"))
            and e.name.endswith(".parquet")
            and e.is_file(follow_symlinks=False)
        ]
        return sorted(files, key=lambda p: (p.name.split("-")[1], p.name))

    def live_files(self) -> list[Path]:
        """``files()`` less those an interrupted compaction replaced with a segment that is
        on disk: their rows are in it, and they are only waiting to be unlinked."""
        files = self.files()
        journal = self._journal()
        if journal is None:
            return files
        segment, replaced = journal
        if segment not in {p.name for p in files}:
            return files
        gone = set(replaced) - {segment}
        return [p for p in files if p.name not in gone]

    def append(self, rows: Iterable[dict]) -> Path | None:
        """Add rows as one new part file (O(rows), independent of the manifest's size)."""
        rows = list(rows)
        if not rows:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        path = self.dir / f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        write_parquet_atomic(table, path)
        return path

    def read(self, columns: list[str] | None = None, skip_damaged: bool = False) -> pa.Table:
        """All rows, newest row per job_id. A damaged file raises ``DamagedManifest`` (a
        one-line UserError naming it), or with ``skip_damaged`` is left out and listed in
        ``self.damaged``. ``self.superseded`` counts the older rows dropped (free: the dedup
        counts them anyway). Never writes anything."""
        cols = None if columns is None else list(dict.fromkeys(["job_id", *columns]))
        for attempt in range(READ_TRIES):
            try:
                tables, self.damaged = self._read_all(cols, skip_damaged)
                break
            except FileNotFoundError as exc:  # a concurrent compaction removed it: list again
                if attempt == READ_TRIES - 1:
                    raise ManifestUnreadable(
                        f"manifest {self.dir}: {exc.filename or 'a file'} keeps disappearing "
                        "while being read; is another program deleting files there?"
                    ) from None
                time.sleep(0.02 * (attempt + 1))
        if not tables:
            self.superseded = 0
            empty = _select(SCHEMA, cols).empty_table()
            return empty if columns is None else empty.select(columns)
        table = pa.concat_tables(tables)
        deduped = _dedup_last(table)
        self.superseded = table.num_rows - deduped.num_rows
        return deduped if columns is None else deduped.select(columns)

    def _read_all(self, cols, skip_damaged: bool) -> tuple[list[pa.Table], list]:
        tables, damaged = [], []
        for p in self.live_files():
            try:
                tables.append(_read_file(p, cols))
            except DamagedManifest as exc:
                if not skip_damaged:
                    raise
                damaged.append(exc)
        return tables, damaged

    def check(self) -> Health:
        """Every live data file decoded in full (read() may touch only a few columns, so a
        damaged page elsewhere would show up later, mid-run): the damaged files, and the job
        ids of the rest. 0.7-0.9 s per million rows on 2 cores."""
        damaged, ids = [], []
        for p in self.live_files():
            try:
                ids += check_file(p).chunks
            except FileNotFoundError:
                continue
            except DamagedManifest as exc:
                damaged.append(exc)
        return Health(damaged, pa.chunked_array(ids, pa.string()))

    def read_ids(self) -> pa.Array:
        """The job_id column of every readable live file, duplicates included."""
        tables = []
        for p in self.live_files():
            try:
                tables.append(_read_file(p, ["job_id"]))
            except (DamagedManifest, FileNotFoundError):
                continue
        if not tables:
            return pa.array([], pa.string())
        return pa.concat_tables(tables)["job_id"].combine_chunks()

    def quarantine(self, path: Path) -> Path:
        """Move a damaged file into ``_quarantine/`` (renamed ``NAME.damaged``, so not even a
        recursive ``*.parquet`` glob picks it up); never deletes. Returns where it went."""
        folder = self.dir / QUARANTINE
        folder.mkdir(exist_ok=True)
        dest, n = folder / f"{path.name}.damaged", 1
        while dest.exists():
            dest, n = folder / f"{path.name}.{n}.damaged", n + 1
        os.replace(path, dest)
        fsync_dir(folder)
        fsync_dir(self.dir)
        return dest

    # --- compaction -------------------------------------------------------------------------

    def _journal(self) -> tuple[str, list[str]] | None:
        """(segment, replaced names) of an unfinished compaction; None when there is none or
        the journal does not hold plain data-file names (never trusted to name other files)."""
        try:
            data = json.loads((self.dir / JOURNAL).read_text(encoding="utf-8"))
            segment, replaced = data["segment"], list(data["replaces"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _data_name(segment) or not all(_data_name(n) for n in replaced):
            return None
        return segment, replaced

    def finish_compaction(self) -> str | None:
        """Complete a compaction that a kill interrupted, or undo it; a one-line message when
        there was one. Its segment on disk and readable: unlink the files it replaced (their
        rows are in it), then the journal. Its segment missing or unreadable: drop the journal;
        the old files stand as they were. Only for the folder's writer (the output lock)."""
        path = self.dir / JOURNAL
        if not path.exists():
            return None
        journal = self._journal()
        if journal is None:
            path.unlink(missing_ok=True)
            return f"manifest: removed an unreadable compaction journal {path}"
        segment, replaced = journal
        seg = self.dir / segment
        try:
            durable = seg.is_file() and _read_file(seg, ["job_id"]) is not None
        except (DamagedManifest, ManifestUnreadable, FileNotFoundError):
            durable = False
        if not durable:
            path.unlink(missing_ok=True)
            fsync_dir(self.dir)
            return (
                f"manifest: undid a compaction interrupted before its segment {segment} was "
                f"complete; the {len(replaced)} files it would have replaced are kept"
            )
        left = [n for n in replaced if n != segment and (self.dir / n).exists()]
        failed = self._unlink(left)
        if failed:
            return (
                f"manifest: could not remove {len(failed)} files an earlier compaction merged "
                f"into {segment} ({failed[0]}); sdbatch skips them, a plain Parquet reader sees "
                "their rows twice until they are removed"
            )
        path.unlink(missing_ok=True)
        fsync_dir(self.dir)
        if not left:
            return None
        return (
            f"manifest: finished a compaction a kill interrupted: removed {len(left)} files "
            f"already merged into {segment}"
        )

    def _unlink(self, names: list[str]) -> list[str]:
        """Unlink files of this folder; the names that could not be removed."""
        failed = []
        for name in names:
            try:
                (self.dir / name).unlink(missing_ok=True)
            except OSError:
                failed.append(name)
        fsync_dir(self.dir)
        return failed

    def compact(self, full: bool = False) -> None:
        """Merge the part files into one new segment (O(parts), not O(manifest)); the old
        files go once the new one is durable, under the journal (see the module docstring).
        ``full`` (or many segments) merges everything, dropping rows that newer ones replaced.
        Damaged files are left where they are, for ``sdbatch.outputs.heal``. Call it only as the
        folder's writer (holding the output lock)."""
        self.finish_compaction()
        if self._journal() is not None:  # its replaced files could not be removed: not now
            return
        files = self.live_files()
        parts = [p for p in files if p.name.startswith("part-")]
        full = full or len(files) - len(parts) >= MAX_SEGMENTS
        merge, tables = [], []
        for p in files if full else parts:
            try:
                tables.append(_read_file(p, None))
                merge.append(p)
            except (DamagedManifest, ManifestUnreadable, FileNotFoundError):
                continue
        if not merge:
            return
        table = pa.concat_tables(tables)
        if len(merge) == 1 and len(pc.unique(table["job_id"])) == table.num_rows:
            return
        table = _dedup_last(table)
        # named after the newest file it holds, so the write order of rows is kept
        stamp = merge[-1].name.split("-")[1]
        path = self.dir / f"seg-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        journal = {"segment": path.name, "replaces": [p.name for p in merge]}
        with atomic_file(self.dir / JOURNAL, "w", encoding="utf-8") as f:
            json.dump(journal, f)
        write_parquet_atomic(table, path)
        if not self._unlink([p.name for p in merge]):  # else the journal stays: reads skip them
            (self.dir / JOURNAL).unlink(missing_ok=True)
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
