"""Overnight behaviour with real processes: lock, deadline, signals, faults, sharding."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import BIN, ROOT, sdbatch_env

SDBATCH = str(BIN / "sdbatch")
QUICK = ["+recipe=quick", "steps=2", "run.device=cpu", "run.progress=false"]


def sdbatch(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([SDBATCH, *args], cwd=ROOT, env=sdbatch_env(**env),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest").to_pylist()


def shas(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("images/*.png")}


HOLD = (
    "import sys, time; from sdbatch.outputs.lock import OutputLock;"
    " OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
)


def test_a_live_run_holding_the_folder_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        res = sdbatch(*QUICK, f"output.dir={out}")
        assert res.returncode == 5, res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert "is in use by another sdbatch run" in line
        assert f"pid {holder.pid}" in line and socket.gethostname() in line
        assert not (out / "images").exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a dead process
        holder.wait()
    assert (out / ".sdbatch.lock").exists()
    res = sdbatch(*QUICK, f"output.dir={out}")
    assert res.returncode == 0, res.stderr
    assert len(rows(out)) == 4


def test_sigterm_stops_after_the_batch_in_flight_and_the_rerun_completes(tmp_path):
    out = tmp_path / "out"
    args = ["+recipe=hair_styles", "steps=3", "sampler=Euler a", "grids=[]", "run.device=cpu",
            "run.progress=false", f"output.dir={out}"]  # fmt: skip
    proc = subprocess.Popen([SDBATCH, *args], cwd=ROOT, env=sdbatch_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("images/*.png"))) < 8:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4, stderr
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("stopped (SIGTERM): ") and last.endswith(
        "of 60 done; run the same command to continue"
    )
    n_done = int(last.split(": ")[1].split(" of ")[0])
    table = rows(out)
    assert len(table) == n_done == len(list(out.glob("images/*.png"))) < 60
    assert not list(out.glob("images/.*.tmp"))
    res = sdbatch(*args)
    assert res.returncode == 0 and f"{n_done} done" in res.stdout
    assert len(rows(out)) == 60


def test_second_ctrl_c_aborts(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [SDBATCH, "+recipe=hair_styles", "steps=20", "run.progress=false", f"output.dir={out}"],
        cwd=ROOT, env=sdbatch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("images/*.png")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    # the first Ctrl-C is acknowledged before the second is sent (two signals that arrive
    # during one long torch call would reach Python as one)
    first = proc.stderr.readline()
    while first.strip() == "":
        first = proc.stderr.readline()
    assert first.strip() == "stopping after the batch in flight (Ctrl-C); Ctrl-C again aborts"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "aborted: finished batches are saved" in stderr and "Traceback" not in stderr
    table = rows(out)
    assert 0 < len(table) == len(list(out.glob("images/*.png"))) < 60


def test_deadline_stops_cleanly_and_says_how_to_continue(tmp_path):
    out = tmp_path / "out"
    res = sdbatch(*QUICK, f"output.dir={out}", "run.deadline=0s")
    assert res.returncode == 4
    assert (
        res.stdout.strip()
        .splitlines()[-1]
        .endswith("0 of 4 done; run the same command to continue")
    )
    bad = sdbatch(*QUICK, f"output.dir={tmp_path / 'bad'}", "run.deadline=tomorrow")
    assert bad.returncode == 2 and "run.deadline: 'tomorrow'" in bad.stderr
    assert not (tmp_path / "bad").exists()


def faulty(monkeypatch, oom: bool = False, fail: set = frozenset(), nan: set = frozenset()):
    """The real renderer, wrapped by the test (not a hook in the runner): ``oom`` makes every
    batch of more than one image raise torch's out-of-memory error, ``fail`` the batches
    holding those job indices raise, ``nan`` those jobs' images come out NaN."""
    from sdbatch.run import runner

    real = runner.load_renderer

    def load(model, device, dtype):
        renderer = real(model, device, dtype)
        render = renderer.render

        def faulty_render(jobs):
            import torch

            if fail & {j.index for j in jobs}:
                raise RuntimeError("injected fault")
            if oom and len(jobs) > 1:
                raise torch.OutOfMemoryError(f"injected CUDA out of memory ({len(jobs)} images)")
            out = render(jobs)
            return [(px, bad or j.index in nan) for j, (px, bad) in zip(jobs, out, strict=True)]

        renderer.render = faulty_render
        return renderer

    monkeypatch.setattr(runner, "load_renderer", load)


def quick(**overrides) -> dict:
    from tests.conftest import quick_cfg

    return quick_cfg(steps=2, **overrides)


