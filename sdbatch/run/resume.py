"""Resume: which jobs of a plan are already done, from one read of the manifest.

Why its own module: the scan must stay fast at millions of rows (Arrow filtering, one stat
per image split across helper processes past ``STAT_SPLIT`` files) and import no torch.

An image path that would lead outside the output folder (absolute, ``..``, a symlink out) makes
its job not done: it is never hashed, and the run renders the job again into ``images/``.
Checked in Arrow plus one ``realpath`` per distinct folder; the per-image stat is an ``lstat``,
so an image that is itself a symlink pointing out is caught at no extra cost.
"""

from __future__ import annotations

import os
import stat as stat_mode
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sdbatch.outputs.image_paths import ImagePaths
from sdbatch.outputs.manifest import Manifest
from sdbatch.plan.hashing import sha256_file
from sdbatch.plan.recipe import Job


def scan_manifest(jobs: list[Job], out_dir: Path, manifest: Manifest, verify: str = "hash",
                  skip_damaged: bool = False):  # fmt: skip
    """(done, failed, seen) job ids of the plan. Done: the row says ok and the image is on
    disk, unchanged (sha256, or a non-empty file with ``verify=size``), at a path inside the
    output folder; seen: every job that has a row. One read of the manifest, filtered in Arrow;
    only the id sets and the checked paths become Python objects. At 1M rows with
    ``verify=size`` the 1M stats dominate. ``skip_damaged``: damaged manifest files are left
    out (listed in ``manifest.damaged``) instead of raising ``DamagedManifest`` (a dry run)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    by_size = verify == "size"
    columns = ["job_id", "status", "image"] + ([] if by_size else ["image_sha256"])
    table = manifest.read(columns=columns, skip_damaged=skip_damaged)
    wanted = pa.array([j.job_id for j in jobs], pa.string())
    table = table.filter(pc.is_in(table["job_id"], value_set=wanted))
    ids = table["job_id"]
    ok = pc.equal(table["status"], "ok")
    failed = set(ids.filter(pc.invert(ok)).to_pylist())
    check = pc.fill_null(pc.and_(ok, pc.is_valid(table["image"])), False).combine_chunks()
    rows = table.filter(check)
    base = os.fspath(out_dir)
    paths = ImagePaths(out_dir)
    safe = paths.allowed(rows["image"].combine_chunks())

    if by_size:
        good = pc.and_(safe, _nonempty_files(base, rows["image"].combine_chunks()))
    else:  # hashing releases the GIL; bounded chunks keep memory flat at millions of rows
        images, hashes = (rows[c].to_pylist() for c in ("image", "image_sha256"))
        allowed = safe.to_pylist()

        def intact(i: int) -> bool:
            path = os.path.join(base, images[i])
            try:
                if not allowed[i] or not _regular(os.lstat(path), path, paths):
                    return False
                return sha256_file(path) == hashes[i]
            except (OSError, ValueError):
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


def _regular(st: os.stat_result, path, paths: ImagePaths) -> bool:
    """An lstat says: a non-empty regular file, or a symlink to one inside the output folder."""
    if stat_mode.S_ISLNK(st.st_mode):
        if not paths.inside(os.fsdecode(path)):
            return False
        st = os.stat(path)
    return stat_mode.S_ISREG(st.st_mode) and st.st_size > 0


STAT_SPLIT = 200_000  # from this many files on, helper processes share the stats
_STAT_HELPER = """import os, sys
os.chdir(sys.argv[1])
out, lstat, root = bytearray(), os.lstat, os.path.realpath(".")
def inside(path):
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)
for path in sys.stdin.buffer.read().split(b"\\0"):
    try:
        st = lstat(path)
        if (st.st_mode & 0o170000) == 0o120000:
            st = os.stat(path) if inside(os.fsdecode(path)) else None
        out.append(st is not None and (st.st_mode & 0o170000) == 0o100000 and st.st_size > 0)
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
    """One byte per path (relative to ``base``): 1 for a non-empty regular file (or a symlink
    to one inside ``base``), else 0. An lstat: a symlink costs a second look, nothing else."""
    fd, prefix = None, os.fsencode(base) + os.sep.encode()
    if os.stat in os.supports_dir_fd:
        try:
            fd, prefix = os.open(base, os.O_RDONLY), b""
        except OSError:
            pass
    lstat, flags, is_reg, is_link = os.lstat, [], stat_mode.S_ISREG, stat_mode.S_ISLNK
    append, paths_in = flags.append, None
    try:
        for path in paths:
            try:
                st = lstat(prefix + path, dir_fd=fd)
                if is_reg(st.st_mode):
                    append(st.st_size > 0)
                elif is_link(st.st_mode):
                    paths_in = paths_in or ImagePaths(base)
                    full = os.path.join(os.fsencode(base), path)
                    append(_regular(os.lstat(full), full, paths_in))
                else:
                    append(False)
            except (OSError, ValueError):
                append(False)
    finally:
        if fd is not None:
            os.close(fd)
    return bytes(flags)
