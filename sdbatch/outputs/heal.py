"""Repair an output folder after a kill or a damaged file, before a run looks at what is done.

``heal_output`` runs under the output lock (the run, or ``sdbatch-tools manifest repair``):

1. finish a compaction a kill interrupted, or undo it (``Manifest.finish_compaction``);
2. move damaged manifest files into ``manifest/_quarantine/`` (never deleted), one message each;
3. remove the temporary files kills leave (``images/.NAME.png.XXXXXXXX.tmp``,
   ``manifest/.NAME.XXXXXXXX.tmp``: only names ``sdbatch.outputs.atomic.atomic_file`` makes);
4. if a file was moved aside, give its lost rows back from the images on disk: an image
   ``images/{seed}-{job_id}.png`` of a job of the plan that has no row gets the row the runner's
   ``make_row`` builds; an image of another job gets one from its PNG infotext (prompt, sampler,
   steps, CFG, seed, size, model); the rest are left and reported;
5. if some job has two rows (a retry killed before its compaction), compact everything,
   newest row winning, so plain Parquet readers see one row per job.

Every step is a no-op on a healthy folder; the cost there is one full decode of the manifest
(0.7-0.9 s per million rows on 2 cores) and one listing of ``images/`` (0.3 s per million
files). Pure pyarrow; Pillow only to read infotext when rows are recovered.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sdbatch.outputs.atomic import temp_files
from sdbatch.outputs.manifest import JOURNAL, QUARANTINE, SCHEMA, Manifest

RECOVERED = "recovered from the image after a damaged manifest file"
RECOVERED_INFOTEXT = (
    "recovered from the image's infotext after a damaged manifest file "
    "(recipe, template and scheduler unknown)"
)
IMAGE_NAME = re.compile(r"(?P<seed>\d+)-(?P<job_id>[0-9A-Za-z]+)\.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MakeRow = Callable[[object, str, str], dict]


def heal_output(
    out_dir: Path, manifest: Manifest, jobs: list, make_row: MakeRow | None
) -> list[str]:
    """Repair ``out_dir`` (see the module docstring); one-line messages to print, none when
    there was nothing to do. ``jobs``: the plan's Job objects; ``make_row(job, image_rel,
    image_sha256)`` builds a complete row for an ok image. Call it holding the output lock."""
    out_dir = Path(out_dir)
    messages = []
    if note := manifest.finish_compaction():
        messages.append(note)
    health = manifest.check()
    damaged = health.damaged
    for d in damaged:
        dest = manifest.quarantine(d.path)
        messages.append(
            f"manifest file {d.path} is damaged ({d.reason}); moved it to {dest}, "
            "its rows are taken back from the images"
        )
    temps = temp_files(out_dir / "images", ".png") + temp_files(manifest.dir)
    removed = []
    for path in temps:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            messages.append(f"could not remove the temporary file {path}: {exc.strerror}")
    if removed:
        shown = ", ".join(str(p.relative_to(out_dir)) for p in removed[:3])
        more = f" and {len(removed) - 3} more" if len(removed) > 3 else ""
        messages.append(
            f"removed {len(removed)} temporary file{'s' if len(removed) != 1 else ''} "
            f"a killed run left ({shown}{more})"
        )
    if damaged:
        messages += recover_rows(out_dir, manifest, jobs, make_row)
    superseded = health.superseded
    if superseded:
        manifest.compact(full=True)
        messages.append(
            f"manifest: {superseded} superseded row{'s' if superseded != 1 else ''} removed by "
            "a full compaction (Parquet readers see one row per job again)"
        )
    return messages


def tidy(out_dir: Path, manifest: Manifest) -> bool:
    """After a read-only tool read ``manifest``: if that read found a superseded row (a job
    twice) or an interrupted compaction, and no run holds the output lock, fix it for plain
    Parquet readers (finish the compaction, compact everything). Best effort and silent:
    a folder we cannot lock or write is left as it is. True when it compacted."""
    if not manifest.superseded and not (manifest.dir / JOURNAL).exists():
        return False
    from sdbatch.outputs.lock import OutputLock
    from sdbatch.errors import UserError

    lock = OutputLock(out_dir)
    try:
        lock.acquire()
    except (UserError, OSError):  # a run holds it (and compacts when it ends), or read-only
        return False
    try:
        manifest.finish_compaction()
        if manifest.superseded:
            manifest.compact(full=True)
        return True
    except (UserError, OSError):
        return False
    finally:
        lock.release()


def dry_run_notes(manifest: Manifest) -> list[str]:
    """What a real run's ``heal_output`` would repair in the manifest, for a dry run, which
    writes nothing: damaged files (every page decoded) and an interrupted compaction."""
    notes = []
    for d in manifest.check().damaged:
        notes.append(
            f"manifest file {d.path} is damaged ({d.reason}); a real run moves it aside into "
            f"{manifest.dir / QUARANTINE} and recovers its rows from the images"
        )
    if (manifest.dir / JOURNAL).exists():
        notes.append(
            f"manifest: a compaction was interrupted ({manifest.dir / JOURNAL}); "
            "a real run finishes or undoes it"
        )
    return notes


def recover_rows(out_dir: Path, manifest: Manifest, jobs: list, make_row: MakeRow | None):
    """Append rows for images on disk whose job has no row; messages saying what was done."""
    present = set(manifest.read_ids().to_pylist())
    by_id = {j.job_id: j for j in jobs}
    folder = Path(out_dir) / "images"
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        m = IMAGE_NAME.fullmatch(name)
        if m and m["job_id"] not in present:
            found.append((name, int(m["seed"]), m["job_id"]))
    if not found:
        return []

    def recover(item) -> tuple[object, str, str]:
        """(row, job or None; kind; name): kind is plan, infotext, or why it was left. Files
        are read here, in threads; the runner's make_row is called once back in this one."""
        name, seed, job_id = item
        path, rel = folder / name, f"images/{name}"
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return None, "not a regular file", name
            data = path.read_bytes()
        except OSError:
            return None, "unreadable", name
        if not data.startswith(PNG_MAGIC):
            return None, "not a PNG", name
        sha = hashlib.sha256(data).hexdigest()
        job = by_id.get(job_id)
        if job is not None and make_row is not None:
            if job.image_name != name:
                return None, "seed differs from the plan's", name
            return (job, rel, sha), "plan", name
        row = row_from_infotext(path, job_id, seed, rel, sha)
        return (row, "infotext", name) if row else (None, "no usable infotext", name)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(recover, sorted(found)))
    rows = []
    for got, kind, _ in results:
        if kind == "plan":
            row = dict(make_row(*got))
            row["note"] = RECOVERED if not row.get("note") else f"{RECOVERED}; {row['note']}"
            rows.append(row)
        elif got is not None:
            rows.append(got)
    if rows:
        manifest.append(rows)
    messages = []
    n_plan = sum(kind == "plan" for _, kind, _ in results)
    n_info = sum(kind == "infotext" for _, kind, _ in results)
    left = [(kind, name) for got, kind, name in results if got is None]
    if n_plan:
        messages.append(
            f"manifest: recovered {n_plan} row{'s' if n_plan != 1 else ''} of this plan's jobs "
            f"from their images on disk (note: {RECOVERED!r})"
        )
    if n_info:
        messages.append(
            f"manifest: recovered {n_info} row{'s' if n_info != 1 else ''} of images that are "
            "not jobs of this plan from their PNG infotext (recipe, template, scheduler unknown)"
        )
    if left:
        kind, name = left[0]
        messages.append(
            f"manifest: {len(left)} image{'s' if len(left) != 1 else ''} on disk ha"
            f"{'ve' if len(left) != 1 else 's'} no row and could not be recovered; left as "
            f"{'they are' if len(left) != 1 else 'it is'} (e.g. images/{name}: {kind})"
        )
    return messages


