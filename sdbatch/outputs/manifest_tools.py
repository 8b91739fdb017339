"""Many manifests read as one table: summary, merge and verify. pyarrow only (no torch, no pandas).

An argument may be an output folder (holding ``manifest/``), a manifest folder itself, or any
folder above output folders (a Hydra multirun sweep): every ``manifest/`` below it is read with
``Manifest.read()`` (newest row per job) and the tables are stacked, with an ``output`` column
naming the output folder each row came from. Image paths stay relative to that folder.
Everything is columnar, so a million rows take seconds; only ``verify`` touches files.

A damaged manifest file stops ``summary``, ``merge`` and ``export`` with one line naming it
(``DamagedManifest``, exit code 2); ``verify`` lists it as a problem and checks the rest. An
image path that leads outside its output folder is refused with one line naming the row
(``UnsafeImagePath``, exit code 2). After reading, ``sdbatch.outputs.heal.tidy`` finishes what a
killed run left for plain Parquet readers (a journal, a job twice) when no run holds the folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.errors import UserError
from sdbatch.outputs.image_paths import ImagePaths, UnsafeImagePath
from sdbatch.outputs.manifest import SCHEMA, Manifest, write_parquet_atomic
from sdbatch.plan.hashing import sha256_file

OUTPUT = "output"  # the added column: the output folder a row came from
SKIP_DIRS = {"manifest", "images"}  # never walked into: images/ may hold a million files
STATUS_ORDER = ["ok", "failed", "nan"]


class DataError(UserError):
    """The manifests contradict themselves or the files on disk (exit code 1, not bad input)."""

    exit_code = 1


@dataclass(frozen=True)
class Source:
    """One output folder and its manifest folder."""

    out_dir: Path
    manifest_dir: Path


def find_sources(path: str | os.PathLike) -> list[Source]:
    """The manifests at or below ``path``, sorted; a UserError when there is none."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"{str(path)!r} does not exist")
    if not root.is_dir():
        raise UserError(f"{str(path)!r} is not a folder; give an output or manifest folder")
    if Manifest(root).files():
        return [Source(root.parent, root)]
    found, stack = [], [root]
    while stack:
        folder = stack.pop()
        try:
            dirs = [e for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for entry in dirs:
            if entry.name == "manifest" and Manifest(entry.path).files():
                found.append(Source(folder, Path(entry.path)))
            elif entry.name not in SKIP_DIRS and not entry.name.startswith("."):
                stack.append(Path(entry.path))
    if not found:
        raise UserError(
            f"{str(path)!r}: no manifest found (no manifest/ folder with part-*.parquet or "
            "seg-*.parquet files at or below it)"
        )
    return sorted(found, key=lambda s: str(s.out_dir))


def all_sources(paths: list[str | os.PathLike]) -> list[Source]:
    """Sources of several arguments, each manifest once."""
    seen, out = set(), []
    for p in paths:
        for s in find_sources(p):
            key = s.manifest_dir.resolve()
            if key not in seen:
                seen.add(key)
                out.append(s)
    return out


def tidy(out_dir: Path, manifest: Manifest) -> None:
    from sdbatch.outputs.heal import tidy as heal_tidy

    heal_tidy(out_dir, manifest)


def read_sources(sources: list[Source], columns: list[str] | None = None) -> pa.Table:
    """Every source's rows (newest per job) stacked, plus the ``output`` column (dictionary)."""
    labels = pa.array([str(s.out_dir) for s in sources], pa.string())
    tables = []
    for i, s in enumerate(sources):
        m = Manifest(s.manifest_dir)
        t = m.read(columns)
        tidy(s.out_dir, m)
        idx = pa.repeat(pa.scalar(i, pa.int32()), t.num_rows)
        tables.append(t.append_column(OUTPUT, pa.DictionaryArray.from_arrays(idx, labels)))
    return pa.concat_tables(tables)


# --- summary ---------------------------------------------------------------------------------


def var_names(table: pa.Table) -> list[str]:
    """Template variable names used in the ``vars`` column."""
    if "vars" not in table.column_names or table.num_rows == 0:
        return []
    keys = [c.keys for c in table["vars"].chunks if len(c)]
    return sorted(pc.unique(pa.concat_arrays(keys)).to_pylist()) if keys else []


def groupable_columns() -> list[str]:
    """Manifest columns that --by accepts (plus ``vars.NAME``)."""
    return [f.name for f in SCHEMA if _scalar(f.type)] + [OUTPUT]


def check_by(by: list[str]) -> None:
    """Reject an unknown --by column before reading anything."""
    for name in by:
        if not name.startswith("vars.") and name not in groupable_columns():
            raise UserError(
                f"--by: {name!r} is not a column; available: "
                f"{', '.join(groupable_columns())}, vars.NAME"
            )


def by_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """A column to group by: a manifest column, ``output`` or ``vars.NAME``."""
    check_by([name])
    if name.startswith("vars."):
        var = name[5:]
        known = var_names(table)
        if var not in known:
            raise UserError(
                f"--by: {name!r} is not a template variable of these manifests; "
                f"known: {', '.join('vars.' + v for v in known) or 'none'}"
            )
        return pc.map_lookup(table["vars"], var, "first")
    col = table[name]
    return col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col


def _scalar(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t) or pa.types.is_map(t))


