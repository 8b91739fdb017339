"""docs/launchers.md's Slurm commands, run on a real one-node Slurm cluster (tests/cluster/slurm.py)
through Hydra's submitit launcher (hydra/launcher=slurm), sized for a 2-core node.

- a multirun sweep: one array task per job, each job's folder and rows, sacct's states;
- one recipe in 2 shards as a job array; ``scancel`` of the running shard 1 (SIGTERM: it stops
  after the batch in flight), the same command again (it resumes), then ``manifest verify`` and
  ``merge``: one row per job, images and rows bit-identical to an unsharded run;
- ``run.deadline`` inside the Slurm time limit: the job stops cleanly (exit code 4, sacct
  COMPLETED), well before Slurm would kill it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster import checks
from tests.conftest import sdbatch_env

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The plugin's defaults (1 GPU, 8 CPUs, 32 GB a task) never fit a 2-core node without GPUs.
SMALL_NODE = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_task=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]


def env_for(cluster, tmp_path: Path) -> dict:
    return {
        "SLURM_CONF": cluster.env["SLURM_CONF"],
        "PATH": cluster.env["PATH"],
        "SDBATCH_CACHE": str(tmp_path.parent / "cache"),
    }


def array_id(sweep: Path) -> str:
    """The job array's id, from submitit's folders (``<array>_<task>``) in the sweep."""
    (job,) = {p.name.split("_")[0] for p in (sweep / ".submitit").glob("*_*") if p.is_dir()}
    return job


def sacct_states(cluster, job: str, final: int, timeout: float = 60) -> dict[str, str]:
    """``sacct``'s state of each array task, once ``final`` of them have ended (slurmdbd
    records a job's end a moment after it)."""
    end = time.monotonic() + timeout
    while True:
        out = cluster.run("sacct", "-n", "-X", "-P", "-o", "JobID,State,Elapsed", "-j", job)
        states = {ln.split("|")[0]: ln.split("|")[1:] for ln in out.splitlines() if ln}
        done = [s for s, _ in states.values() if s not in ("PENDING", "RUNNING", "REQUEUED")]
        if len(done) >= final or time.monotonic() > end:
            return states
        time.sleep(1)


def job_log(sweep: Path, job: str, task: int) -> str:
    return "".join(p.read_text() for p in (sweep / ".submitit" / f"{job}_{task}").glob("*_log.*"))


def test_slurm_multirun_sweep_runs_each_job_as_an_array_task(slurm_cluster, tmp_path):
    out = tmp_path / "out"
    code, log = checks.sdbatch(
        "-m",
        *SMALL_NODE,
        "+recipe=quick",
        "steps=2",
        "run.progress=false",
        "cfg=5,7",
        f"output.dir={out}",
        cwd=tmp_path,
        env=env_for(slurm_cluster, tmp_path),
    )
    assert code == 0, log + slurm_cluster.logs()
    sweep = out / "multirun"
    job = array_id(sweep)
    states = sacct_states(slurm_cluster, job, final=2)
    assert {k: v[0] for k, v in states.items()} == {
        f"{job}_0": "COMPLETED",
        f"{job}_1": "COMPLETED",
    }, states
    rows = checks.raw_rows(sweep)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    for folder, cfg, number in [("cfg=5,steps=2", 5.0, 0), ("cfg=7,steps=2", 7.0, 1)]:
        mine = [r for r in rows if r["_out"].name == folder]
        assert len(mine) == 4 and {(r["cfg"], r["hydra_job"]) for r in mine} == {(cfg, number)}
        assert "done: 4 written" in job_log(sweep, job, number)
        assert all((sweep / folder / r["image"]).is_file() for r in mine)
    # the batch script asked for what the node has: 1 CPU, 1 GB, no GPU
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --mem=1GB" in script
    assert "gpus-per-task" not in script


