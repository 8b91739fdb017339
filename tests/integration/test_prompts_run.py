"""Prompt language through a real run: emphasis changes pixels, templates reach the manifest."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from sdbatch.run.runner import execute
from tests.conftest import quick_cfg


def pixels(out, row) -> np.ndarray:
    return np.asarray(Image.open(out / row["image"]).convert("RGB"))


def test_emphasis_korean_emoji_and_empty_prompts_in_one_run(tmp_path):
    prompts = [
        "red",
        "(red:1.0)",
        "(red:1.5)",
        "검은 머리, (긴 머리:1.2) 😀",
        "",
        "a (red:abc) car",
    ]
    summary = execute(quick_cfg(prompt=prompts, seeds=[7], batch_size=1), tmp_path)
    assert summary.written == len(prompts) and summary.failed == 0
    rows = {r["prompt"]: r for r in pq.read_table(tmp_path / "manifest").to_pylist()}
    assert set(rows) == set(prompts) and {r["status"] for r in rows.values()} == {"ok"}
    red, red10, red15 = (pixels(tmp_path, rows[p]) for p in ["red", "(red:1.0)", "(red:1.5)"])
    assert np.array_equal(red, red10), "(red:1.0) must render exactly like red"
    assert not np.array_equal(red, red15), "(red:1.5) must change the image"
    assert rows["검은 머리, (긴 머리:1.2) 😀"]["infotext"].startswith(
        "검은 머리, (긴 머리:1.2) 😀\n"
    )


def test_template_values_are_recorded_per_row_and_filterable(tmp_path):
    cfg = quick_cfg(
        prompt=None,
        template="black hair, long hair, {style}, {color} eyes",
        vars={"style": ["bob", "braids"], "color": ["blue", "green"]},
        seeds=[1],
    )
    assert execute(cfg, tmp_path).written == 4
    table = pq.read_table(tmp_path / "manifest")
    rows = table.to_pylist()
    assert {r["template"] for r in rows} == {"black hair, long hair, {style}, {color} eyes"}
    braids = [r for r in rows if dict(r["vars"])["style"] == "braids"]
    assert sorted(r["prompt"] for r in braids) == [
        "black hair, long hair, braids, blue eyes",
        "black hair, long hair, braids, green eyes",
    ]
    import pyarrow.compute as pc  # the same filter in Arrow, as duckdb/pandas users would

    color = pc.list_element(pc.map_lookup(table["vars"], "color", "all"), 0)
    assert pc.sum(pc.equal(color, "green")).as_py() == 2


def test_long_prompts_batch_with_short_ones_and_match_single_runs(tmp_path):
    long_prompt = ", ".join(f"word{i}" for i in range(60))  # > 75 tokens: two chunks
    cfg = quick_cfg(prompt=["short", long_prompt], seeds=[3, 4])
    single, batched = tmp_path / "b1", tmp_path / "b4"
    assert execute({**cfg, "batch_size": 1}, single).written == 4
    assert execute({**cfg, "batch_size": 4}, batched).written == 4
    a = {r["job_id"]: pixels(single, r) for r in pq.read_table(single / "manifest").to_pylist()}
    b = {r["job_id"]: pixels(batched, r) for r in pq.read_table(batched / "manifest").to_pylist()}
    assert a.keys() == b.keys()
    for k in a:
        assert np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1