def row_from_infotext(path: Path, job_id: str, seed: int, rel: str, sha: str) -> dict | None:
    """A manifest row from an image's A1111 infotext, or None when it has none usable (no
    params line, no size/steps/CFG, a seed other than its file name's)."""
    try:
        from sdbatch.outputs.infotext import parse_infotext, parse_size, read_png_infotext, sampler_name

        text = read_png_infotext(path)
    except (ImportError, OSError, ValueError, SyntaxError):  # Pillow missing or a bad PNG
        return None
    if not text:
        return None
    info = parse_infotext(text)
    p = info.params
    try:
        width, height = parse_size(p["Size"])
        steps, cfg = int(p["Steps"]), float(p["CFG scale"])
        if int(p["Seed"]) != seed:
            return None
    except (KeyError, ValueError):
        return None
    row = {f.name: None for f in SCHEMA}
    row.update(
        job_id=job_id, prompt=info.prompt, negative_prompt=info.negative_prompt, vars=[],
        sampler=sampler_name(p), steps=steps, cfg=cfg, seed=seed, width=width, height=height,
        model=p.get("Model"), model_hash=p.get("Model hash"), image=rel, image_sha256=sha,
        status="ok", note=RECOVERED_INFOTEXT, infotext=text,
    )  # fmt: skip
    return row
