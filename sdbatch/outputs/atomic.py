"""Crash-safe file writes: a file appears whole under its name, or not at all.

Write to a hidden temporary name beside the target, flush and fsync, rename over the target,
then (optionally) fsync the folder so the rename itself survives a power cut. On any error the
temporary file is removed. Readers skip hidden files, so they never see a partial one.

A kill (SIGKILL, power cut) skips that removal and leaves the hidden ``.NAME.XXXXXXXX.tmp``
behind; ``temp_files`` finds those names so a later run, holding the output lock, can delete
them (``sdbatch.outputs.heal``).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# what atomic_file names its temporary file: "." + the target's name + "." + 8 hex digits + ".tmp"
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{8}\.tmp")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def temp_files(folder: str | os.PathLike, suffix: str = "") -> list[Path]:
    """The temporary files ``atomic_file`` left in ``folder`` (not below it) for targets whose
    name ends in ``suffix``, e.g. ``temp_files(images, ".png")``. Only regular files match."""
    found = []
    try:
        names = [n for n in os.listdir(folder) if n[:1] == "."]  # listdir: 1M names in ~0.3 s
    except OSError:
        return []
    for name in names:
        m = TEMP_NAME.fullmatch(name)
        path = Path(folder, name)
        if m and m["target"].endswith(suffix) and path.is_file() and not path.is_symlink():
            found.append(path)
    return sorted(found)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside ``path`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", sync_dir: bool = True,
                **open_kwargs) -> Iterator:  # fmt: skip
    """``with atomic_file(p) as f: f.write(...)`` -- ``p`` gets all of it or nothing."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, sync_dir: bool = True) -> None:
    with atomic_file(path, "wb", sync_dir=sync_dir) as f:
        f.write(data)
