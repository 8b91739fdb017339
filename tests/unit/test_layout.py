"""Where tests live: tests/unit imports no torch (milliseconds each); what needs torch, the
pipeline or a real process is in tests/integration. Checked from the sources, so a misfiled
test fails here instead of slowing the unit suite."""

from __future__ import annotations

import re
from pathlib import Path

HEAVY = re.compile(
    r"^\s*(?:import (?:torch|diffusers|transformers)\b|from (?:torch|diffusers|transformers)\b"
    r"|from sdbatch\.render\b|import sdbatch\.render\b|.*importorskip\(\"torch\"\))",
    re.M,
)


def test_unit_tests_import_no_torch_or_the_render_stage():
    unit = Path(__file__).parent
    misfiled = [p.name for p in sorted(unit.glob("test_*.py")) if HEAVY.search(p.read_text())]
    assert not misfiled, f"these need torch: move them to tests/integration: {misfiled}"
