"""`sdbatch-tools export --format imagefolder`: a real run, exported, loaded back by `datasets`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sdbatch.outputs.manifest import SCHEMA, Manifest
from sdbatch.run.runner import execute
from tests.conftest import BIN, quick_cfg, sdbatch_env


def tools(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sdbatch-tools"), *map(str, args)],
        capture_output=True, text=True, env=sdbatch_env(), cwd=cwd, timeout=120,
    )  # fmt: skip


def test_export_loads_back_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    run = tmp_path / "run"
    assert execute(quick_cfg(), run).written == 4  # 2 prompts x 2 seeds, tiny model
    out = tmp_path / "ds"

    res = tools("export", run, "--format", "imagefolder", "-o", out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"exported 4 images (4 linked) and {out}/metadata.jsonl"
    src = sorted((run / "images").iterdir())
    assert [p.name for p in sorted((out / "images").iterdir())] == [p.name for p in src]
    assert (out / "images" / src[0].name).stat().st_ino == src[0].stat().st_ino  # hard link

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf"))
    train = ds["train"]
    assert train.num_rows == 4
    assert sorted(set(train["prompt"])) == ["a blue square", "a red circle"]
    first = train[0]
    assert first["image"].size == (64, 64)
    assert first["started"].endswith("+00:00") and first["seed"] in (1, 2)
    assert first["vars"] == {} and first["status"] == "ok"

    again = tools("export", run, "-o", out, "--copy")  # re-export refreshes, as copies
    assert again.returncode == 0, again.stderr
    assert "(4 copied)" in again.stdout
    assert (out / "images" / src[0].name).stat().st_ino != src[0].stat().st_ino


def test_export_refuses_a_foreign_folder_and_a_missing_image(tmp_path):
    run = tmp_path / "run"
    row = {f.name: None for f in SCHEMA}
    row.update(job_id="j1", prompt="p", status="ok", image="images/1-j1.png", vars=[])
    Manifest(run / "manifest").append([row])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")

    foreign = tools("export", run, "-o", tmp_path / "busy")
    assert foreign.returncode == 2
    assert foreign.stderr.startswith("error: -o:") and "notes.txt" in foreign.stderr

    missing = tools("export", run, "-o", tmp_path / "ds")
    assert missing.returncode == 1
    expected = f"error: export: image missing: {run}/images/1-j1.png; run `sdbatch-tools "
    assert missing.stderr == expected + "manifest verify`\n"
