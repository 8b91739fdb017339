"""A compaction killed at every step, and unlinks that fail: no row is lost, and once an sdbatch
command has run on the folder a plain Parquet reader sees one row per job.

The kill is real: a forked child runs the compaction with os.replace / os.unlink / os.fsync
wrapped so that the k-th call ends the process with os._exit(9) first, so no ``except`` or
``finally`` cleans anything up. Test-only; the production code has no hook for it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sdbatch import tools
from sdbatch.outputs.heal import heal_output
from sdbatch.outputs.manifest import JOURNAL, Manifest
from tests.unit.test_manifest import row

JOBS = [f"j{i}" for i in range(8)]
OPS = ("replace", "unlink", "fsync")  # every step of a compaction that changes the disk


def build(out: Path, scenario: str) -> Manifest:
    """8 jobs; j0 and j1 failed first and were retried (ok) in newer files."""
    m = Manifest(out / "manifest")
    if scenario == "parts":  # a run killed before its end-of-run compaction
        m.append([row("j0", "failed"), row("j1", "failed"), row("j2")])
        m.append([row("j3"), row("j4")])
        m.append([row("j0"), row("j5"), row("j6")])
        m.append([row("j1"), row("j7")])
    else:  # "retry": a compacted run, then run.retry_failed's new parts
        m.append([row(j, "failed" if j in ("j0", "j1") else "ok") for j in JOBS])
        m.compact(full=True)
        m.append([row("j0")])
        m.append([row("j1")])
    return m


def plain_rows(out: Path) -> list[tuple[str, str]]:
    """What pyarrow.parquet.read_table(DIR) sees, as (job_id, status) pairs."""
    t = pq.read_table(out / "manifest")
    return sorted(zip(t["job_id"].to_pylist(), t["status"].to_pylist(), strict=True))


EXPECTED = [(j, "ok") for j in JOBS]


def count_ops(out: Path, scenario: str, full: bool) -> tuple[int, int]:
    """How many disk-changing calls a clean compaction makes, and which one renames the new
    segment into place (in a child, so this process stays unpatched)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            calls = [0, 0]
            for name in OPS:
                real = getattr(os, name)

                def counted(*a, _real=real, _name=name, **k):
                    calls[0] += 1
                    if _name == "replace" and Path(a[1]).name.startswith("seg-"):
                        calls[1] = calls[0]
                    return _real(*a, **k)

                setattr(os, name, counted)
            Manifest(out / "manifest").compact(full=full)
            os.write(w, f"{calls[0]} {calls[1]}".encode())
        finally:
            os._exit(0)
    os.close(w)
    n, seg_step = map(int, os.read(r, 100).split())
    os.close(r)
    os.waitpid(pid, 0)
    return n, seg_step


def killed_compaction(out: Path, full: bool, kill_at: int) -> int:
    """Compact in a child that dies (os._exit(9)) instead of making its kill_at-th call."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            calls = [0]
            for name in OPS:
                real = getattr(os, name)

                def deadly(*a, _real=real, **k):
                    calls[0] += 1
                    if calls[0] == kill_at:
                        os._exit(9)
                    return _real(*a, **k)

                setattr(os, name, deadly)
            Manifest(out / "manifest").compact(full=full)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize(("scenario", "full"), [("parts", False), ("retry", True)])
def test_kill_at_every_compaction_step_loses_no_row(tmp_path, scenario, full, capsys):
    probe = tmp_path / "probe"
    build(probe, scenario)
    steps, seg_step = count_ops(probe, scenario, full)
    assert steps >= 10 and seg_step  # journal, segment (fsync, rename, dir fsync), unlinks...
    assert plain_rows(probe) == EXPECTED  # the clean compaction gives one row per job
    for k in range(1, steps + 2):
        for fixer in ("run", "tool"):
            out = tmp_path / f"k{k}-{fixer}"
            build(out, scenario)
            code = killed_compaction(out, full, k)
            assert code == (9 if k <= steps else 0), k
            # sdbatch's own reader is right at once: newest row per job, nothing lost
            t = Manifest(out / "manifest").read(["status"])
            assert sorted(t.to_pylist(), key=str) == [{"status": "ok"}] * 8, k
            pq.read_table(out / "manifest")  # a plain reader never trips over a partial file
            if fixer == "run":
                messages = heal_output(out, Manifest(out / "manifest"), [], None)
                if k > seg_step:  # the segment was durable: the journal completes the
                    # compaction (unlinks), no full rewrite of the manifest is needed
                    assert not any("full compaction" in line for line in messages), messages
            else:  # any read-only tool tidies up once no run holds the folder
                with pytest.raises(SystemExit) as exit_:
                    tools.main(["manifest", "summary", str(out)])
                assert exit_.value.code == 0
                assert "8 jobs; ok 8" in capsys.readouterr().out
            assert plain_rows(out) == EXPECTED, (k, fixer)
            assert ds.dataset(out / "manifest", format="parquet").count_rows() == 8
            assert not (out / "manifest" / JOURNAL).exists()
            leftovers = [p.name for p in (out / "manifest").iterdir() if p.name.startswith(".")]
            assert leftovers == [] or fixer == "tool", (k, leftovers)  # the run removes temps


def test_a_failing_unlink_keeps_the_journal_and_the_next_command_finishes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    m = build(out, "parts")
    real = os.unlink

    def refuse(path, *a, **k):
        if Path(path).name.startswith("part-"):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "unlink", refuse)
    m.compact()  # the segment is durable; removing what it replaced failed: no exception
    assert (out / "manifest" / JOURNAL).exists()
    assert len(Manifest(out / "manifest").read()) == 8  # sdbatch skips the replaced parts
    assert len(plain_rows(out)) > 8  # (a plain reader cannot, until they are gone)
    messages = heal_output(out, Manifest(out / "manifest"), [], None)  # still failing
    assert any("could not remove 4 files" in line for line in messages)
    monkeypatch.setattr(os, "unlink", real)
    messages = heal_output(out, Manifest(out / "manifest"), [], None)
    assert any("finished a compaction a kill interrupted: removed 4 files" in m for m in messages)
    assert plain_rows(out) == EXPECTED
    assert not (out / "manifest" / JOURNAL).exists()


def test_retried_jobs_left_in_parts_are_compacted_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    build(out, "retry")  # killed before the run's final full compaction
    assert len(plain_rows(out)) == 10
    messages = heal_output(out, Manifest(out / "manifest"), [], None)
    assert messages == [
        "manifest: 2 superseded rows removed by a full compaction "
        "(Parquet readers see one row per job again)"
    ]
    assert plain_rows(out) == EXPECTED
    assert heal_output(out, Manifest(out / "manifest"), [], None) == []  # nothing left to do


def test_a_journal_naming_files_outside_the_folder_is_never_followed(tmp_path):
    out = tmp_path / "out"
    build(out, "parts")
    victim = tmp_path / "victim.parquet"
    victim.write_bytes(b"keep me")
    (out / "manifest" / JOURNAL).write_text(
        '{"segment": "part-00000000000000000001-1.parquet", "replaces": ["../../victim.parquet"]}'
    )
    heal_output(out, Manifest(out / "manifest"), [], None)
    assert victim.read_bytes() == b"keep me"
    assert not (out / "manifest" / JOURNAL).exists()
    assert plain_rows(out) == EXPECTED
