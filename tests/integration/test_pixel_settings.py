"""Settings that decide the pixels (sdbatch/plan/run_settings.py): the dtype is part of a job's
identity, of a multirun job's folder and of its manifest row; the device is recorded per row."""

from __future__ import annotations

import pyarrow.parquet as pq

from sdbatch.cli import job_folder
from sdbatch.plan.recipe import build_plan
from sdbatch.run.runner import execute
from tests.conftest import quick_cfg


def test_dtype_joins_the_job_id_only_when_it_is_not_fp32():
    cfg = quick_cfg()
    fp32 = [j.job_id for j in build_plan(cfg).jobs]
    assert [j.job_id for j in build_plan(cfg, dtype="fp32").jobs] == fp32  # ids kept
    bf16 = [j.job_id for j in build_plan(cfg, dtype="bf16").jobs]
    fp16 = [j.job_id for j in build_plan(cfg, dtype="fp16").jobs]
    assert not set(bf16) & set(fp32) and not set(fp16) & set(bf16)


def test_multirun_folders_keep_run_dtype_and_drop_other_run_keys():
    a = job_folder(["+recipe=quick", "run.dtype=fp32", "run.progress=false"], 0)
    b = job_folder(["+recipe=quick", "run.dtype=bf16", "run.progress=false"], 1)
    assert (a, b) == ("run.dtype=fp32", "run.dtype=bf16")


def test_a_rerun_in_another_dtype_renders_its_own_images_and_rows_say_which(tmp_path):
    out = tmp_path / "out"
    first = execute(quick_cfg(seeds=[1]), out)
    assert first.written == 2
    again = execute(
        quick_cfg(seeds=[1], run={"device": "cpu", "dtype": "bf16", "progress": False}), out
    )
    assert again.written == 2 and again.skipped == 0  # not "resumed" from the fp32 images
    rows = pq.read_table(out / "manifest").to_pylist()
    assert sorted(r["dtype"] for r in rows) == ["bf16", "bf16", "fp32", "fp32"]
    assert {r["device"] for r in rows} == {"cpu"}
    assert len({r["image"] for r in rows}) == 4
    third = execute(
        quick_cfg(seeds=[1], run={"device": "cpu", "dtype": "bf16", "progress": False}), out
    )
    assert third.written == 0 and third.skipped == 2
