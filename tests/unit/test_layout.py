"""Where tests live: tests/unit imports no torch (milliseconds each); what needs torch or the
render stage is in tests/integration. Checked from the sources (their import statements, not
scripts they hand to a subprocess), so a misfiled test fails here instead of slowing the unit
suite."""

from __future__ import annotations

import ast
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers", "sdbatch.render")


def _heavy_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip":
            found += [a.value for a in node.args if isinstance(a, ast.Constant)]
    return [m for m in found if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY))]


def test_unit_tests_import_no_torch_or_the_render_stage():
    unit = Path(__file__).parent
    misfiled = {
        p.name: heavy
        for p in sorted(unit.glob("test_*.py"))
        if (heavy := _heavy_imports(p.read_text()))
    }
    assert not misfiled, f"these need torch: move them to tests/integration: {misfiled}"


def test_the_check_sees_imports_but_not_scripts_in_strings():
    assert _heavy_imports("import torch\nfrom sdbatch.render.pipeline import Renderer") == [
        "torch", "sdbatch.render.pipeline"]  # fmt: skip
    assert _heavy_imports('SCRIPT = "import torch"\nimport pyarrow') == []