def test_out_of_memory_retries_in_halves_and_records_it(tmp_path, monkeypatch):
    from sdbatch.run.runner import execute

    ref, out = tmp_path / "ref", tmp_path / "oom"
    assert execute(quick(batch_size=1), ref).written == 4
    faulty(monkeypatch, oom=True)
    assert execute(quick(), out).exit_code == 0
    table = rows(out)
    assert {r["status"] for r in table} == {"ok"} and len(table) == 4
    # the injected OOM hits every batch of more than one image: 4 -> 2 -> 1
    assert {r["note"] for r in table} == {"out of memory at batch size 4; rendered 1 at a time"}
    assert shas(out) == shas(ref)  # rendered one at a time: the batch_size=1 pixels


def test_nan_and_errors_are_recorded_per_job_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    from sdbatch.run.runner import execute

    out = tmp_path / "out"
    faulty(monkeypatch, fail={2}, nan={1})
    summary = execute(quick(batch_size=2), out)
    assert summary.exit_code == 3
    status = sorted((r["status"], r["error"] or "") for r in rows(out))
    assert status == [
        ("failed", "RuntimeError: injected fault"),
        ("failed", "RuntimeError: injected fault"),
        ("nan", "NaN in the image"),
        ("ok", ""),
    ]
    assert "done: 1 written, 0 skipped, 3 failed" in capsys.readouterr().out
    monkeypatch.undo()
    assert execute(quick(batch_size=2), out).exit_code == 3
    assert "3 jobs failed before" in capsys.readouterr().out
    run = {"device": "cpu", "progress": False, "retry_failed": True}
    assert execute(quick(batch_size=2, run=run), out).exit_code == 0
    assert "done: 3 written, 1 skipped, 0 failed" in capsys.readouterr().out
    assert {r["status"] for r in rows(out)} == {"ok"} and len(rows(out)) == 4


def test_disk_full_is_one_clear_line_and_the_manifest_stays_readable(tmp_path, monkeypatch, capsys):
    import errno

    from sdbatch.run import runner
    from tests.conftest import run_cli

    out, real, calls = tmp_path / "out", runner.write_bytes_atomic, []

    def write(path, data, sync_dir=True):  # the disk fills up during batch 1's images
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data, sync_dir=sync_dir)

    monkeypatch.setattr(runner, "write_bytes_atomic", write)
    code, _, err = run_cli(monkeypatch, capsys, *QUICK, f"output.dir={out}", "batch_size=2")
    assert code == 6
    (line,) = err.strip().splitlines()
    assert "No space left on device" in line and "2 of 4 done" in line
    assert len(rows(out)) == 2 and not list(out.glob("images/.*"))


def test_an_output_folder_that_cannot_exist_is_one_clear_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    res = sdbatch(*QUICK, f"output.dir={tmp_path / 'file' / 'out'}")
    assert res.returncode == 6
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error: output.dir: cannot write")


def test_shards_are_disjoint_whole_batches_whose_union_is_the_unsharded_run(tmp_path):
    common = [*QUICK, "seeds={start: 1, count: 3}", "batch_size=2"]  # 6 jobs, 3 batches
    full = tmp_path / "full"
    assert sdbatch(*common, f"output.dir={full}").returncode == 0
    parts = []
    for i in range(2):
        out = tmp_path / f"shard{i}"
        res = sdbatch(*common, f"output.dir={out}", f"shard.index={i}", "shard.count=2")
        assert res.returncode == 0, res.stderr
        assert f"shard {i} of 2" in res.stdout
        parts.append(out)
    ids = [{r["job_id"] for r in rows(p)} for p in parts]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == {r["job_id"] for r in rows(full)}
    assert {**shas(parts[0]), **shas(parts[1])} == shas(full)
    bad = sdbatch(*common, f"output.dir={tmp_path / 'x'}", "shard.index=2", "shard.count=2")
    assert bad.returncode == 2 and "shard.index: 2" in bad.stderr


@pytest.mark.skipif(os.name != "posix", reason="signals and flock are POSIX")
def test_lock_is_released_after_a_normal_run(tmp_path):
    out = tmp_path / "out"
    assert sdbatch(*QUICK, f"output.dir={out}").returncode == 0
    assert (out / ".sdbatch.lock").read_text() == ""


def test_a_multirun_exits_with_the_worst_code_of_its_jobs(tmp_path, monkeypatch, capsys):
    from tests.conftest import run_cli

    out = tmp_path / "sweep"
    faulty(monkeypatch, fail={0})  # the first batch of every job fails
    code, _, err = run_cli(monkeypatch, capsys, "-m", *QUICK, "cfg=5,7", f"output.dir={out}")
    assert code == 3, err
    monkeypatch.undo()
    ok = sdbatch("-m", *QUICK, "cfg=5,7", f"output.dir={tmp_path / 'ok'}")
    assert ok.returncode == 0, ok.stderr
