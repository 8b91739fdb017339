"""The runner with a fake renderer (no torch, milliseconds): what it writes, skips, records and
how it stops. Faults are the fake renderer's or a patched write, never a hook in the runner."""

from __future__ import annotations

import errno
import os
import signal
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from sdbatch.run import runner
from tests.conftest import quick_cfg


class FakeRenderer:
    """Pixels made from the seed (so a job's image does not depend on its batch), with faults:
    ``fail`` (job indices whose batch raises), ``oom`` (batches of more than one image raise
    out of memory), ``nan`` (job indices whose image comes out NaN)."""

    def __init__(self, model, fail=(), oom=False, nan=(), log=None):
        self.model, self.fail, self.oom, self.nan = model, set(fail), oom, set(nan)
        self.log = log if log is not None else []

    def describe(self) -> str:
        return f"{self.model.name} (fake)"

    def environment(self) -> dict:
        return {"device": "fake", "sdbatch_version": "t", "torch_version": None,
                "diffusers_version": None}  # fmt: skip

    def render(self, jobs):
        self.log.append([j.index for j in jobs])
        if self.fail & {j.index for j in jobs}:
            raise RuntimeError("the fake renderer failed")
        if self.oom and len(jobs) > 1:
            raise MemoryError("CUDA out of memory (fake)")
        out = []
        for j in jobs:
            pixels = np.full((j.height, j.width, 3), j.seed % 251, np.uint8)
            out.append((pixels, j.index in self.nan))
        return out


def loader(loads: list | None = None, **faults):
    def load(model, device, dtype):
        if loads is not None:
            loads.append(model.name)
        return FakeRenderer(model, **faults)

    return load


def rows(out) -> list[dict]:
    return pq.read_table(out / "manifest").to_pylist()


CFG = quick_cfg(batch_size=2)  # 4 jobs, 2 batches: jobs 0-1 and 2-3


def test_writes_one_png_and_row_per_job_and_a_rerun_skips_them(tmp_path):
    out = tmp_path / "out"
    loads: list = []
    summary = runner.execute(CFG, out, load=loader(loads))
    assert (summary.written, summary.skipped, summary.exit_code) == (4, 0, 0)
    table = rows(out)
    assert sorted(r["status"] for r in table) == ["ok"] * 4 and loads == ["sdbatch-shapes"]
    for r in table:
        png = out / r["image"]
        assert parse_infotext(read_png_infotext(png)).params["Seed"] == str(r["seed"])
        assert r["device"] == "fake" and r["dtype"] == "fp32" and r["batch"] in (0, 1)
    again = runner.execute(CFG, out, load=loader(loads))
    assert (again.written, again.skipped) == (0, 4) and loads == ["sdbatch-shapes"]  # no load


def test_a_failing_batch_is_recorded_per_job_and_the_run_goes_on(tmp_path, capsys):
    out = tmp_path / "out"
    summary = runner.execute(CFG, out, load=loader(fail={2}, nan={1}))
    assert summary.exit_code == 3 and (summary.written, summary.failed) == (1, 3)
    status = sorted((r["status"], r["error"] or "") for r in rows(out))
    assert status == [("failed", "RuntimeError: the fake renderer failed")] * 2 + [
        ("nan", "NaN in the image"), ("ok", "")]  # fmt: skip
    assert "Traceback" in capsys.readouterr().err  # the batch's error is shown, the run goes on
    again = runner.execute(CFG, out, load=loader())
    assert again.exit_code == 3 and again.failed == 3  # not retried unless asked
    retry = runner.execute({**CFG, "run": {**CFG["run"], "retry_failed": True}}, out,
                           load=loader())  # fmt: skip
    assert (retry.exit_code, retry.written) == (0, 3)
    assert len(rows(out)) == 4  # plain readers: one row per job after the retry


def test_out_of_memory_is_retried_in_halves_and_noted(tmp_path):
    out = tmp_path / "out"
    log: list = []

    def load(model, device, dtype):
        return FakeRenderer(model, oom=True, log=log)

    summary = runner.execute(quick_cfg(batch_size=4), out, load=load)
    assert summary.written == 4
    assert {r["note"] for r in rows(out)} == {"out of memory at batch size 4; rendered 1 at a time"}
    assert [len(x) for x in log] == [4, 2, 1, 1, 2, 1, 1]


def test_a_full_disk_stops_with_one_line_and_keeps_finished_batches(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = runner.write_bytes_atomic, []

    def write(path, data, sync_dir=True):
        calls.append(path)
        if len(calls) > 2:  # batch 1's images
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data, sync_dir=sync_dir)

    monkeypatch.setattr(runner, "write_bytes_atomic", write)
    with pytest.raises(runner.OutputError) as err:
        runner.execute(CFG, out, load=loader())
    assert err.value.exit_code == 6
    assert "No space left on device" in str(err.value) and "2 of 4 done" in str(err.value)
    assert len(rows(out)) == 2 and not list(out.glob("images/.*"))


def test_a_sigterm_stops_after_the_batch_in_flight(tmp_path):
    out = tmp_path / "out"

    def load(model, device, dtype):
        fake = FakeRenderer(model)
        render = fake.render

        def render_then_signal(jobs):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while batch 0 renders
            return render(jobs)

        fake.render = render_then_signal
        return fake

    summary = runner.execute(CFG, out, load=load)
    assert summary.exit_code == 4 and summary.stopped == "SIGTERM" and summary.written == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or sys.platform == "win32"
    assert runner.execute(CFG, out, load=loader()).written == 2  # the rest, on the next run
