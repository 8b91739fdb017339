"""Run a whole process and measure what a user feels: wall time and the process's peak RSS.

Output goes to temporary files, not pipes, so the parent can block in ``os.wait4`` (which
returns that child's own rusage) without a full pipe deadlocking the child.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass


@dataclass
class Proc:
    wall: float  # seconds from just before the spawn to the child's exit
    rss_mib: float  # the child's own peak resident memory
    cpu: float  # the child's user + system CPU seconds (steadier than wall on a busy machine)
    spawned: float  # epoch seconds just before the spawn (children report epoch moments)
    stdout: str
    stderr: str

    def last_line(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""


def spawn(args: list[str], env: dict | None = None, cwd: str | None = None) -> Proc:
    """Run ``args`` to completion; raise with its stderr's tail if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        spawned = time.time()
        t = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        res = Proc(
            wall, usage.ru_maxrss / 1024, cpu, spawned, out.read().decode(), err.read().decode()
        )
    if code:
        tail = "\n".join(res.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, args[:4]))} ... exited {code}:\n{tail}")
    return res
