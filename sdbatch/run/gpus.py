"""One GPU per process in a multirun: which GPU a job takes. No torch.

Launchers that give each job its own GPU (Slurm with ``gpus_per_task``, Ray with
``num_gpus``) set ``CUDA_VISIBLE_DEVICES`` themselves, so a job sees one GPU and nothing
happens here. Launchers that start several processes on one machine and let each see every GPU
(Hydra's joblib launcher, ``hydra/launcher=local``; submitit's local executor with
``gpus_per_node=N``) need sdbatch to spread them: with N > 1 visible GPUs and
``run.device=auto``, a multirun job narrows ``CUDA_VISIBLE_DEVICES`` to GPU
``hydra.job.num % N`` before torch initialises CUDA (torch is imported lazily by the runner).

Workers are reused (joblib's loky runs many jobs in a few processes), and a process keeps the
GPU it initialised CUDA on. So a process pins at most once (after that it sees one GPU), and it
holds an advisory lock on its GPU while it lives (a file lock in the temp folder, per user and
GPU list; the kernel drops it when the process dies): a worker whose preferred GPU is held by
another sdbatch process takes the next free one, so n_jobs workers on n_jobs GPUs never share
one, whichever jobs they happen to pick up first.

The selection (`parse_visible`, `parse_nvidia_smi`, `choose`) is pure; `pin` applies it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, MutableMapping, Sequence
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no coordination between workers, the plain modulo rule
    fcntl = None

ENV = "CUDA_VISIBLE_DEVICES"
_HELD: list[int] = []  # lock file descriptors, kept open for the life of the process


def parse_visible(value: str | None) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as a list of device ids; None when unset (no restriction).

    CUDA stops at the first negative index (``-1`` hides every GPU), so we do too.
    """
    if value is None:
        return None
    ids: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-"):
            break
        ids.append(item)
    return ids


_GPU_LINE = re.compile(r"^GPU (\d+):.*\(UUID: (GPU-[^)]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)]+)\)")


def parse_nvidia_smi(text: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indices; where some GPU is in MIG mode, UUIDs
    (a MIG instance's for each instance, since a CUDA process can use only one of them)."""
    devices: list[tuple[str, str, list[str]]] = []  # (index, UUID, MIG instance UUIDs)
    for line in text.splitlines():
        if m := _GPU_LINE.match(line):
            devices.append((m.group(1), m.group(2), []))
        elif (m := _MIG_LINE.match(line)) and devices:
            devices[-1][2].append(m.group(1))
    if any(migs for _, _, migs in devices):
        return [u for _, uuid, migs in devices for u in (migs or [uuid])]
    return [index for index, _, _ in devices]


def choose(job_num: int, gpus: Sequence[str], busy: Collection[str] = ()) -> str:
    """GPU ``job_num % N``, or the next one after it that no other worker holds."""
    if not gpus:
        raise ValueError("no GPUs to choose from")
    start = job_num % len(gpus)
    order = [gpus[(start + k) % len(gpus)] for k in range(len(gpus))]
    return next((g for g in order if g not in busy), order[0])


def nvidia_smi() -> str:
    """``nvidia-smi -L``, or "" where there is none (no NVIDIA driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        return subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def visible_gpus(
    env: MutableMapping[str, str] | None = None, smi: Callable[[], str] = nvidia_smi
) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else nvidia-smi's."""
    env = os.environ if env is None else env
    ids = parse_visible(env.get(ENV))
    return parse_nvidia_smi(smi()) if ids is None else ids


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _try_lock(folder: Path, gpu: str) -> int | None:
    """An exclusive, non-blocking lock on ``folder/<gpu>.lock``; its fd, or None if held."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / (re.sub(r"[^\w.-]", "_", gpu) + ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def lock_folder(gpus: Sequence[str]) -> Path:
    """Where the sdbatch processes of one user that see the same GPUs coordinate."""
    key = hashlib.sha256(",".join(gpus).encode()).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"sdbatch-gpus-{uid}" / key


def pin(
    job_num: int,
    env: MutableMapping[str, str] | None = None,
    smi: Callable[[], str] = nvidia_smi,
    locks: Path | None = None,
) -> str | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to one GPU for multirun job ``job_num``.

    Does nothing (returns None) with fewer than two visible GPUs or once torch has initialised
    CUDA in this process; otherwise returns a line saying which GPU was taken.
    """
    env = os.environ if env is None else env
    gpus = visible_gpus(env, smi)
    if len(gpus) < 2 or _cuda_initialised():
        return None
    folder = locks if locks is not None else lock_folder(gpus)
    start = job_num % len(gpus)
    busy: set[str] = set()
    for gpu in gpus[start:] + gpus[:start] if fcntl is not None else []:
        fd = _try_lock(folder, gpu)
        if fd is not None:
            _HELD.append(fd)
            break
        busy.add(gpu)
    gpu = choose(job_num, gpus, busy)
    env[ENV] = gpu
    shared = " (every GPU is held by another worker: sharing)" if len(busy) == len(gpus) else ""
    return f"gpu: multirun job {job_num} takes {ENV}={gpu} of {len(gpus)} visible GPUs{shared}"
