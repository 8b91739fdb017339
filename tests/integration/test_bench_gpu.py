"""bench/gpu.py, the CUDA benchmark, end to end in its CPU smoke mode.

``--device cpu --tiny`` runs every part of the script (the plain loop, sdbatch's CLI as a
process, the compute rows and the ratios) on the embedded tiny model at 32x32, 2 steps, so a
broken row or a renamed diffusers argument shows up here without a GPU. The numbers themselves
mean nothing on the CPU; the test only asks that they are there and positive.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, sdbatch_env

SCRIPT = ROOT / "bench" / "gpu.py"
IMAGES_PER_S = 5  # column of the table: | way | variant | batch | images | seconds | images/s |


def table_rows(out: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| (")
    ]


@pytest.mark.slow
def test_tiny_cpu_run_prints_every_way_and_the_ratios():
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"],
        cwd=ROOT, env=sdbatch_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| way | variant | batch | images | seconds | images/s |" in out
    rows = table_rows(out)
    assert not [r for r in rows if "failed" in r[-1]], out
    for way in ("(a)", "(b)", "(c)"):
        mine = [r for r in rows if r[0].startswith(way)]
        assert mine, f"no {way} row:\n{out}"
        for r in mine:
            assert float(r[IMAGES_PER_S]) > 0, r
    compute_batches = {r[2] for r in rows if r[0].startswith("(c)") and r[1] == "SDPA"}
    assert compute_batches == {"1", "2"}, out  # --tiny: batch sizes 1 and 2
    for ratio in ("(b)/(c at batch 2)", "(b)/(a)"):
        found = re.findall(rf"^- {re.escape(ratio)}, [a-z ]+: ([0-9.]+)$", out, re.M)
        assert found and all(float(x) > 0 for x in found), f"{ratio} missing:\n{out}"
    print(f"bench/gpu.py --device cpu --tiny took {took:.0f}s")  # printed, never asserted


def test_help_documents_every_option(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", module)  # its dataclasses look it up
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports its sibling workloads.py
    spec.loader.exec_module(module)  # no torch at import: the options come first
    parser = module.build_parser()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 10
    for action in options:
        assert action.help and len(action.help) > 15, action.option_strings
        for flag in action.option_strings:
            assert flag in proc.stdout, flag
