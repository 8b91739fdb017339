"""Damaged manifest files and the debris of kills: what the tools say, what heal_output repairs.

A damaged file (truncated, garbage, a Parquet file that is not a manifest) is named in one line
by every read-only tool; the run's heal_output moves it into manifest/_quarantine/ (never
deleting it), recovers the lost rows from the images on disk, and removes orphan temp files.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdbatch import tools
from sdbatch.outputs.heal import RECOVERED, RECOVERED_INFOTEXT, dry_run_notes, heal_output
from sdbatch.outputs.infotext import format_infotext, png_info
from sdbatch.outputs.manifest import QUARANTINE, DamagedManifest, Manifest
from sdbatch.run.resume import scan_manifest
from tests.unit.test_manifest import row


def png(path: Path, infotext: str | None = None, colour=(200, 30, 30)) -> str:
    """A real tiny PNG (with A1111 infotext when given); returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, pnginfo=png_info(infotext) if infotext else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job(job_id: str, seed: int) -> SimpleNamespace:
    """The parts of sdbatch.plan.recipe.Job that heal_output uses."""
    return SimpleNamespace(job_id=job_id, seed=seed, image_name=f"{seed}-{job_id}.png")


def make_row(j, image_rel: str, image_sha256: str) -> dict:
    """What the runner passes: a complete ok row, timings null."""
    return row(j.job_id, seed=j.seed, image=image_rel, image_sha256=image_sha256,
               started=None, finished=None, duration_s=None)  # fmt: skip


def output(out: Path) -> tuple[Manifest, list, Path]:
    """A run of 4 jobs in two parts (a1, a2 | b1, b2), every image on disk; returns the
    manifest, the plan and the second part (the one the tests damage)."""
    jobs = [job("a1", 1), job("a2", 2), job("b1", 3), job("b2", 4)]
    rows = []
    for j in jobs:
        sha = png(out / "images" / j.image_name, colour=(j.seed * 40, 0, 0))
        rows.append(make_row(j, f"images/{j.image_name}", sha) | {"started": None})
    m = Manifest(out / "manifest")
    m.append(rows[:2])
    second = m.append(rows[2:])
    return m, jobs, second


