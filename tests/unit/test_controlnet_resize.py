"""A ControlNet unit's resize_mode: validation, job ids, infotext, dry run, replay and the
preprocess tool's --resize-mode (the pixels the pipeline gets: tests/integration/
test_controlnet.py). Pure and fast (well under a second)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdbatch.errors import RecipeError
from sdbatch.plan.controlnet_resize import RESIZE_MODES, resize_condition
from tests.unit.test_controlnet_plan import A1111_TEXT, plan, unit, world  # noqa: F401


def ids(world, **over):  # noqa: F811
    return tuple(j.job_id for j in plan(world, [unit(**over)]).jobs)


def test_the_default_keeps_the_ids_and_the_other_two_join_them(world):  # noqa: F811
    base = ids(world)
    # the default spelled out, in another letter case, or by its older names: the same jobs
    for same in ("Crop and Resize", "crop and resize", "Inner Fit (Scale to Fit)",
                 "Scale to Fit (Inner Fit)", 1):  # fmt: skip
        assert ids(world, resize_mode=same) == base, same
    (cn,) = json.loads(plan(world, [unit()]).jobs[0].control.key())["cn"]
    assert len(cn) == 6 and cn[-1] == "Balanced"  # the key as it was before resize_mode
    just, fill = ids(world, resize_mode="Just Resize"), ids(world, resize_mode="Resize and Fill")
    assert len({base, just, fill}) == 3
    assert ids(world, resize_mode="Envelope (Outer Fit)") == fill
    assert ids(world, resize_mode="Outer Fit (Shrink to Fit)") == fill
    assert ids(world, resize_mode="just resize") == just
    canny = plan(world, [unit(module="canny", resize_mode="Just Resize")]).jobs[0].control
    assert json.loads(canny.key())["cn"][0][-5:] == ["canny", 512, 100, 200, "Just Resize"]


def test_the_infotext_and_the_dry_run_name_the_mode(world):  # noqa: F811
    from sdbatch.plan.recipe import iter_preview

    p = plan(world, [unit(resize_mode="envelope (outer fit)")])
    assert p.jobs[0].control.units[0].resize == "Resize and Fill"
    assert ", Resize Mode: Resize and Fill, " in p.jobs[0].control.infotext()["ControlNet 0"]
    line = next(iter_preview(p.jobs, 1))
    assert line.endswith("ControlNet control_shapes (a.png, 1, Resize and Fill)")
    line = next(iter_preview(plan(world, [unit()]).jobs, 1))
    assert line.endswith("ControlNet control_shapes (a.png, 1)")  # the default: not named


@pytest.mark.parametrize("value", ["Stretch", "Crop", 7, True, ""])
def test_a_bad_resize_mode_is_one_line_naming_the_field_and_the_three(world, value):  # noqa: F811
    with pytest.raises(RecipeError) as err:
        plan(world, [unit(), unit(resize_mode=value)])
    text = str(err.value)
    assert text.startswith("controlnet[1].resize_mode: ") and "\n" not in text
    assert repr(value) in text or str(value) in text
    assert text.endswith("one of Just Resize, Crop and Resize, Resize and Fill")


def test_replay_maps_the_two_other_modes_back_and_warns_for_an_unknown_one():
    from sdbatch.views.replay import recipe_from_infotext

    for written, want in (("Just Resize", "Just Resize"), ("Resize and Fill", "Resize and Fill"),
                          ("Envelope (Outer Fit)", "Resize and Fill")):  # fmt: skip
        text = A1111_TEXT.replace("Mode: Crop and Resize", f"Mode: {written}", 1)
        out = recipe_from_infotext(text, "cn")
        assert out.values["controlnet"][0]["resize_mode"] == want
        assert "resize_mode" not in out.values["controlnet"][1]  # Crop and Resize: the default
        assert not any("Resize Mode" in w for w in out.warnings)
    odd = recipe_from_infotext(A1111_TEXT.replace("Mode: Crop and Resize", "Mode: Squash", 1), "cn")
    assert "resize_mode" not in odd.values["controlnet"][0]
    assert "not reproduced: ControlNet 0 Resize Mode: Squash (sdbatch: Crop and Resize)" in (
        odd.warnings
    )


def test_the_preprocess_tool_fits_its_output_by_the_mode(tmp_path, capsys):
    from sdbatch import tools

    pic = np.zeros((32, 64, 3), np.uint8)
    pic[:, :32] = (255, 0, 0)
    pic[:, 32:] = (0, 0, 255)
    Image.fromarray(pic).save(tmp_path / "in.png")

    def tool(*argv: str) -> int:
        with pytest.raises(SystemExit) as exc:
            tools.main(["preprocess", str(tmp_path / "in.png"), "--module", "none", *argv])
        return exc.value.code

    for mode in RESIZE_MODES:
        out = tmp_path / f"{mode}.png"
        assert tool("-o", str(out), "--size", "32x32", "--resize-mode", mode.lower()) == 0
        assert f"(32x32, module none, {mode})" in capsys.readouterr().out
        want = resize_condition(mode, Image.fromarray(pic), 32, 32)
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))
    fill = np.asarray(Image.open(tmp_path / "Resize and Fill.png"))
    assert tuple(fill[0, 0]) == (127, 0, 127)  # the median of the red and blue border
    assert tool("-o", str(tmp_path / "x.png"), "--size", "32x32", "--resize-mode", "Fit") == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --resize-mode: 'Fit' is not allowed; one of Just Resize, Crop and Resize, "
        "Resize and Fill\n"
    )
    assert tool("-o", str(tmp_path / "x.png"), "--resize-mode", "Just Resize") == 2
    assert "given with --size WxH" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
