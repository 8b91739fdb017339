"""The Parquet manifest: schema, atomic appends, newest-row-wins, compaction."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sdbatch.outputs.manifest import SCHEMA, Manifest

# The schema is part of the interface (docs/outputs.md documents it): changing it is deliberate.
EXPECTED = [
    ("job_id", "string"),
    ("recipe", "string"),
    ("prompt", "string"),
    ("negative_prompt", "string"),
    ("template", "string"),
    ("vars", "map<string, string>"),
    ("sampler", "string"),
    ("scheduler", "string"),
    ("steps", "int32"),
    ("cfg", "double"),
    ("seed", "int64"),
    ("width", "int32"),
    ("height", "int32"),
    ("model", "string"),
    ("model_hash", "string"),
    ("subseed", "int64"),
    ("subseed_strength", "double"),
    ("rng", "string"),
    ("hires", "string"),
    (
        "loras",
        "list<item: struct<name: string, hash: string, te_weight: double, unet_weight: double>>",
    ),
    ("embeddings", "list<item: struct<name: string, hash: string>>"),
    ("init_image", "string"),
    ("init_image_sha256", "string"),
    ("mask", "string"),
    ("mask_sha256", "string"),
    ("denoise", "double"),
    (
        "controlnet",
        "list<item: struct<model: string, hash: string, image: string, image_sha256: string, "
        "weight: double, start: double, end: double, module: string, control_mode: string, "
        "resize_mode: string>>",
    ),
    ("image", "string"),
    ("image_sha256", "string"),
    ("status", "string"),
    ("error", "string"),
    ("note", "string"),
    ("batch", "int64"),
    ("started", "timestamp[us, tz=UTC]"),
    ("finished", "timestamp[us, tz=UTC]"),
    ("duration_s", "double"),
    ("device", "string"),
    ("dtype", "string"),
    ("sdbatch_version", "string"),
    ("torch_version", "string"),
    ("diffusers_version", "string"),
    ("infotext", "string"),
    ("hydra_job", "int32"),
    ("overrides", "string"),
]


def row(job_id: str, status: str = "ok", **kw) -> dict:
    now = datetime(2026, 11, 25, tzinfo=timezone.utc)
    base = {f.name: None for f in SCHEMA}
    base.update(
        job_id=job_id, recipe="r", prompt="검은 머리 😀", negative_prompt="",
        vars=[("style", "bob")],
        sampler="Euler a", steps=20, cfg=7.0, seed=1, width=64, height=64, status=status,
        started=now, finished=now, image=f"images/{job_id}.png", image_sha256="ab" * 32,
    )  # fmt: skip
    base.update(kw)
    return base


def test_schema_is_pinned():
    assert [(f.name, str(f.type)) for f in SCHEMA] == EXPECTED


def test_diffusiondb_columns_are_derivable():
    names = {f.name for f in SCHEMA}
    # DiffusionDB: prompt, seed, step, cfg, sampler, width, height, timestamp
    assert {"prompt", "seed", "steps", "cfg", "sampler", "width", "height", "finished"} <= names


def test_append_read_and_newest_row_wins(tmp_path):
    m = Manifest(tmp_path / "manifest")
    assert m.read().num_rows == 0
    m.append([row("a", "failed", error="boom"), row("b")])
    m.append([row("a", "ok")])
    t = m.read()
    assert sorted(t["job_id"].to_pylist()) == ["a", "b"]
    status = dict(zip(t["job_id"].to_pylist(), t["status"].to_pylist(), strict=True))
    assert status == {"a": "ok", "b": "ok"}
    assert t.to_pylist()[0]["prompt"] == "검은 머리 😀"


def test_every_append_is_a_readable_parquet_dataset(tmp_path):
    m = Manifest(tmp_path / "manifest")
    for i in range(3):
        m.append([row(f"j{i}")])
        # a third-party reader sees complete files only, at any moment
        assert ds.dataset(m.dir, format="parquet").to_table().num_rows == i + 1
    assert not list(m.dir.glob("*.tmp")) and not list(m.dir.glob(".*"))


def test_compact_merges_parts_into_one_file_without_duplicates(tmp_path):
    m = Manifest(tmp_path / "manifest")
    m.append([row("a", "failed")])
    m.append([row("a"), row("b")])
    m.compact()
    files = m.files()
    assert len(files) == 1 and files[0].name.startswith("seg-")
    t = pq.read_table(files[0])
    assert t.schema.equals(SCHEMA)
    assert sorted(t["job_id"].to_pylist()) == ["a", "b"]
    m.append([row("c")])
    assert m.read().num_rows == 3


def test_read_selected_columns(tmp_path):
    m = Manifest(tmp_path / "manifest")
    m.append([row("a"), row("b", "nan")])
    t = m.read(columns=["status"])
    assert t.column_names == ["status"]
    assert isinstance(t, pa.Table) and t.num_rows == 2


def test_a_manifest_written_before_the_dtype_column_still_reads(tmp_path):
    """Files written with the old schema (no ``dtype``) read with a null dtype, beside new ones."""
    m = Manifest(tmp_path / "manifest")
    old_schema = pa.schema([f for f in SCHEMA if f.name != "dtype"])
    old = pa.Table.from_pylist([row("old")], schema=old_schema)
    m.dir.mkdir()
    pq.write_table(old, m.dir / "seg-00000000000000000001-1.parquet")
    m.append([row("new", dtype="fp16")])
    t = m.read()
    assert t.schema.equals(SCHEMA)
    assert dict(zip(t["job_id"].to_pylist(), t["dtype"].to_pylist(), strict=True)) == {
        "old": None,
        "new": "fp16",
    }
    assert m.read(columns=["dtype"])["dtype"].to_pylist() == [None, "fp16"]
    assert m.check().damaged == []  # an old file is not "damaged" for the run's check either
    m.compact(full=True)
    (seg,) = m.files()
    assert pq.read_table(seg)["dtype"].to_pylist() == [None, "fp16"]


def test_controlnet_units_written_before_the_module_field_read_with_a_null_module(tmp_path):
    """A ControlNet entry of an old file (no ``module``, ``control_mode``, ``resize_mode``)
    reads as null there beside new ones."""
    m = Manifest(tmp_path / "manifest")
    unit = {"model": "cn", "hash": "0" * 8, "image": "a.png", "image_sha256": "1" * 64,
            "weight": 1.0, "start": 0.0, "end": 1.0}  # fmt: skip
    struct = pa.struct(
        [
            f
            for f in SCHEMA.field("controlnet").type.value_type
            if f.name not in ("module", "control_mode", "resize_mode")
        ]
    )
    old_schema = pa.schema(
        [pa.field("controlnet", pa.list_(struct)) if f.name == "controlnet" else f for f in SCHEMA]
    )
    m.dir.mkdir()
    old = pa.Table.from_pylist([row("old", controlnet=[unit])], schema=old_schema)
    pq.write_table(old, m.dir / "seg-00000000000000000001-1.parquet")
    mode = "My prompt is more important"
    new = {**unit, "module": "canny", "control_mode": mode, "resize_mode": "Resize and Fill"}
    m.append([row("new", controlnet=[new])])
    t = m.read()
    assert [u[0]["module"] for u in t["controlnet"].to_pylist()] == [None, "canny"]
    assert [u[0]["control_mode"] for u in t["controlnet"].to_pylist()] == [None, mode]
    assert [u[0]["resize_mode"] for u in t["controlnet"].to_pylist()] == [None, "Resize and Fill"]
    assert m.check().damaged == []