def summary_columns(by: list[str]) -> list[str]:
    """The manifest columns a summary needs (reading fewer columns is most of its speed)."""
    names = set(SCHEMA.names)
    need = ["status", "started", "finished", "duration_s"]
    for b in by:
        col = "vars" if b.startswith("vars.") else b
        if col in names and col not in need:
            need.append(col)
    return need


@dataclass
class ManifestSummary:
    manifests: list[str]
    jobs: int
    status: dict[str, int]
    started: datetime | None
    finished: datetime | None
    busy_s: float
    by: list[str] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)

    @property
    def images(self) -> int:
        return self.status.get("ok", 0)

    @property
    def span_s(self) -> float:
        if self.started is None or self.finished is None:
            return 0.0
        return (self.finished - self.started).total_seconds()

    def to_json(self) -> dict:
        iso = lambda d: d.isoformat() if d else None  # noqa: E731
        return {
            "manifests": self.manifests, "jobs": self.jobs, "status": self.status,
            "images": self.images, "started": iso(self.started), "finished": iso(self.finished),
            "span_s": self.span_s, "images_per_s": rate(self.images, self.span_s),
            "busy_s": self.busy_s, "images_per_busy_s": rate(self.images, self.busy_s),
            "by": self.by, "groups": [{k: iso(v) if isinstance(v, datetime) else v
                                       for k, v in g.items()} for g in self.groups],
        }  # fmt: skip


def rate(n: int, seconds: float) -> float | None:
    return n / seconds if seconds > 0 else None


def _ordered_statuses(statuses) -> list[str]:
    rest = sorted(s for s in statuses if s not in STATUS_ORDER and s is not None)
    return [s for s in STATUS_ORDER if s in statuses] + rest + ([None] if None in statuses else [])


def summarize(sources: list[Source], by: list[str] | None = None) -> ManifestSummary:
    by = list(by or [])
    check_by(by)
    table = read_sources(sources, summary_columns(by))
    keys = [by_column(table, b) for b in by]  # validates --by before any counting
    vc = pc.value_counts(table["status"]).to_pylist() if table.num_rows else []
    status = {d["values"]: d["counts"] for d in vc}
    status = {s: status[s] for s in _ordered_statuses(status)}
    started = pc.min(table["started"]).as_py()
    finished = pc.max(table["finished"]).as_py()
    busy = pc.sum(table["duration_s"]).as_py() or 0.0
    groups = _groups(by, keys, table["status"]) if by else []
    return ManifestSummary([str(s.out_dir) for s in sources], table.num_rows, status, started, finished,
                   float(busy), by, groups)  # fmt: skip


