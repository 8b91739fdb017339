"""An installed (non-editable) sdbatch finds its bundled recipes, wildcards and model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, sdbatch_env


@pytest.mark.slow
def test_wheel_install_finds_the_bundled_recipes(tmp_path):
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", tmp_path / "dist",
         str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sdbatch-*.whl")
    target = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, wheel],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-2000:]
    env = sdbatch_env(PYTHONPATH=str(target))
    where = subprocess.run(
        [sys.executable, "-c", "import sdbatch.config as c; print(c.__file__);"
         " print(sorted(c.available_recipes()))"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    assert "hair_styles" in where.stdout and "quick" in where.stdout
    run = subprocess.run(
        [sys.executable, "-m", "sdbatch.cli", "+recipe=hair_styles", "run.dry_run=true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "hair_styles: 60 jobs = 5 prompts x 1 sampler x 3 cfg x 4 seeds" in run.stdout
    assert sorted(os.listdir(tmp_path)) == ["dist", "site"]  # a dry run writes nothing
    shipped = target / "sdbatch" / "models" / "shapes"
    for part in ["model_index.json", "unet/config.json", "tokenizer/vocab.json", "README.md"]:
        assert (shipped / part).is_file(), part
    assert len(list(shipped.glob("*/*.safetensors"))) == 3, "the embedded weights are packaged"
