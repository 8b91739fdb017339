"""Session fixtures: a one-node Slurm cluster (tests/cluster/slurm.py) and a local Ray cluster
(tests/cluster/ray_cluster.py), each started once per test session and stopped at its end.
Where one cannot start (packages missing, not root), its tests skip with the reason, which
``-ra`` (pyproject's addopts) prints in the summary of ``make test``.

The unsharded reference run of checks.SHARDED is shared by the Slurm and the Ray tests.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.cluster import checks, ray_cluster, slurm
from tests.conftest import sdbatch_env


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    try:
        slurm.check()
    except slurm.Unavailable as exc:
        pytest.skip(f"no Slurm cluster: {exc}")
    cluster = slurm.start(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def _reference_run(tmp_path_factory):
    """Starts the reference run (see ``reference``) in the background."""
    out = tmp_path_factory.mktemp("reference") / "out"
    cache = str(tmp_path_factory.getbasetemp() / "cache")
    env = sdbatch_env(SDBATCH_CACHE=cache, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.Popen(
        [checks.SDBATCH, *checks.SHARDED, f"output.dir={out}"],
        cwd=out.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory, _reference_run):
    """The head; the reference renders while it starts (Ray's start is mostly waiting)."""
    try:
        ray_cluster.check()
    except ray_cluster.Unavailable as exc:
        pytest.skip(f"no Ray cluster: {exc}")
    # Ray's socket paths must stay under 108 bytes: a short folder of its own
    with tempfile.TemporaryDirectory(prefix="sdb-ray-") as temp:
        head = ray_cluster.start(Path(temp), cache=tmp_path_factory.getbasetemp() / "cache")
        try:
            yield head
        finally:
            head.stop()


@pytest.fixture(scope="session")
def reference(_reference_run) -> Path:
    """checks.SHARDED rendered in one unsharded run, without any cluster, on one thread like
    every shard: on a CPU, torch's thread count changes the last bit of a few pixels."""
    out, proc = _reference_run
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    return out