def _groups(by: list[str], keys: list[pa.ChunkedArray], status: pa.ChunkedArray) -> list[dict]:
    """Rows per combination of --by values, split by status."""
    names = [f"k{i}" for i in range(len(keys))]
    t = pa.table(dict(zip(names, keys, strict=True)) | {"status": status})
    counts = t.group_by([*names, "status"], use_threads=False).aggregate([([], "count_all")])
    statuses = _ordered_statuses(set(counts["status"].to_pylist()))
    cols = [counts[n].to_pylist() for n in names]
    out: dict[tuple, dict] = {}
    for *vals, st, n in zip(*cols, counts["status"].to_pylist(), counts["count_all"].to_pylist(),
                            strict=True):  # fmt: skip
        g = out.setdefault(tuple(vals), {"jobs": 0, **{str(s): 0 for s in statuses}})
        g["jobs"] += n
        g[str(st)] += n
    ordered = sorted(out.items(), key=lambda kv: [(v is None, _sort_key(v)) for v in kv[0]])
    return [dict(zip(by, k, strict=True)) | v for k, v in ordered]


def _sort_key(v):
    return (0, v, "") if isinstance(v, int | float) else (1, 0, str(v))


# --- merge -----------------------------------------------------------------------------------


def one_row_per_job(table: pa.Table) -> pa.Table:
    """Drop duplicate jobs across output folders; refuse two different images for one job.

    The same job (same job_id) in two folders must have the same image_sha256; a row with an
    image wins over one without (a failure elsewhere), then the newest ``finished``.
    """
    n = table.num_rows
    if n == 0 or len(pc.unique(table["job_id"])) == n:
        return table
    pair = pa.table({"job_id": table["job_id"], "sha": table["image_sha256"]})
    distinct = pair.group_by("job_id", use_threads=False).aggregate([("sha", "count_distinct")])
    bad = distinct.filter(pc.greater(distinct["sha_count_distinct"], 1))["job_id"]
    if len(bad):
        _raise_conflict(table, sorted(bad.to_pylist())[0])
    order = pa.table(
        {
            "job_id": table["job_id"],
            "has": pc.is_valid(table["image_sha256"]),
            "finished": table["finished"],
            "i": pa.array(range(n), pa.int64()),
        }
    ).sort_by([("job_id", "ascending"), ("has", "descending"), ("finished", "descending")])
    ids = order["job_id"].combine_chunks()
    first = pc.not_equal(ids.slice(1), ids.slice(0, n - 1))
    keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return table.take(order["i"].combine_chunks().filter(keep).sort())  # in read order


def _raise_conflict(table: pa.Table, job_id: str) -> None:
    rows = table.filter(pc.equal(table["job_id"], job_id))
    seen: dict[str, str] = {}
    for sha, out in zip(rows["image_sha256"].to_pylist(), rows[OUTPUT].to_pylist(), strict=True):
        if sha is not None:
            seen.setdefault(sha, out)
    (a, da), (b, db) = list(seen.items())[:2]
    raise DataError(
        f"job {job_id} has two different images: sha256 {a} ({da}) and {b} ({db}); "
        "the same job must give the same image"
    )


def plain_output(table: pa.Table, keep: bool) -> pa.Table:
    """``output`` as a plain string column, or dropped (reading a single output folder)."""
    i = table.schema.get_field_index(OUTPUT)
    if not keep:
        return table.remove_column(i)
    return table.set_column(i, OUTPUT, table[OUTPUT].cast(pa.string()))


@dataclass
class Merged:
    rows: int
    dropped: int  # duplicate jobs across output folders
    manifests: int


def merge(sources: list[Source], out: str | os.PathLike) -> Merged:
    out = Path(out)
    if out.is_dir():
        raise UserError(f"-o: {str(out)!r} is a folder; give a file name such as all.parquet")
    table = read_sources(sources)
    merged = plain_output(one_row_per_job(table), keep=len(sources) > 1)
    write_parquet_atomic(merged, out, row_group_size=128 * 1024)
    return Merged(merged.num_rows, table.num_rows - merged.num_rows, len(sources))