def test_slurm_shard_array_survives_scancel_and_equals_the_unsharded_run(
    slurm_cluster, reference, tmp_path
):
    out = tmp_path / "out"
    env = env_for(slurm_cluster, tmp_path)
    # one torch thread per job, as the reference: on a CPU the thread count moves a few pixels
    threads = "hydra.launcher.setup=['export OMP_NUM_THREADS=1']"
    command = [
        checks.SDBATCH,
        "-m",
        *SMALL_NODE,
        threads,
        *checks.SHARDED,
        "shard.count=2",
        "shard.index=0,1",
        f"output.dir={out}",
    ]
    sweep = out / "multirun"
    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=sdbatch_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # shard 1's first batch is on disk: cancel its array task while it renders the rest
        end = time.monotonic() + 240
        while not list(sweep.glob("*shard.index=1*/manifest/*.parquet")):
            assert first.poll() is None and time.monotonic() < end, first.communicate()[0]
            time.sleep(0.1)
        job = array_id(sweep)
        slurm_cluster.run("scancel", f"{job}_1")
        log, _ = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    task_log, n = job_log(sweep, job, 1), checks.SHARD_JOBS
    assert "stopping after the batch in flight (SIGTERM)" in task_log, task_log
    assert "stopped (SIGTERM): " in task_log and f"of {n} done" in task_log, task_log
    assert first.returncode == 4, log  # the sweep's worst job: stopped, run it again
    states = sacct_states(slurm_cluster, job, final=2)
    assert states[f"{job}_1"][0].startswith("CANCELLED") and states[f"{job}_0"][0] == "COMPLETED"
    cancelled = [r for r in checks.raw_rows(sweep) if "shard.index=1" in r["_out"].name]
    assert 0 < len(cancelled) < n, "the cancel landed after shard 1 had finished"

    # the same command again: shard 0 skips everything, shard 1 renders only what was left
    code, log = checks.sdbatch(*command[1:], cwd=tmp_path, env=env)
    assert code == 0, log
    again = array_id_new(sweep, job)
    assert f"done: 0 written, {n} skipped" in job_log(sweep, again, 0)
    left = n - len(cancelled)
    assert f"done: {left} written, {len(cancelled)} skipped" in job_log(sweep, again, 1)
    checks.same_as_reference(sweep, reference, checks.SHARDED_JOBS)
    checks.merge_and_verify(sweep, tmp_path, checks.SHARDED_JOBS)


def array_id_new(sweep: Path, old: str) -> str:
    """The array submitted after ``old`` (the re-submit)."""
    ids = {p.name.split("_")[0] for p in (sweep / ".submitit").glob("*_*") if p.is_dir()} - {old}
    (job,) = ids
    return job


def test_slurm_deadline_inside_the_time_limit_stops_cleanly(slurm_cluster, tmp_path):
    """The docs' rule: run.deadline <= time limit - signal_delay_s - 60 s (Slurm may signal up
    to a minute early) - start-up and a batch. Here 2 minutes - 10 s - 60 s = 50 s, and the
    deadline of 20 s leaves 30 s for the start-up (the deadline counts from the run's start,
    before the model loads) and the batch in flight. sdbatch stops after that batch, before
    Slurm signals or kills the job."""
    out = tmp_path / "out"
    code, log = checks.sdbatch(
        "-m",
        *SMALL_NODE,
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=10",
        "+recipe=quick",
        "steps=4",
        "size=64x64",
        "seeds.count=200",
        "batch_size=2",
        "run.progress=false",
        "run.deadline=20s",
        f"output.dir={out}",
        cwd=tmp_path,
        env=env_for(slurm_cluster, tmp_path),
    )
    sweep = out / "multirun"
    (folder,) = [p for p in (sweep / ".submitit").iterdir() if p.is_dir()]
    job = folder.name  # one job: no array, the folder is the job id
    task_log = "".join(p.read_text() for p in folder.glob("*_log.*"))
    assert code == 4, log + task_log  # stopped: run the same command to continue
    assert "stopped (deadline " in task_log and "of 400 done" in task_log, task_log
    assert "Caught signal" not in task_log and "timed-out" not in task_log, task_log
    ((state, elapsed),) = sacct_states(slurm_cluster, job, final=1).values()
    assert state == "COMPLETED", (state, task_log)
    minutes, seconds = (int(x) for x in elapsed.split(":")[-2:])
    assert minutes * 60 + seconds < 120 - 10 - 60, elapsed  # before the earliest USR2
    rows = checks.raw_rows(sweep)
    assert 0 < len(rows) < 400 and {r["status"] for r in rows} == {"ok"}
    assert len(list(sweep.rglob("images/*.png"))) == len(rows)  # no image without its row
    assert not list(sweep.rglob(".*.tmp")), "a half-written file"
