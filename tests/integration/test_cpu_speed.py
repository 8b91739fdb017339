"""The CPU speed settings as a user meets them: ``run.dtype=bf16`` on the CPU (an image close to
fp32's, the same judged picture, the dtype in the manifest row and in the job id),
``run.compile`` on a run too short to pay (a warning, eager pixels, unchanged job ids), the CPU
capability line read from /proc/cpuinfo, and the bench report's sections."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdbatch.plan.run_settings import COMPILE_MIN_BATCHES
from sdbatch.render.loading import cpu_features, describe_cpu
from sdbatch.shapes.judge import judge
from tests.conftest import ROOT, run_cli

# Measured (make bench-cpu, BENCHMARKS.md): bf16 against fp32, per pixel, mean 0.46/255 and
# max 59/255 on the shapes-demo prompts (every picture judged alike), mean 0.6-2.3/255 and max
# 122-141/255 on the bench workload (a few edge pixels of Euler a); a broken bf16 path is far
# off both (noise or a blank image is tens of /255 on average).
BF16_MEAN_LIMIT = 4.0
BF16_MAX_LIMIT = 192

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ZEN5 = """model name\t: AMD EPYC 9B45
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 avx_vnni
"""
OLD = """model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu sse4_2 avx avx2 fma
"""


@pytest.mark.parametrize(
    ("text", "model", "bf16", "flags"),
    [
        (SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8480+", "AMX",
         ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512_vnni"]),
        (ZEN5, "AMD EPYC 9B45", "AVX-512 BF16", ["avx512_bf16", "avx512f", "avx512_vnni"]),
        (OLD, "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", "none", []),
    ],
)  # fmt: skip
def test_cpu_features_from_a_fake_cpuinfo(text, model, bf16, flags):
    f = cpu_features(text)
    assert (f["model"], f["bf16"], f["flags"]) == (model, bf16, flags)
    assert describe_cpu(f).startswith(f"{model}; bf16 kernels: {bf16}; torch ")


def _run(tmp_path, monkeypatch, capsys, name: str, *extra: str):
    out = tmp_path / name
    code, stdout, err = run_cli(
        monkeypatch, capsys, "+recipe=quick", f"output.dir={out}", "run.device=cpu",
        "run.progress=false", *extra,
    )  # fmt: skip
    assert code == 0, err
    rows = pq.read_table(out / "manifest").to_pylist()
    rows.sort(key=lambda r: (r["prompt"], r["seed"]))
    images = [np.asarray(Image.open(out / r["image"]).convert("RGB"), np.int16) for r in rows]
    return rows, images, stdout + err


def test_bf16_and_compile_on_the_cpu(tmp_path, monkeypatch, capsys):
    """One test (three short runs of the quick recipe) to keep the suite fast."""
    rows32, img32, out = _run(tmp_path, monkeypatch, capsys, "fp32")
    assert "model: sdbatch-shapes (hash 875ba81cca) on cpu fp32\n" in out  # as the README shows
    # bf16: close to fp32, the same picture judged, the dtype in the row and the job id
    rows16, img16, out = _run(tmp_path, monkeypatch, capsys, "bf16", "run.dtype=bf16")
    assert "on cpu bf16 (" in out and "bf16 kernels:" in out  # the model line names the CPU
    assert [r["dtype"] for r in rows32] == ["fp32"] * 4
    assert [r["dtype"] for r in rows16] == ["bf16"] * 4
    assert not {r["job_id"] for r in rows32} & {r["job_id"] for r in rows16}  # pixels differ
    for a, b in zip(img32, img16, strict=True):
        diff = np.abs(a - b)
        assert 0 < diff.mean() < BF16_MEAN_LIMIT, diff.mean()
        assert diff.max() <= BF16_MAX_LIMIT
        ja, jb = judge(a.astype(np.uint8)), judge(b.astype(np.uint8))
        assert [ja[k] for k in ("colour", "shape", "background")] == [
            jb[k] for k in ("colour", "shape", "background")
        ]
    # run.compile on a run far too short to pay: a warning, eager pixels, the same job ids
    rows_c, img_c, out = _run(tmp_path, monkeypatch, capsys, "compiled", "run.compile=true")
    assert f"warning: run.compile: 1 batches is below {COMPILE_MIN_BATCHES}" in out
    assert "torch.compile UNet" not in out
    assert [r["job_id"] for r in rows32] == [r["job_id"] for r in rows_c]
    assert all((a == b).all() for a, b in zip(img32, img_c, strict=True))


def _bench(name: str, monkeypatch):
    """A bench/ module as its scripts see it (bench/ first on sys.path)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_bench_report_keeps_the_cpu_section(tmp_path, monkeypatch):
    report = _bench("report", monkeypatch)
    out = tmp_path / "BENCHMARKS.md"
    report.write(out, "# Benchmarks\n\nfirst\n", None)
    report.write(out, "## CPU speed\n\nbf16 figures\n", "cpu")
    report.write(out, "# Benchmarks\n\nsecond\n", None)  # make bench again
    text = out.read_text()
    assert "first" not in text and "second" in text
    assert text.count("bf16 figures") == 1 and text.index("second") < text.index("bf16 figures")
    report.write(out, "## CPU speed\n\nnew figures\n", "cpu")  # make bench-cpu again
    text = out.read_text()
    assert "bf16 figures" not in text and text.count("new figures") == 1 and "second" in text


def test_bench_ways_are_checked(monkeypatch):
    ways = _bench("ways", monkeypatch)
    assert ways.LABELS["b8"].startswith("sdbatch CLI, batch_size=8") and ways.BATCH_8 == 8
    assert ways.parse_ways("a', b bf16 ,c, b8 bf16") == ["a'", "b bf16", "c", "b8 bf16"]
    with pytest.raises(ValueError, match="unknown way 'b fp8'"):
        ways.parse_ways("b fp8")


def test_bench_report_gives_b8_over_the_loop_whole_and_after_start_up(monkeypatch):
    """(b8) against (a'): the whole-process ratio and the one after start-up, from the walls."""
    ways, report = _bench("ways", monkeypatch), _bench("report", monkeypatch)

    def runs(way, walls, ready):
        return [ways.Result(way, w, 500.0, ready, ready + 1) for w in walls]

    # a': 14 s with 6 s start-up (8 s of images); b8: 12 s with 6 s (6 s of images)
    results = {"a'": runs("a'", [14.0, 14.0, 14.0], 6.0), "b8": runs("b8", [12.0] * 3, 6.0)}
    lines = report.ratios(report.summarize(results, 32), results)
    (line,) = [x for x in lines if x.startswith("- **b8/a'**")]
    assert "**1.17x**" in line and "after start-up 1.33x" in line, line
