"""``sdbatch-tools ray-shards`` on a local Ray cluster (tests/cluster/ray_cluster.py, 2 CPUs).

checks.SHARDED in 2 shards, one Ray task each. While shard 1 renders, its Ray worker is
killed (SIGKILL; its sdbatch process dies with it): Ray runs the task again, the rerun resumes,
and the shards' union is the unsharded run: one row per job, bit-identical images and rows;
``manifest verify`` and ``merge`` agree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.cluster import checks
from tests.conftest import sdbatch_env

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_ray_shards_survive_a_killed_worker_and_equal_the_unsharded_run(
    ray_head, reference, tmp_path
):
    out = tmp_path / "out"
    cmd = [checks.TOOLS, "ray-shards", "--shards", "2", "--address", ray_head.address,
           *checks.SHARDED, f"output.dir={out}"]  # fmt: skip
    env = sdbatch_env(
        SDBATCH_CACHE=str(tmp_path.parent / "cache"),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",  # Ray folds near-alike lines of two workers (the rerun's plan line)
        HOME=str(ray_head.home),
    )
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    shard1 = out / "shard-1-of-2"
    try:
        end = time.monotonic() + 240
        while not list(shard1.glob("manifest/*.parquet")):
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()[0]
            time.sleep(0.1)
        sdbatch_pid = json.loads((shard1 / ".sdbatch.lock").read_text())["pid"]
        with open(f"/proc/{sdbatch_pid}/stat") as f:
            worker = int(f.read().rsplit(")", 1)[1].split()[1])  # the Ray worker: its parent
        os.kill(worker, signal.SIGKILL)
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log
    assert f"shard 0 of 2: exit code 0: {out / 'shard-0-of-2'}" in log, log
    assert f"shard 1 of 2: exit code 0: {shard1}" in log, log
    # the rerun of shard 1 found the batches its killed worker had finished
    n = checks.SHARD_JOBS
    reruns = [ln for ln in log.splitlines() if f"shard 1 of 2: {n} jobs" in ln]
    assert len(reruns) == 2 and "; 0 done;" in reruns[0], reruns
    done_before = int(reruns[1].split("; ")[1].split()[0])
    assert 0 < done_before < n, reruns
    assert f"done: {n - done_before} written, {done_before} skipped" in log, log
    checks.same_as_reference(out, reference, checks.SHARDED_JOBS)
    checks.merge_and_verify(out, tmp_path, checks.SHARDED_JOBS)
