"""A run heals its output folder before it looks at what is done: damaged manifest files are
moved aside and their rows come back from the images; a missing image is rendered again."""

from __future__ import annotations

import pyarrow.parquet as pq

from sdbatch.run.runner import execute
from tests.conftest import quick_cfg


def test_a_damaged_manifest_file_is_moved_aside_and_its_rows_recovered(tmp_path, capsys):
    out = tmp_path / "out"
    assert execute(quick_cfg(), out).written == 4
    before = {r["job_id"]: r for r in pq.read_table(out / "manifest").to_pylist()}
    (seg,) = list((out / "manifest").glob("*.parquet"))
    seg.write_bytes(seg.read_bytes()[:200])  # truncated, as by a full disk or a bad copy
    (out / "manifest" / "part-00000000000000000001-1.parquet").write_bytes(b"garbage")
    victim = sorted((out / "images").glob("*.png"))[0]
    victim.unlink()  # this one's image is gone too: it must be rendered again
    (out / "images" / ".2-x.png.0123abcd.tmp").write_bytes(b"half")  # a kill's leftover
    capsys.readouterr()
    again = execute(quick_cfg(), out)
    text = capsys.readouterr().out
    assert (again.written, again.skipped) == (1, 3)
    assert text.count("is damaged") == 2 and "moved it to" in text
    assert "recovered 3 rows" in text and "removed 1 temporary file" in text
    quarantined = sorted(p.name for p in (out / "manifest" / "_quarantine").iterdir())
    assert len(quarantined) == 2  # kept, never deleted
    rows = pq.read_table(out / "manifest").to_pylist()  # a plain reader
    assert sorted(r["job_id"] for r in rows) == sorted(before)
    for r in rows:
        old = before[r["job_id"]]
        assert (r["image"], r["image_sha256"], r["infotext"]) == (
            old["image"], old["image_sha256"], old["infotext"],
        )  # fmt: skip
    recovered = [r for r in rows if r["note"] and "recovered" in r["note"]]
    assert len(recovered) == 3 and all(r["started"] is None for r in recovered)
    assert not list((out / "images").glob(".*.tmp"))