# --- verify ----------------------------------------------------------------------------------

CHUNK = 2048  # rows per thread-pool task: a million futures would cost more than the hashing


def _hash_inside(paths: ImagePaths, image: str, job: str) -> str:
    """sha256 of an image; if the file itself is a symlink it must resolve inside the output
    folder, else ``UnsafeImagePath`` (its folders were checked before, by ``allowed``)."""
    path = paths.out_dir / image
    try:
        return sha256_file(path, nofollow=True)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    paths(image, job)  # a symlink: raises unless it resolves inside
    return sha256_file(path)


def _check(paths: ImagePaths, job_ids: list, images: list, shas: list) -> list:
    """Problem lines for a chunk of rows, and an ``UnsafeImagePath`` where a symlink leads
    out (raised by ``verify`` once every chunk is done)."""
    problems = []
    for job, image, sha in zip(job_ids, images, shas, strict=True):
        if not image:
            problems.append(f"no image: job {job} is ok but its row names no image file")
            continue
        path = paths.out_dir / image
        try:
            actual = _hash_inside(paths, image, job)
        except UnsafeImagePath as exc:
            problems.append(exc)
            continue
        except FileNotFoundError:
            problems.append(f"missing: {path} (job {job})")
            continue
        except OSError as exc:
            problems.append(f"unreadable: {path} (job {job}): {exc.strerror or exc}")
            continue
        if actual != sha:
            problems.append(f"changed: {path} (job {job}): sha256 {actual}, recorded {sha}")
    return problems


def check_image_paths(paths: ImagePaths, table: pa.Table) -> None:
    """Refuse (``UnsafeImagePath``, naming the first such row) any ``image`` that would lead
    outside the output folder, before a single file is opened. Columnar: fast at 1M rows."""
    t = table.filter(pc.fill_null(pc.not_equal(table["image"], ""), False))  # "": "no image"
    allowed = paths.allowed(t["image"].combine_chunks())
    bad = pc.indices_nonzero(pc.invert(allowed))
    if len(bad):
        first = bad[0].as_py()
        image, job = t["image"][first].as_py(), t["job_id"][first].as_py()
        paths(image, job)  # raises, saying why
        raise UnsafeImagePath(job, image, "is not allowed")  # (not reached)


@dataclass
class Verified:
    checked: int
    problems: list[str]


def default_workers() -> int:
    return min(32, 4 * (os.cpu_count() or 1))


def verify(sources: list[Source], workers: int | None = None) -> Verified:
    """Hash every ``ok`` row's image and compare with the manifest (files in a thread pool).
    A damaged manifest file is a problem line (its rows cannot be checked); an image path that
    leads outside the output folder raises ``UnsafeImagePath`` (exit code 2)."""
    checked, problems, unsafe = 0, [], []
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for s in sources:
            m = Manifest(s.manifest_dir)
            t = m.read(["job_id", "status", "image", "image_sha256"], skip_damaged=True)
            problems += [
                f"damaged: {d.path} ({d.reason}); its rows are not checked. The next run of "
                f"the recipe, or `sdbatch-tools manifest repair {s.out_dir}`, moves it aside"
                for d in m.damaged
            ]
            tidy(s.out_dir, m)
            t = t.filter(pc.equal(t["status"], "ok"))
            paths = ImagePaths(s.out_dir)
            check_image_paths(paths, t)
            checked += t.num_rows
            cols = [t[c].to_pylist() for c in ("job_id", "image", "image_sha256")]
            starts = range(0, t.num_rows, CHUNK)
            tasks = [pool.submit(_check, paths, *(c[i : i + CHUNK] for c in cols))
                     for i in starts]  # fmt: skip
            for task in tasks:
                for p in task.result():
                    (unsafe if isinstance(p, UnsafeImagePath) else problems).append(p)
    if unsafe:
        raise unsafe[0]
    return Verified(checked, problems)
