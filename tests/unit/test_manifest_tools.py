"""`sdbatch-tools manifest`: summary, merge, verify over one manifest or a whole sweep.

Synthetic manifests written with Manifest.append and stub image files; no torch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.commands.manifest import format_summary
from sdbatch.errors import UserError
from sdbatch.outputs.export import _rows_first_typed, export_imagefolder
from sdbatch.outputs.manifest import SCHEMA, Manifest
from sdbatch.outputs.manifest_tools import (
    DataError,
    all_sources,
    find_sources,
    merge,
    summarize,
    verify,
)
from tests.conftest import BIN, sdbatch_env

T0 = datetime(2026, 11, 25, 1, 0, tzinfo=timezone.utc)


def row(job_id: str, status: str = "ok", style: str = "bob", i: int = 0, **kw) -> dict:
    r = {f.name: None for f in SCHEMA}
    r.update(
        job_id=job_id, recipe="r", prompt=f"black hair, {style}", negative_prompt="",
        template="black hair, {style}", vars=[("style", style)], sampler="Euler a", steps=20,
        cfg=7.0, seed=i, width=64, height=64, status=status, batch=i,
        started=T0 + timedelta(seconds=i), finished=T0 + timedelta(seconds=i + 1), duration_s=1.0,
    )  # fmt: skip
    r.update(kw)
    return r


def output(folder: Path, specs: list[tuple[str, str, str]], cfg: float = 7.0) -> Path:
    """An output folder: (job_id, status, style) rows; ok rows get a real stub image."""
    rows = []
    for i, (job, status, style) in enumerate(specs):
        extra = {}
        if status == "ok":
            data = f"png {job}".encode()
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / "images" / f"{i}-{job}.png").write_bytes(data)
            extra = {"image": f"images/{i}-{job}.png", "image_sha256": sha(data)}
        rows.append(row(job, status, style, i, cfg=cfg, **extra))
    Manifest(folder / "manifest").append(rows)
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tools(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sdbatch-tools"), *map(str, args)],
        capture_output=True, text=True, env=sdbatch_env(), cwd=cwd, timeout=60,
    )  # fmt: skip


@pytest.fixture
def run_dir(tmp_path) -> Path:
    specs = [("a1", "ok", "bob"), ("a2", "ok", "bob"), ("a3", "ok", "braids"),
             ("a4", "failed", "braids")]  # fmt: skip
    return output(tmp_path / "run", specs)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """outputs/<name>/multirun/cfg=5 and cfg=9, as Hydra's multirun lays them out."""
    root = tmp_path / "outputs" / "hair"
    output(root / "multirun" / "cfg=5", [("b1", "ok", "bob"), ("b2", "nan", "bob")], cfg=5.0)
    output(root / "multirun" / "cfg=9", [("c1", "ok", "bob"), ("c2", "ok", "braids")], cfg=9.0)
    return tmp_path / "outputs"


def test_summary_counts_status_images_span_and_rate(run_dir):
    s = summarize(find_sources(run_dir))
    assert (s.jobs, s.status, s.images) == (4, {"ok": 3, "failed": 1}, 3)
    assert (s.started, s.finished) == (T0, T0 + timedelta(seconds=4))
    assert s.to_json()["images_per_s"] == pytest.approx(3 / 4)
    text = format_summary(s)
    assert text.splitlines()[0].endswith("4 jobs; ok 3, failed 1")
    assert "span: 2026-11-25 01:00:00 UTC to 2026-11-25 01:00:04 UTC (4.0s)" in text


def test_summary_newest_row_per_job_wins(run_dir):
    Manifest(run_dir / "manifest").append([row("a4", "ok", "braids", 9)])  # a retried failure
    assert summarize(find_sources(run_dir)).status == {"ok": 4}


def test_summary_by_template_variable_and_column(run_dir):
    s = summarize(find_sources(run_dir), ["vars.style", "cfg"])
    assert s.groups == [
        {"vars.style": "bob", "cfg": 7.0, "jobs": 2, "ok": 2, "failed": 0},
        {"vars.style": "braids", "cfg": 7.0, "jobs": 2, "ok": 1, "failed": 1},
    ]
    table = format_summary(s).splitlines()[-3:]
    assert table[0].split() == ["vars.style", "cfg", "jobs", "ok", "failed"]
    assert table[2].split() == ["braids", "7", "2", "1", "1"]


def test_manifest_folder_itself_is_accepted(run_dir):
    (src,) = find_sources(run_dir / "manifest")
    assert src.out_dir == run_dir


def test_sweep_folder_reads_every_manifest_as_one_table(sweep):
    sources = find_sources(sweep)
    assert [s.out_dir.name for s in sources] == ["cfg=5", "cfg=9"]
    s = summarize(sources, ["output"])
    assert (s.jobs, s.status) == (4, {"ok": 3, "nan": 1})
    assert [(g["output"].split("/")[-1], g["ok"], g["nan"]) for g in s.groups] == [
        ("cfg=5", 1, 1),
        ("cfg=9", 2, 0),
    ]
    assert [g["cfg"] for g in summarize(sources, ["cfg"]).groups] == [5.0, 9.0]


def test_bad_input_is_a_user_error(tmp_path, run_dir):
    with pytest.raises(UserError, match="no manifest found"):
        find_sources(tmp_path / "run" / "images")
    with pytest.raises(UserError, match="does not exist"):
        find_sources(tmp_path / "nope")
    with pytest.raises(UserError, match="'samplr' is not a column; available: job_id"):
        summarize(find_sources(run_dir), ["samplr"])
    with pytest.raises(UserError, match="'vars.hair' .* known: vars.style"):
        summarize(find_sources(run_dir), ["vars.hair"])


