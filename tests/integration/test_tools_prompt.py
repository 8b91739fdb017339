"""`sdbatch-tools prompt`: what users see, and that it starts without torch."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import BIN, ROOT, sdbatch_env


def tools(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sdbatch-tools"), *args], capture_output=True, text=True, env=sdbatch_env()
    )


def test_json_gives_a1111_runs():
    res = tools("prompt", "--json", "a (red:1.2) car BREAK blue sky")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [
        ["a ", 1.0],
        ["red", 1.2],
        [" car", 1.0],
        ["BREAK", -1.0],
        ["blue sky", 1.0],
    ]


def test_human_output_shows_runs_tokens_weights_and_chunks():
    res = tools("prompt", "a (red:1.2) car BREAK blue sky")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "chunk 1: 3 of 75 tokens" in lines and "chunk 2: 2 of 75 tokens" in lines
    assert "  a red:1.2 car" in lines and "  blue sky" in lines
    assert lines[-1] == "2 chunks (154 tokens for CLIP)"


def test_long_prompt_spills_into_a_second_chunk():
    res = tools("prompt", ", ".join(["masterpiece"] * 40))
    assert res.stdout.splitlines()[-1] == "2 chunks (154 tokens for CLIP)"


def test_bad_weight_is_a_one_line_error():
    res = tools("prompt", "(x:1.2.3)")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "not a number" in res.stderr


def test_tools_import_no_torch():
    code = (
        "import sys; from sdbatch.tools import main\n"
        "try:\n    main(['prompt', 'a (b:1.2) c'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
