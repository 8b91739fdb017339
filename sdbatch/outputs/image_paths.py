"""A manifest row's ``image`` path, followed only inside its output folder. No torch.

Rows are data a user may have edited or downloaded: an absolute path, a ``..`` component or a
symlink out of the folder must never be read, hashed, exported or deleted. ``ImagePaths``
checks many rows of one folder quickly (each sub-folder resolved once); ``safe_image_path``
checks one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.errors import UserError


class UnsafeImagePath(UserError):
    """A row's ``image`` would lead outside its output folder; it is never followed."""

    def __init__(self, job_id: str | None, image: str, why: str):
        self.job_id, self.image, self.why = job_id, image, why
        super().__init__(
            f"manifest row {job_id or '(no job_id)'}: image path {image!r} {why}; refusing to "
            "follow it (image paths must stay inside the output folder)"
        )


def _lexical_problem(rel: str) -> str | None:
    if not rel:
        return "is empty"
    if "\x00" in rel:
        return "holds a NUL character"
    if rel.startswith(("/", "\\")) or os.path.isabs(rel):
        return "is absolute"
    if ".." in re.split(r"[/\\]", rel):
        return "goes up out of the folder with '..'"
    return None


class ImagePaths:
    """``safe_image_path`` for many rows of one output folder: each sub-folder is resolved once,
    then one ``lstat`` per image (to see whether the file itself is a symlink)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self._root = os.path.realpath(self.out_dir)
        self._folders: dict[str, bool] = {}

    def inside(self, path: str) -> bool:
        """Does ``path`` (symlinks resolved) lie in the output folder?"""
        real = os.path.realpath(path)
        return real == self._root or real.startswith(self._root.rstrip(os.sep) + os.sep)

    def problem(self, rel: str) -> str | None:
        """Why ``rel`` may not be followed, or None when it stays inside the output folder."""
        why = self._lexical_and_folder(rel)
        if why is None:
            full = os.path.join(self._root, rel)
            if os.path.islink(full) and not self.inside(full):
                why = "leads outside the output folder through a symlink"
        return why

    def allowed(self, images: pa.Array) -> pa.BooleanArray:
        """``problem(p) is None`` for an Arrow array of non-null paths, fast at millions of
        rows: paths of the usual form ``images/NAME`` (one slash) need one check of the
        ``images`` folder, any other form is checked one by one. The last component is not
        looked at (no stat): callers ``lstat`` or open with ``O_NOFOLLOW`` and ask ``inside``
        for a symlink."""
        if len(images) == 0:
            return pa.array([], pa.bool_())
        slashes = pc.count_substring(images, "/")
        usual = pc.and_(pc.starts_with(images, "images/"), pc.equal(slashes, 1))
        usual = pc.and_(usual, pc.invert(pc.ends_with(images, "/..")))
        if _lexical_problem("images/x") is None and self._folder_ok("images"):
            flags = usual
        else:
            flags = pa.repeat(pa.scalar(False), len(images))
        rest = pc.indices_nonzero(pc.invert(usual))
        if len(rest) == 0:
            return flags
        verdicts = [self._lexical_and_folder(p) is None for p in images.take(rest).to_pylist()]
        return pc.replace_with_mask(flags, pc.invert(usual), pa.array(verdicts, pa.bool_()))

    def _folder_ok(self, head: str) -> bool:
        ok = self._folders.get(head)
        if ok is None:
            ok = self._folders[head] = self.inside(os.path.join(self._root, head))
        return ok

    def _lexical_and_folder(self, rel: str) -> str | None:
        why = _lexical_problem(rel)
        if why is None and not self._folder_ok(os.path.dirname(rel)):
            why = "leads outside the output folder through a symlink"
        return why

    def __call__(self, rel: str | None, job_id: str | None = None) -> Path:
        """``out_dir / rel``, or ``UnsafeImagePath`` (a one-line UserError naming the row)."""
        why = self.problem(rel) if isinstance(rel, str) else "is not a path"
        if why is not None:
            raise UnsafeImagePath(job_id, str(rel), why)
        return self.out_dir / rel


def safe_image_path(out_dir: str | os.PathLike, rel: str, job_id: str | None = None) -> Path:
    """``out_dir / rel`` for a row's ``image``, refusing absolute paths, ``..`` components and
    symlinks that resolve outside ``out_dir`` (``UnsafeImagePath``, exit code 2)."""
    return ImagePaths(out_dir)(rel, job_id)