def test_merge_writes_all_rows_with_their_output_folder(sweep, tmp_path):
    out = tmp_path / "all.parquet"
    result = merge(all_sources([sweep]), out)
    t = pq.read_table(out)
    assert result.rows == t.num_rows == 4
    assert t.schema.names == [*SCHEMA.names, "output"]
    assert t.schema.field("output").type == pa.string()
    assert sorted(Path(o).name for o in t["output"].to_pylist()) == ["cfg=5"] * 2 + ["cfg=9"] * 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_merge_of_one_output_folder_keeps_the_manifest_schema(run_dir, tmp_path):
    merge(all_sources([run_dir]), tmp_path / "one.parquet")
    assert pq.read_schema(tmp_path / "one.parquet").names == SCHEMA.names


def test_merge_keeps_one_row_of_a_job_found_twice_with_the_same_image(tmp_path):
    a = output(tmp_path / "a", [("same", "ok", "bob"), ("x", "ok", "bob")])
    b = output(tmp_path / "b", [("same", "ok", "bob")])
    Manifest(b / "manifest").append([row("y", "failed")])
    Manifest(a / "manifest").append([row("y", "failed", finished=T0)])
    result = merge(all_sources([a, b]), tmp_path / "m.parquet")
    t = pq.read_table(tmp_path / "m.parquet")
    assert (result.rows, result.dropped) == (3, 2)
    assert sorted(t["job_id"].to_pylist()) == ["same", "x", "y"]


def test_merge_refuses_one_job_with_two_different_images(tmp_path):
    a = output(tmp_path / "a", [("same", "ok", "bob")])
    b = tmp_path / "b"
    Manifest(b / "manifest").append([row("same", image="images/0-same.png", image_sha256="f" * 64)])
    with pytest.raises(DataError, match=f"job same has two different images: sha256 .*{'f' * 64}"):
        merge(all_sources([a, b]), tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()
    res = tools("manifest", "merge", a, b, "-o", tmp_path / "m.parquet")
    assert res.returncode == 1
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: job same has two different images")
    assert sha(b"png same") in line and "f" * 64 in line


def test_verify_finds_a_missing_and_a_changed_image(run_dir):
    assert verify(find_sources(run_dir)).problems == []
    (run_dir / "images" / "0-a1.png").unlink()
    (run_dir / "images" / "2-a3.png").write_bytes(b"corrupted")
    result = verify(find_sources(run_dir), workers=2)
    assert result.checked == 3
    assert [p.split(":")[0] for p in result.problems] == ["missing", "changed"]
    assert "0-a1.png (job a1)" in result.problems[0]
    assert f"sha256 {sha(b'corrupted')}, recorded {sha(b'png a3')}" in result.problems[1]


def test_cli_verify_exit_codes(run_dir):
    ok = tools("manifest", "verify", run_dir)
    assert (ok.returncode, ok.stdout) == (0, "3 images checked: 3 intact, 0 problems\n")
    (run_dir / "images" / "1-a2.png").write_bytes(b"x")
    bad = tools("manifest", "verify", run_dir)
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].startswith(f"changed: {run_dir}/images/1-a2.png (job a2)")
    assert bad.stdout.splitlines()[-1] == "3 images checked: 2 intact, 1 problem"


def test_cli_summary_text_json_and_bad_input(sweep, tmp_path):
    res = tools("manifest", "summary", "outputs", "--by", "vars.style", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "2 output folders: 4 jobs; ok 3, nan 1"
    data = json.loads(tools("manifest", "summary", sweep, "--json").stdout)
    assert (data["jobs"], data["images"], len(data["manifests"])) == (4, 3, 2)
    bad = tools("manifest", "summary", sweep, "--by", "colour")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --by: 'colour' is not a column") and bad.stdout == ""
    empty = tools("manifest", "summary", tmp_path / "outputs" / "hair" / "multirun" / "x")
    assert (empty.returncode, empty.stderr.count("\n")) == (2, 1)


def test_export_puts_rows_that_type_every_column_first():
    t = pa.table({"a": [None, None, "x", "y"], "b": [1, 2, 3, 4], "c": [None, 5, None, 6]})
    assert _rows_first_typed(t).to_pydict() == {
        "a": [None, "x", None, "y"],
        "b": [2, 3, 1, 4],
        "c": [5, None, None, 6],
    }


def test_export_metadata_has_file_name_iso_times_and_flat_variables(sweep, tmp_path):
    plain = sweep / "hair" / "a_plain"  # a plain-prompt run, read before the templated sweep
    output(plain, [("p1", "ok", "bob")])
    Manifest(plain / "manifest").append([row("p1", template=None, vars=[], image="images/0-p1.png",
                                             image_sha256=sha(b"png p1"))])  # fmt: skip
    result = export_imagefolder(all_sources([sweep]), tmp_path / "ds")
    assert (result.images, result.linked, result.copied) == (4, 4, 0)
    lines = (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()
    rows = {r["job_id"]: r for r in map(json.loads, lines)}
    assert sorted(rows) == ["b1", "c1", "c2", "p1"]  # ok rows only
    assert json.loads(lines[0])["template"] is not None  # a typed row first (see export.py)
    c2 = rows["c2"]
    assert c2["file_name"] == "images/1-c2.png" and (tmp_path / "ds" / c2["file_name"]).is_file()
    assert (c2["vars"], c2["var_style"], c2["cfg"]) == ({"style": "braids"}, "braids", 9.0)
    assert c2["started"] == "2026-11-25T01:00:01.000000+00:00"
    assert Path(c2["output"]).name == "cfg=9" and "image" not in c2
    assert (rows["p1"]["vars"], rows["p1"]["var_style"]) == ({"style": None}, None)
