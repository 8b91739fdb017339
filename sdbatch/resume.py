"""Resume: which jobs of a plan are already done, from one read of the manifest.

Why its own module: the scan must stay fast at millions of rows (Arrow filtering, one stat
per image split across helper processes past ``STAT_SPLIT`` files) and import no torch.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sdbatch.hashing import sha256_file
from sdbatch.manifest import Manifest
from sdbatch.recipe import Job


def scan_manifest(jobs: list[Job], out_dir: Path, manifest: Manifest, verify: str = "hash"):
    """(done, failed, seen) job ids of the plan. Done: the row says ok and the image is on
    disk, unchanged (sha256, or a non-empty file with ``verify=size``); seen: every job that
    has a row. One read of the manifest, filtered in Arrow; only the id sets and the checked
    paths become Python objects. At 1M rows with ``verify=size`` the 1M stats dominate."""
    import pyarrow as pa
    import pyarrow.compute as pc

    by_size = verify == "size"
    columns = ["job_id", "status", "image"] + ([] if by_size else ["image_sha256"])
    table = manifest.read(columns=columns)
    wanted = pa.array([j.job_id for j in jobs], pa.string())
    table = table.filter(pc.is_in(table["job_id"], value_set=wanted))
    ids = table["job_id"]
    ok = pc.equal(table["status"], "ok")
    failed = set(ids.filter(pc.invert(ok)).to_pylist())
    check = pc.fill_null(pc.and_(ok, pc.is_valid(table["image"])), False).combine_chunks()
    rows = table.filter(check)
    base = os.fspath(out_dir)

    if by_size:
        good = _nonempty_files(base, rows["image"].combine_chunks())
    else:  # hashing releases the GIL; bounded chunks keep memory flat at millions of rows
        images, hashes = (rows[c].to_pylist() for c in ("image", "image_sha256"))

        def intact(i: int) -> bool:
            try:
                return sha256_file(os.path.join(base, images[i])) == hashes[i]
            except OSError:
                return False

        flags = []
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            for start in range(0, len(images), 4096):
                flags += pool.map(intact, range(start, min(start + 4096, len(images))))
        good = pa.array(flags, pa.bool_())
    is_done = pc.replace_with_mask(check, check, good)  # each checked row takes its verdict
    seen = set(ids.to_pylist())
    if 2 * (pc.sum(is_done).as_py() or 0) >= len(ids):  # mostly done: drop the few that aren't
        return seen.difference(ids.filter(pc.invert(is_done)).to_pylist()), failed, seen
    return set(ids.filter(is_done).to_pylist()), failed, seen


STAT_SPLIT = 200_000  # from this many files on, helper processes share the stats
_STAT_HELPER = """import os, sys
os.chdir(sys.argv[1])
out, stat = bytearray(), os.stat
for path in sys.stdin.buffer.read().split(b"\\0"):
    try:
        out.append(stat(path).st_size > 0)
    except (OSError, ValueError):
        out.append(0)
sys.stdout.buffer.write(out)
"""


def _nonempty_files(base: str, images):
    """Arrow booleans: is each image (an Arrow string array of paths relative to ``base``) on
    disk and non-empty? One stat per file, ~2 us in Python (a third of it in the GIL, so
    threads do not help: measured slower). Many files are shared with helper processes
    (``python -I -S``, paths in on stdin, one byte per path out), one per CPU up to 4, while
    this one does its own share; a helper that fails has its share done here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    paths = images.cast(pa.binary()).to_pylist()  # bytes: os.stat takes them as they are
    n = len(paths)
    parts = min(os.cpu_count() or 1, 4, n) if n >= STAT_SPLIT and sys.executable else 1
    step = max(1, -(-n // parts))  # the last share, done here, may be shorter
    helpers = [(lo, _stat_helper(base, paths[lo : lo + step])) for lo in range(0, n - step, step)]
    own = _stat_here(base, paths[step * len(helpers) :])
    flags = bytearray()
    for lo, proc in helpers:
        chunk = paths[lo : lo + step]
        got = b""
        if proc is not None:
            with proc.stdout:
                got = proc.stdout.read()
            if proc.wait() != 0:
                got = b""
        flags += got if len(got) == len(chunk) else _stat_here(base, chunk)
    flags += own
    codes = pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(flags)])
    return pc.not_equal(codes, 0)


def _stat_helper(base: str, paths: list[bytes]):
    """A started helper process with its paths written, or None if it could not start."""
    import subprocess

    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _STAT_HELPER, base],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    except OSError:
        return None
    try:
        with proc.stdin:
            proc.stdin.write(b"\0".join(paths))
    except OSError:  # it died early (no such folder, say): its exit status tells
        pass
    return proc


def _stat_here(base: str, paths: list[bytes]) -> bytes:
    """One byte per path (relative to ``base``): 1 for a non-empty file, else 0."""
    fd, prefix = None, os.fsencode(base) + os.sep.encode()
    if os.stat in os.supports_dir_fd:
        try:
            fd, prefix = os.open(base, os.O_RDONLY), b""
        except OSError:
            pass
    stat, flags = os.stat, []
    append = flags.append
    try:
        for path in paths:
            try:
                append(stat(prefix + path, dir_fd=fd).st_size > 0)
            except (OSError, ValueError):
                append(False)
    finally:
        if fd is not None:
            os.close(fd)
    return bytes(flags)
