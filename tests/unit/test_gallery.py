"""The gallery page's data: the key values under each thumbnail and each image's file name
(the browser side is in tests/integration/test_gallery_browser.py)."""

from __future__ import annotations

import json

from sdbatch.outputs import reading as row_tools
from sdbatch.views.gallery import build_gallery, gallery_data
from tests.unit.test_grid import make_run


def as_dicts(data: dict) -> list[dict]:
    return [dict(zip(data["cols"], r, strict=True)) for r in data["rows"]]


def test_caption_has_key_values_and_the_variables_that_differ(tmp_path):
    big = 9223372036854775807
    specs = [
        dict(style="bob", cfg=7.5, seed=big, vars=[("style", "bob"), ("hat", "no")]),
        dict(style="braids", seed=2, vars=[("style", "braids"), ("hat", "no")]),
        dict(status="failed", steps=None, sampler=None, vars=[("style", "x"), ("hat", "no")]),
    ]
    out = make_run(tmp_path / "g", specs)
    rows = as_dicts(gallery_data(row_tools.load_rows(out), out))
    assert rows[0]["caption"] == "Euler a, CFG 7.5, 20 steps, style: bob"  # hat is the same
    assert rows[0]["seed"] == "9223372036854775807"  # the card shows it on a line of its own
    assert rows[2]["caption"] == "(none), CFG 7, (none) steps, style: x"


def test_file_is_relative_to_the_gallery_folder_wherever_the_page_goes(tmp_path):
    out = make_run(tmp_path / "g" / "run1", [dict(colour=(1, 2, 3)), dict(status="nan")])
    page, _ = build_gallery(tmp_path / "g", tmp_path / "pages" / "index.html")
    text = page.read_text(encoding="utf-8")
    blob = text.split('id="data">', 1)[1].split("</script>", 1)[0]
    rows = as_dicts(json.loads(blob))
    assert [r["file"] for r in rows] == ["run1/images/0000000000000000.png", None]
    assert rows[0]["src"] == "../g/run1/images/0000000000000000.png"  # the page's own link
    assert (out / rows[0]["file"].removeprefix("run1/")).is_file()