def truncate(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


def tool(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        tools.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def plain_readers(folder: Path) -> dict[str, int]:
    """Rows each plain Parquet reader sees; duckdb's read_parquet('DIR/*.parquet') where it is
    installed, else the one-level glob it expands to."""
    files = glob.glob(str(folder / "*.parquet"))
    seen = {
        "read_table": pq.read_table(folder).num_rows,
        "dataset": ds.dataset(folder, format="parquet").count_rows(),
        "pandas": len(pd.read_parquet(folder)),
        "glob": sum(pq.read_metadata(f).num_rows for f in files),
    }
    try:
        import duckdb
    except ImportError:
        return seen
    sql = f"select count(*) from read_parquet('{folder}/*.parquet')"
    return seen | {"duckdb": duckdb.sql(sql).fetchall()[0][0]}


# --- the read-only tools ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a manifest"])
def test_tools_name_the_damaged_file_in_one_line(tmp_path, capsys, damage):
    out = tmp_path / "out"
    m, _, second = output(out)
    if damage == "truncated":
        truncate(second)
    elif damage == "garbage":
        second = m.dir / "part-garbage.parquet"
        second.write_bytes(b"this is not parquet at all")
    else:
        second = m.dir / "part-00000000000000000009-1.parquet"
        pq.write_table(pa.table({"colour": ["red"]}), second)
    with pytest.raises(DamagedManifest) as exc:
        m.read()
    assert exc.value.path == second
    for argv in (["manifest", "summary", out], ["export", out, "-o", tmp_path / "ds"],
                 ["gallery", out]):  # fmt: skip
        code, stdout, err = tool(capsys, *argv)
        assert code == 2, argv
        (line,) = err.splitlines()
        assert line.startswith(f"error: manifest file {second} is damaged (")
        assert "Traceback" not in err and "moves it aside" in line
    code, stdout, err = tool(capsys, "manifest", "verify", out)
    assert (code, err) == (1, "")
    lines = stdout.splitlines()
    assert lines[0].startswith(f"damaged: {second} (") and "its rows are not checked" in lines[0]
    checked = 2 if damage == "truncated" else 4  # the readable rows are still verified
    assert lines[-1] == f"{checked} images checked: {checked - 1} intact, 1 problem"


def test_reason_says_what_is_wrong(tmp_path):
    m, _, second = output(tmp_path / "out")
    truncate(second)
    m.read(skip_damaged=True)
    (d,) = m.damaged
    assert "magic bytes not found" in d.reason and "\n" not in str(d)
    empty, nomanifest = (m.dir / f"part-0000000000000000000{i}-1.parquet" for i in (1, 2))
    empty.write_bytes(b"")
    pq.write_table(pa.table({"colour": ["red"]}), nomanifest)
    reasons = {d.path: d.reason for d in m.check().damaged}
    assert reasons[empty] == "Parquet file size is 0 bytes"
    assert reasons[nomanifest] == "not a manifest file: no job_id column"
    assert len(reasons) == 3


# --- the dry run: reads around the damage, writes nothing ------------------------------------


def test_dry_run_reads_around_a_damaged_file_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    m, jobs, second = output(out)
    truncate(second)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    done, failed, seen = scan_manifest(jobs, out, m, verify="hash", skip_damaged=True)
    assert (done, failed, seen) == ({"a1", "a2"}, set(), {"a1", "a2"})
    assert [d.path for d in m.damaged] == [second]
    (note,) = dry_run_notes(m)
    assert note.startswith(f"manifest file {second} is damaged (")
    assert note.endswith("a real run moves it aside into " + str(m.dir / QUARANTINE) +
                         " and recovers its rows from the images")  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(DamagedManifest):
        scan_manifest(jobs, out, m, verify="size")  # without the option: the one-line error


# --- heal_output: quarantine, recover, clean ---------------------------------------------------


def test_heal_moves_the_damaged_file_aside_and_recovers_its_rows_from_the_images(tmp_path):
    out = tmp_path / "out"
    m, jobs, second = output(out)
    damaged_bytes = truncate(second)
    # an image of another recipe's job whose row was in the damaged file: has infotext
    text = format_infotext("a blue square", "blurry", {"Steps": 20, "Sampler": "Euler a",
                           "CFG scale": 7, "Seed": 9, "Size": "8x8", "Model": "tiny"})  # fmt: skip
    other_sha = png(out / "images" / "9-c1.png", text)
    png(out / "images" / "10-c2.png")  # another one, without infotext: left, reported
    messages = heal_output(out, m, jobs, make_row)
    dest = m.dir / QUARANTINE / f"{second.name}.damaged"
    assert messages[0].startswith(f"manifest file {second} is damaged (")
    assert messages[0].endswith(f"moved it to {dest}, its rows are taken back from the images")
    assert dest.read_bytes() == damaged_bytes and not second.exists()  # moved, never deleted
    assert messages[1:] == [
        f"manifest: recovered 2 rows of this plan's jobs from their images on disk (note: "
        f"{RECOVERED!r})",
        "manifest: recovered 1 row of images that are not jobs of this plan from their PNG "
        "infotext (recipe, template, scheduler unknown)",
        "manifest: 1 image on disk has no row and could not be recovered; left as it is "
        "(e.g. images/10-c2.png: no usable infotext)",
    ]
    rows = {r["job_id"]: r for r in m.read().to_pylist()}
    assert sorted(rows) == ["a1", "a2", "b1", "b2", "c1"]
    b1 = rows["b1"]
    assert (b1["status"], b1["note"]) == ("ok", RECOVERED)
    assert (b1["started"], b1["duration_s"]) == (None, None)
    c1 = rows["c1"]
    assert (c1["prompt"], c1["negative_prompt"], c1["sampler"], c1["steps"], c1["cfg"]) == (
        "a blue square", "blurry", "Euler a", 20, 7.0)  # fmt: skip
    assert (c1["seed"], c1["width"], c1["image_sha256"]) == (9, 8, other_sha)
    assert c1["note"] == RECOVERED_INFOTEXT
    # the recovered rows make the jobs done; plain readers never see the quarantined file
    done, _, _ = scan_manifest(jobs, out, m, verify="hash")
    assert done == {"a1", "a2", "b1", "b2"}
    assert set(plain_readers(m.dir).values()) == {5}
    assert heal_output(out, m, jobs, make_row) == []  # healthy now: nothing to do


def test_heal_quarantines_garbage_and_keeps_both_copies_of_a_name(tmp_path):
    out = tmp_path / "out"
    m, jobs, _ = output(out)
    for _ in range(2):
        (m.dir / "part-x.parquet").write_bytes(b"garbage")
        messages = heal_output(out, m, jobs, make_row)
        assert "part-x.parquet is damaged (" in messages[0]
    assert sorted(p.name for p in (m.dir / QUARANTINE).iterdir()) == [
        "part-x.parquet.1.damaged",
        "part-x.parquet.damaged",
    ]
    assert len(m.read()) == 4


def test_heal_removes_only_the_temp_files_kills_leave(tmp_path):
    out = tmp_path / "out"
    m, jobs, _ = output(out)
    orphans = [out / "images" / ".3-b1.png.0123abcd.tmp", m.dir / ".part-1-2.parquet.deadbeef.tmp",
               m.dir / "._compaction.json.00ff00ff.tmp"]  # fmt: skip
    kept = [
        out / "images" / ".notes.tmp",  # not atomic_file's pattern
        out / "images" / ".3-b1.png.NOTHEX00.tmp",
        out / "images" / ".3-b1.jpg.0123abcd.tmp",  # not a PNG's temp file
        out / "images" / "sub" / ".3-b1.png.0123abcd.tmp",  # below images/, not in it
        out / ".index.html.0123abcd.tmp",  # outside images/ and manifest/
    ]
    for p in orphans + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    messages = heal_output(out, m, jobs, make_row)
    assert messages == [
        "removed 3 temporary files a killed run left (images/.3-b1.png.0123abcd.tmp, "
        "manifest/._compaction.json.00ff00ff.tmp, manifest/.part-1-2.parquet.deadbeef.tmp)"
    ]
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)


def test_heal_undoes_a_journal_whose_segment_is_damaged(tmp_path):
    out = tmp_path / "out"
    m, jobs, second = output(out)
    seg = m.dir / "seg-99999999999999999999-1-abcdef12.parquet"
    seg.write_bytes(b"not written to the end")
    (m.dir / "_compaction.json").write_text(
        f'{{"segment": "{seg.name}", "replaces": ["{second.name}"]}}'
    )
    with pytest.raises(DamagedManifest, match=seg.name):  # told, not silently wrong
        m.read()
    messages = heal_output(out, m, jobs, make_row)
    assert messages[0].startswith("manifest: undid a compaction interrupted before its segment")
    assert second.exists()  # kept: the segment never held its rows
    assert (m.dir / QUARANTINE / f"{seg.name}.damaged").exists()
    assert sorted(m.read()["job_id"].to_pylist()) == ["a1", "a2", "b1", "b2"]


def test_repair_command_does_the_same_without_a_recipe(tmp_path, capsys):
    out = tmp_path / "out"
    m, _, second = output(out)
    truncate(second)
    code, stdout, err = tool(capsys, "manifest", "repair", out)
    assert (code, err) == (0, "")
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{out}: manifest file {second} is damaged (")
    assert "recovered 2 rows of images that are not jobs of this plan" not in stdout
    assert lines[1] == (
        f"{out}: manifest: 2 images on disk have no row and could not be recovered; left as "
        "they are (e.g. images/3-b1.png: no usable infotext)"
    )
    code, stdout, _ = tool(capsys, "manifest", "summary", out)
    assert code == 0 and "2 jobs; ok 2" in stdout
    assert tool(capsys, "manifest", "repair", out)[1] == f"{out}: nothing to repair\n"


def test_a_read_racing_a_compaction_lists_the_files_again(tmp_path, monkeypatch):
    m, _, _ = output(tmp_path / "out")
    real, calls = pq.read_table, []

    def vanish_once(path, *a, **k):
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(pq, "read_table", vanish_once)
    assert len(m.read()) == 4 and len(calls) == 3
    assert os.path.exists(calls[0])


def test_repair_waits_for_no_run(tmp_path, capsys):
    from sdbatch.outputs.lock import OutputLock

    out = tmp_path / "out"
    output(out)
    with OutputLock(out):  # a live run
        code, _, err = tool(capsys, "manifest", "repair", out)
    assert code == 5 and "is in use by another sdbatch run" in err and len(err.splitlines()) == 1
