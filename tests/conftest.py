"""Shared fixtures. Unit tests (tests/unit) import no torch; integration tests use the tiny
embedded model on the CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Under ``pytest -n N`` the workers share the cores: each (and every sdbatch it starts) gets its
# share of threads, set before torch is imported, instead of all of them each.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _share))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Hash cache in a per-session temp folder, offline hub, no user recipe folders."""
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SDBATCH_RECIPES", raising=False)


def quick_cfg(**overrides) -> dict:
    """A composed-recipe dict like Hydra would hand the runner: tiny, fast, 2 steps."""
    cfg = {
        "name": "t",
        "model": {"path": None, "name": None},
        "prompt": ["a red circle", "a blue square"],
        "template": None,
        "vars": {},
        "negative_prompt": "blurry",
        "sampler": "Euler a",
        "steps": 2,
        "cfg": 7.0,
        "size": "64x64",
        "seeds": [1, 2],
        "batch_size": 4,
        "run": {"dry_run": False, "device": "cpu", "dtype": "auto", "progress": False},
    }
    cfg.update(overrides)
    return cfg


def sdbatch_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}, **extra)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``sdbatch ARGS`` in this process (fast: no interpreter start): (exit code, out, err)."""
    from sdbatch import cli

    monkeypatch.setattr(sys, "argv", ["sdbatch", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def pytest_collection_modifyitems(config, items) -> None:
    """With ``pytest -n N`` (pytest-xdist, ``--dist loadgroup``): each test file runs on one
    worker, so its module fixtures are built once, and the cluster tests share one worker,
    since the Slurm and Ray clusters are one per machine and their shards are timed."""
    for item in items:
        path = item.nodeid.split("::")[0]
        group = "cluster" if path.startswith("tests/cluster/") else path
        item.add_marker(pytest.mark.xdist_group(group))
