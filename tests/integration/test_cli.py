"""The `sdbatch` command end to end, as a user runs it: real processes, the tiny model, CPU."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdbatch.outputs.infotext import parse_infotext, read_png_infotext
from tests.conftest import BIN, ROOT, sdbatch_env

SDBATCH = str(BIN / "sdbatch")


def sdbatch(*args: str, cwd: Path = ROOT, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SDBATCH, *args], cwd=cwd, env=sdbatch_env(**env), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def quick(out: Path, *extra: str, **env) -> subprocess.CompletedProcess:
    return sdbatch("+recipe=quick", f"output.dir={out}", "run.device=cpu", *extra, **env)


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest").to_pylist()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_quick_recipe_writes_images_manifest_and_a_summary(tmp_path):
    out = tmp_path / "quick"
    res = quick(out)
    assert res.returncode == 0, res.stderr
    assert "quick: 4 jobs = 2 prompts x 1 sampler x 1 cfg x 2 seeds; 0 done; batch size 4" in (
        res.stdout
    )
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("done: 4 written, 0 skipped, 0 failed in ") and str(out) in last
    table = rows(out)
    assert len(table) == 4 and {r["status"] for r in table} == {"ok"}
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 4
    for r in table:
        png = out / r["image"]
        assert sha(png) == r["image_sha256"]
        with Image.open(png) as im:
            assert im.size == (32, 32)
        info = parse_infotext(read_png_infotext(png))
        assert info.prompt == r["prompt"] and info.negative_prompt == "blurry"
        assert info.params["Seed"] == str(r["seed"]) and info.params["Sampler"] == "Euler a"
        assert info.params["Size"] == "32x32" and info.params["Model hash"] == r["model_hash"]
        assert r["infotext"] == read_png_infotext(png)
        assert r["job_id"] in png.name and png.name.startswith(f"{r['seed']}-")
    # same command again: everything is found and skipped
    again = quick(out)
    assert again.returncode == 0
    assert "4 done" in again.stdout and "done: 0 written, 4 skipped, 0 failed" in again.stdout
    assert len(rows(out)) == 4


def test_resume_regenerates_missing_or_corrupted_images_identically(tmp_path):
    out = tmp_path / "quick"
    assert quick(out).returncode == 0
    before = {p.name: sha(p) for p in (out / "images").glob("*.png")}
    victims = sorted((out / "images").glob("*.png"))[:2]
    victims[0].unlink()
    victims[1].write_bytes(b"not a png")
    res = quick(out)
    assert res.returncode == 0
    assert "2 done" in res.stdout and "done: 2 written, 2 skipped" in res.stdout
    assert {p.name: sha(p) for p in (out / "images").glob("*.png")} == before
    assert len(rows(out)) == 4


def test_dry_run_prints_plan_and_first_jobs_and_writes_nothing(tmp_path):
    out = tmp_path / "dry"
    res = sdbatch("+recipe=hair_styles", f"output.dir={out}", "run.dry_run=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "60 jobs = 5 prompts x 1 sampler x 3 cfg x 4 seeds; 0 done; batch size 4" in res.stdout
    assert "black hair, long hair, ponytail" in res.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["+recipe=nope"], "recipe: 'nope' is not a known recipe; available: "),
        (["+recipe=quick", "sampler=Euler b"], "sampler: 'Euler b'"),
        (["+recipe=quick", "size=100x64"], "size: '100x64'"),
        (["+recipe=quick", "size=-64x64"], "size: '-64x64'"),
        (["+recipe=quick", "steps=0"], "steps: 0"),
        (["+recipe=quick", "cfg=-1"], "cfg: -1"),
        (["+recipe=quick", "seeds=4294967296"], "seeds: 4294967296"),
        (["+recipe=quick", "prompt=[]"], "prompt: []"),
        (["+recipe=quick", "template='a {colour} car'"], "template[0]: '{colour}'"),
        (["+recipe=quick", "model.path=/no/such/model"], "model.path: '/no/such/model'"),
        (["+recipe=quick", "stpes=3"], "stpes"),
        (["+recipe=quick", "batch_size=many"], "batch_size"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, fragment):
    res = sdbatch(*args, f"output.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_recipe_lists_the_available_ones(tmp_path):
    res = sdbatch("+recipe=hair_style", cwd=tmp_path)
    assert "hair_styles" in res.stderr and "quick" in res.stderr


def test_user_recipe_folder_joins_through_the_environment(tmp_path):
    mine = tmp_path / "my_recipes"
    (mine / "wildcards").mkdir(parents=True)
    (mine / "wildcards" / "colour.txt").write_text("red\ngreen\n")
    (mine / "mine.yaml").write_text(
        "name: mine\nprompt: a __colour__ ball\nsize: 64x64\nsteps: 2\nseeds: 3\n"
    )
    res = sdbatch("+recipe=mine", "run.dry_run=true", cwd=tmp_path, SDBATCH_RECIPES=str(mine))
    assert res.returncode == 0, res.stderr
    assert "mine: 2 jobs = 2 prompts" in res.stdout and "a green ball" in res.stdout


def _images(out: Path) -> dict[str, np.ndarray]:
    return {
        p.name: np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
        for p in (out / "images").glob("*.png")
    }


def test_batch_size_changes_pixels_by_at_most_one_level(tmp_path):
    one, four = tmp_path / "b1", tmp_path / "b4"
    assert quick(one, "batch_size=1").returncode == 0
    assert quick(four, "batch_size=4").returncode == 0
    a, b = _images(one), _images(four)
    assert a.keys() == b.keys() and len(a) == 4
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path):
    args = [
        "+recipe=hair_styles",
        "steps=3",
        "sampler=Euler a",
        "grids=[]",
        "run.device=cpu",
        "run.progress=false",
    ]
    ref = tmp_path / "ref"
    assert sdbatch(*args, f"output.dir={ref}").returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [SDBATCH, *args, f"output.dir={out}"], cwd=ROOT, env=sdbatch_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "images").glob("*.png"))) < 12:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list((out / "images").glob("*.png")))
    assert 12 <= partial < 60, "the kill must land mid-run"
    # the manifest is readable right after the kill
    assert 0 < pq.read_table(out / "manifest").num_rows < 60
    res = sdbatch(*args, f"output.dir={out}")
    assert res.returncode == 0, res.stderr
    table = rows(out)
    assert len(table) == 60 and len({r["job_id"] for r in table}) == 60
    assert {r["status"] for r in table} == {"ok"}
    got = {p.name: sha(p) for p in (out / "images").glob("*.png")}
    want = {p.name: sha(p) for p in (ref / "images").glob("*.png")}
    assert got == want
    for p in (out / "images").glob("*.png"):
        with Image.open(p) as im:
            im.load()


def test_verify_size_resume_checks_presence_without_hashing(tmp_path):
    out = tmp_path / "quick"
    assert quick(out).returncode == 0
    victim = sorted((out / "images").glob("*.png"))[0]
    victim.unlink()
    res = quick(out, "run.verify=size")
    assert res.returncode == 0 and "3 done" in res.stdout
    assert "done: 1 written, 3 skipped" in res.stdout and victim.exists()
