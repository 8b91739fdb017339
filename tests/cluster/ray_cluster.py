"""A local Ray cluster for the tests: ``ray start --head --block`` on 127.0.0.1 with 2 CPUs.

The head runs in the foreground as a child of the test session, in a process group of its
own; ``stop()`` ends that group (the head, its raylet and its workers), so nothing is left
behind and no other Ray on the machine is touched (``ray stop`` would stop every one).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.slurm import free_port
from tests.conftest import sdbatch_env

RAY = Path(sys.executable).parent / "ray"


class Unavailable(RuntimeError):
    """Ray cannot start here; the message says why (for pytest.skip)."""


@dataclass
class Head:
    address: str
    proc: subprocess.Popen
    log: Path
    home: Path  # HOME for the head and its drivers

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # ray start --block stops its processes
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any worker left in the group
        except ProcessLookupError:
            pass


def check() -> None:
    if importlib.util.find_spec("ray") is None or not RAY.is_file():
        raise Unavailable("ray is not installed: pip install -e '.[ray]' (.ci/run does)")


def start(temp: Path, cache: Path) -> Head:
    """Start the head; its workers see the test session's hash cache and an offline hub."""
    check()
    port = free_port()
    log = temp / "ray-head.log"
    home = temp / "home"  # Ray reads ~/.ray (an auth token from another Ray): not the user's
    home.mkdir()
    env = sdbatch_env(SDBATCH_CACHE=str(cache), RAY_USAGE_STATS_ENABLED="0", HOME=str(home))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        str(RAY),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
        "--object-store-memory=100000000",
    ]
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = Head(address=f"127.0.0.1:{port}", proc=proc, log=log, home=home)
    end = time.monotonic() + 90
    while b"Ray runtime started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > end:
            head.stop()
            raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return head
