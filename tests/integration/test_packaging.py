"""Packaging: the wheel builds without a single setuptools warning and carries every data file
sdbatch needs at run time (recipes, wildcards, the embedded model, the configs) and the licence.

The wheel is built from a copy of the source tree (what git tracks, plus new files it does not
ignore), so a stale ``build/`` folder in the checkout can neither hide nor add anything, and a
build here never writes into the checkout that other commands are using.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

from tests.conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

# A warning in the build log: setuptools' own (SetuptoolsDeprecationWarning and friends, each
# framed by "!!" lines), Python's "...Warning: " lines and pip's "WARNING:"/"warning:" lines.
WARNING = re.compile(r"warning|^\s*!!\s*$", re.IGNORECASE | re.MULTILINE)
SKIP_DIRS = {".git", ".venv", "build", "dist", "outputs", "__pycache__", ".pytest_cache"}


def source_files() -> list[Path]:
    """The files a fresh checkout would have: tracked ones and untracked ones git keeps."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        res = subprocess.run(
            [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        )  # fmt: skip
        names = [n for n in res.stdout.decode().split("\0") if n]
        return [Path(n) for n in names if (ROOT / n).is_file()]
    return [
        p.relative_to(ROOT)
        for p in ROOT.rglob("*")
        if p.is_file()
        and not SKIP_DIRS & set(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.parts)
    ]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """(wheel path, build log) of a wheel built the way pip builds one for `pip install .`."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here; the build needs it (no build isolation)")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    for rel in source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    # With PYTHONDONTWRITEBYTECODE set, distutils notes "byte-compiling is disabled": a fact
    # about this shell, not about the package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-3000:]
    (whl,) = (tmp / "dist").glob("sdbatch-*.whl")
    return whl, log


def test_the_wheel_builds_without_warnings(wheel):
    _, log = wheel
    warnings = [line for line in log.splitlines() if WARNING.search(line)]
    assert not warnings, "\n".join(warnings[:40])


def test_the_wheel_holds_the_recipes_the_model_the_configs_and_the_licence(wheel):
    whl, _ = wheel
    names = set(zipfile.ZipFile(whl).namelist())

    def has(pattern: str) -> list[str]:
        return sorted(n for n in names if re.fullmatch(pattern, n))

    # the shipped recipes and wildcards, as the package sdbatch.recipes
    recipes = {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    assert recipes and {n.rsplit("/", 1)[1] for n in has(r"sdbatch/recipes/[^/]+\.yaml")} == recipes
    wildcards = {p.name for p in (ROOT / "recipes" / "wildcards").glob("*.txt")}
    assert wildcards
    assert {n.rsplit("/", 1)[1] for n in has(r"sdbatch/recipes/wildcards/[^/]+\.txt")} == wildcards
    # the embedded model: every file of the diffusers folder, weights included
    model = ROOT / "sdbatch" / "models" / "shapes"
    shipped = {f"sdbatch/models/shapes/{p.relative_to(model).as_posix()}" for p in model.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}  # fmt: skip
    assert len(has(r"sdbatch/models/shapes/[^/]+/[^/]+\.safetensors")) == 3
    assert shipped <= names, sorted(shipped - names)
    # the offline loading configs (SD 1.5 and SDXL) and Hydra's configs (launchers included)
    configs = ROOT / "sdbatch" / "models" / "configs"
    for p in configs.rglob("*.json"):
        assert f"sdbatch/models/configs/{p.relative_to(configs).as_posix()}" in names, p
    for name in ["model_index.json", "unet/config.json", "text_encoder_2/config.json"]:
        assert f"sdbatch/models/configs/sdxl/{name}" in names, name
    conf = ROOT / "sdbatch" / "conf"
    for p in conf.rglob("*.yaml"):
        assert f"sdbatch/conf/{p.relative_to(conf).as_posix()}" in names, p
    assert has(r"sdbatch/conf/hydra/launcher/[^/]+\.yaml")
    assert "sdbatch/py.typed" in names
    # the licence, where PEP 639 puts it, and the metadata that names it
    (dist_info,) = {n.split("/", 1)[0] for n in names if ".dist-info/" in n}
    assert f"{dist_info}/licenses/LICENSE" in names
    meta = HeaderParser().parsestr(zipfile.ZipFile(whl).read(f"{dist_info}/METADATA").decode())
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["License"] is None  # the pre-PEP 639 field is gone
    assert "License :: " not in " ".join(meta.get_all("Classifier") or [])


def test_every_file_of_the_package_source_is_in_the_wheel(wheel):
    """The package list and the data globs are written by hand: a new module, subpackage or
    data file that they miss would be absent from an installed sdbatch only."""
    whl, _ = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    expected = set()
    for rel in source_files():
        parts = rel.parts
        if parts[0] == "sdbatch":
            expected.add(rel.as_posix())
        elif parts[0] == "recipes":
            expected.add(Path("sdbatch", *parts).as_posix())
    assert "sdbatch/cli.py" in expected and "sdbatch/recipes/quick.yaml" in expected
    assert not expected - names, sorted(expected - names)


def test_the_version_is_written_once(wheel):
    whl, _ = wheel
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    text = (ROOT / "sdbatch" / "__init__.py").read_text()
    (version,) = re.findall(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert whl.name.startswith(f"sdbatch-{version}-")
    (dist_info,) = {
        n.split("/", 1)[0] for n in zipfile.ZipFile(whl).namelist() if ".dist-info/" in n
    }
    assert dist_info == f"sdbatch-{version}.dist-info"


def test_the_licence_is_mit_and_names_its_holders():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} the sdbatch authors$", text, re.MULTILINE)
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
