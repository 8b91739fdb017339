"""File and model hashes (pure: hashlib only).

A1111's "Model hash" is the first 10 hex chars of the sha256 of the whole checkpoint file.
For a diffusers folder there is no single file, so we hash a listing: for every file under the
folder (sorted by relative path) the line ``<relative path> <sha256 of the file>``; the model
hash is the first 10 hex chars of the sha256 of that listing. Renaming or changing any file
changes it; the folder's own location does not.

Whole-file hashes are cached by (absolute path, size, mtime) in ``~/.cache/sdbatch/hashes.json``
(``SDBATCH_CACHE`` moves it), so a multi-GB checkpoint is read once, not every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, nofollow: bool = False) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks with plain os.read calls (no file
    object: ~2x faster on the many tiny files of a verify). ``nofollow``: a symlink as the
    last component fails with ELOOP (no extra system call)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | (os.O_NOFOLLOW if nofollow else 0))
    try:
        while block := os.read(fd, CHUNK):
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_path() -> Path:
    root = os.environ.get("SDBATCH_CACHE") or Path.home() / ".cache" / "sdbatch"
    return Path(root) / "hashes.json"


def _load_cache() -> dict:
    """The cache, or an empty one when it is missing, unreadable or not what we wrote."""
    try:
        cache = json.loads(_cache_path().read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _save_cache(cache: dict) -> None:
    """Best effort: an unwritable cache only costs speed."""
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        pass


def cached_sha256(path: str | os.PathLike, kind: str = "", digest_of=None) -> str:
    """sha256 of a file, remembered by (path, size, mtime_ns). ``kind`` + ``digest_of``: another
    digest of the file under its own key (LoRA's addnet hash: ``kind="addnet"``)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{kind}:{p}" if kind else str(p)
    cache = _load_cache()
    hit = cache.get(key)
    if (
        isinstance(hit, dict)
        and hit.get("size") == st.st_size
        and hit.get("mtime_ns") == st.st_mtime_ns
        and isinstance(hit.get("sha256"), str)
    ):
        return hit["sha256"]
    digest = (digest_of or sha256_file)(p)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _save_cache(cache)
    return digest


def folder_listing(folder: str | os.PathLike) -> str:
    """The text hashed for a folder: one ``relpath sha256`` line per file, sorted."""
    root = Path(folder)
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            lines.append(f"{p.relative_to(root).as_posix()} {cached_sha256(p)}\n")
    return "".join(lines)


def model_hash(path: str | os.PathLike) -> str:
    """A1111-style 10-hex-char model hash of a checkpoint file or a diffusers folder."""
    p = Path(path)
    if p.is_dir():
        return sha256_bytes(folder_listing(p).encode())[:10]
    return cached_sha256(p)[:10]
