"""Replay of every ControlNet infotext layout the extension has written (2023's lower-case
``ControlNet 0: "preprocessor: ..."``, the flat ``ControlNet-0 Module`` fields, the single-unit
``ControlNet Module`` ones): each gives the units the current layout gives, with the same
warnings. Pure and fast (well under a second)."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdbatch.outputs.infotext import parse_infotext
from sdbatch.views.replay import recipe_from_infotext

HEAD = (
    "masterpiece, a castle on a hill, (sunset:1.2), <lora:detail:0.5>\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4)\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3141592, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, "
    "Clip skip: 2, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent, "
)
CURRENT = HEAD + (
    'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, '
    "Resize Mode: Resize and Fill, Processor Res: 384, Threshold A: 50, Threshold B: 150, "
    "Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: True, Control Mode: My prompt is "
    'more important", ControlNet 1: "Module: depth_midas, Model: control_v11f1p_sd15_depth '
    "[cfd03158], Weight: 1, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: -1, "
    "Threshold B: -1, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: "
    'Balanced", Version: v1.6.0'
)
# May to August 2023: lower-case keys, two tuples
LOWER_0 = (
    '"preprocessor: canny, model: control_v11p_sd15_canny [d14c016b], weight: 0.8, '
    "starting/ending: (0.1, 0.9), resize mode: Resize and Fill, pixel perfect: True, control "
    'mode: My prompt is more important, preprocessor params: (384, 50, 150)"'
)
LOWER = HEAD + (
    f"ControlNet 0: {LOWER_0}, "
    'ControlNet 1: "preprocessor: depth_midas, model: control_v11f1p_sd15_depth [cfd03158], '
    "weight: 1, starting/ending: (0, 1), resize mode: Crop and Resize, pixel perfect: False, "
    'control mode: Balanced, preprocessor params: (512, -1, -1)", Version: v1.3.2'
)
# late April 2023: flat fields, "ControlNet 0 ..."
SPACED = HEAD + (
    "ControlNet 0 Enabled: True, ControlNet 0 Preprocessor: canny, ControlNet 0 Model: "
    "control_v11p_sd15_canny [d14c016b], ControlNet 0 Weight: 0.8, ControlNet 0 Starting Step: "
    "0.1, ControlNet 0 Ending Step: 0.9, ControlNet 0 Resize Mode: Resize and Fill, "
    "ControlNet 0 Pixel Perfect: True, ControlNet 0 Control Mode: My prompt is more important, "
    'ControlNet 0 Preprocessor Parameters: "(384, 50, 150)", ControlNet 1 Enabled: True, '
    "ControlNet 1 Preprocessor: depth_midas, ControlNet 1 Model: control_v11f1p_sd15_depth "
    "[cfd03158], ControlNet 1 Weight: 1, ControlNet 1 Starting Step: 0, ControlNet 1 Ending "
    "Step: 1, ControlNet 1 Resize Mode: Crop and Resize, ControlNet 1 Pixel Perfect: False, "
    'ControlNet 1 Control Mode: Balanced, ControlNet 1 Preprocessor Parameters: "(512, -1, -1)"'
)
# March 2023: flat fields, "ControlNet-0 ...", no settings, modes or resize mode
DASHED = HEAD + (
    "ControlNet-0 Enabled: True, ControlNet-0 Module: canny, ControlNet-0 Model: "
    "control_sd15_canny [fef5e48e], ControlNet-0 Weight: 0.8, ControlNet-0 Guidance Start: 0.1, "
    "ControlNet-0 Guidance End: 0.9, ControlNet-1 Enabled: True, ControlNet-1 Module: "
    "depth, ControlNet-1 Model: control_sd15_depth [fef5e48e], ControlNet-1 Weight: 1, "
    "ControlNet-1 Guidance Start: 0, ControlNet-1 Guidance End: 1"
)
# the same units in today's layout, with what the old ones leave out at its defaults
DASHED_NOW = HEAD + (
    'ControlNet 0: "Module: canny, Model: control_sd15_canny [fef5e48e], Weight: 0.8, Resize '
    "Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance "
    'Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, Control Mode: Balanced", '
    'ControlNet 1: "Module: depth, Model: control_sd15_depth [fef5e48e], Weight: 1, Resize '
    "Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance "
    'Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced"'
)
# February 2023: one unit, no index; "Guidance Strength" is where it stopped
SINGLE = HEAD + (
    "ControlNet Enabled: True, ControlNet Module: canny, ControlNet Model: control_sd15_canny "
    "[fef5e48e], ControlNet Weight: 0.8, ControlNet Guidance Strength: 0.9"
)
SINGLE_NOW = HEAD + (
    'ControlNet 0: "Module: canny, Model: control_sd15_canny [fef5e48e], Weight: 0.8, Resize '
    "Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance "
    'Start: 0, Guidance End: 0.9, Pixel Perfect: False, Control Mode: Balanced"'
)


def _cn(warnings: list[str]) -> list[str]:
    """The ControlNet warnings with the unit's label made the current layout's."""
    out = []
    for w in warnings:
        for old, new in (("ControlNet-", "ControlNet "), ("ControlNet:", "ControlNet 0:")):
            w = w.replace(old, new)
        if "ControlNet" in w:
            out.append(w.replace("ControlNet 0: the infotext does not say", "ControlNet: the"))
    return out


def test_the_parser_keeps_each_layouts_units_whole():
    p = parse_infotext(LOWER).params
    assert p["ControlNet 0"].startswith("preprocessor: canny, model: control_v11p_sd15_canny")
    assert p["ControlNet 0"].endswith("preprocessor params: (384, 50, 150)")
    assert p["Version"] == "v1.3.2" and p["Steps"] == "28" and p["Hires upscaler"] == "Latent"
    assert parse_infotext(LOWER).negative_prompt == "lowres, bad anatomy, (worst quality:1.4)"
    p = parse_infotext(SPACED).params
    assert p["ControlNet 0 Preprocessor Parameters"] == "(384, 50, 150)"
    assert p["ControlNet 1 Ending Step"] == "1"
    p = parse_infotext(DASHED).params
    assert p["ControlNet-1 Model"] == "control_sd15_depth [fef5e48e]"
    assert parse_infotext(SINGLE).params["ControlNet Guidance Strength"] == "0.9"
    lines = parse_infotext(LINES)
    assert lines.params == parse_infotext(LOWER).params and len(LINES.splitlines()) == 5
    assert lines.prompt == parse_infotext(LOWER).prompt
    assert lines.negative_prompt == parse_infotext(LOWER).negative_prompt
    # a prompt whose last lines merely look like units stays prompt
    text = 'a cat, style: x,\nControlNet: "a, b: c"\nControlNet 1: "d"'
    assert parse_infotext(text).prompt == text and parse_infotext(text).params == {}


# May 2023: the same, each unit's key starting with a line break (a line per unit)
LINES = LOWER.replace("ControlNet 0: ", "\nControlNet 0: ").replace(
    "ControlNet 1", "\nControlNet 1"
)


@pytest.mark.parametrize(
    "old, now",
    [(LOWER, CURRENT), (LINES, CURRENT), (SPACED, CURRENT), (DASHED, DASHED_NOW),
     (SINGLE, SINGLE_NOW)],
    ids=["lower-case", "lower-case-lines", "spaced-flat", "dashed-flat", "single"],
)  # fmt: skip
def test_each_layout_replays_to_the_units_the_current_one_gives(old, now):
    want, got = recipe_from_infotext(now, "r"), recipe_from_infotext(old, "r")
    assert got.values["controlnet"] == want.values["controlnet"]
    assert got.values == want.values
    assert yaml.safe_load(got.to_yaml())["controlnet"] == want.values["controlnet"]
    extra = "the infotext does not give canny's settings"
    mine = [w for w in _cn(got.warnings) if extra not in w]
    assert mine == _cn(want.warnings)
    assert any(extra in w for w in got.warnings) == (old in (DASHED, SINGLE))
    assert not any("ControlNet" in c for c in got.comments)  # all mapped, no comments


def test_the_units_are_what_the_infotext_says():
    units = recipe_from_infotext(LOWER, "r").values["controlnet"]
    assert units == [
        {"model": "control_v11p_sd15_canny", "image": None, "weight": 0.8,
         "guidance_start": 0.1, "guidance_end": 0.9, "module": "canny", "processor_res": 384,
         "threshold_a": 50, "threshold_b": 150, "pixel_perfect": True,
         "control_mode": "My prompt is more important", "resize_mode": "Resize and Fill"},
        {"model": "control_v11f1p_sd15_depth", "image": None, "weight": 1.0,
         "guidance_start": 0.0, "guidance_end": 1.0},
    ]  # fmt: skip
    warnings = recipe_from_infotext(LOWER, "r").warnings
    assert not any("Pixel Perfect" in w or "pixel perfect" in w for w in warnings)
    assert any(w.startswith("ControlNet 1: Module depth_midas is not built in") for w in warnings)
    single = recipe_from_infotext(SINGLE, "r").values["controlnet"]
    assert single == [{"model": "control_sd15_canny", "image": None, "weight": 0.8,
                       "guidance_start": 0.0, "guidance_end": 0.9, "module": "canny",
                       "processor_res": 512, "threshold_a": 100, "threshold_b": 200}]  # fmt: skip


def test_unknown_and_interpolation_looking_values_are_warnings():
    odd = LOWER.replace("weight: 0.8", "weight: ${oc.env:HOME}").replace(
        "control mode: Balanced", "control mode: Balanced, guess mode: True"
    )
    odd = odd.replace("starting/ending: (0, 1)", "starting/ending: (0, ${x})")
    odd = odd.replace("resize mode: Resize and Fill", "resize mode: ResizeMode.OUTER_FIT")
    odd = odd.replace("params: (384, 50, 150)", "params: (384, 50)")
    out = recipe_from_infotext(odd, "r")
    first, second = out.values["controlnet"]
    assert "weight" not in first and first["resize_mode"] == "Resize and Fill"
    assert (first["processor_res"], first["threshold_a"]) == (512, 100)  # the defaults
    assert "not reproduced: ControlNet 0 preprocessor params: (384, 50)" in out.warnings
    assert second["guidance_start"] == 0 and "guidance_end" not in second
    assert "not reproduced: ControlNet 0 Weight: ${oc.env:HOME}" in out.warnings
    assert "not reproduced: ControlNet 1 Guidance End: ${x}" in out.warnings
    assert (
        "not reproduced: ControlNet 1 guess mode: True (not a ControlNet field sdbatch knows)"
        in out.warnings
    )
    assert "${" not in out.to_yaml().split("controlnet:")[1].splitlines()[0]
    flat = recipe_from_infotext(
        DASHED + ", ControlNet-0 Annotator: hed, ControlNet-1 Enabled: False", "r"
    )
    assert [u["model"] for u in flat.values["controlnet"]] == ["control_sd15_canny"]
    assert "not reproduced: ControlNet-1 (Enabled: False: it did not run)" in flat.warnings
    assert any(w.startswith("not reproduced: ControlNet-0 Annotator: hed") for w in flat.warnings)
    assert "not reproduced: ControlNet-0 Annotator: hed" in flat.comments
    mode = recipe_from_infotext(SINGLE + ", ControlNet Control Mode: ControlMode.CONTROL", "r")
    assert mode.values["controlnet"][0]["control_mode"] == "ControlNet is more important"


def test_the_replay_tool_reads_a_png_of_the_lower_case_layout(tmp_path, capsys):
    from sdbatch import tools

    info = PngInfo()
    info.add_text("parameters", HEAD + f"ControlNet: {LOWER_0}, Version: v1.3.2")  # one unit
    Image.new("RGB", (8, 8)).save(tmp_path / "civitai.png", pnginfo=info)
    out = tmp_path / "again.yaml"
    with pytest.raises(SystemExit) as exc:
        tools.main(["replay", str(tmp_path / "civitai.png"), "-o", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code in (0, None), err
    recipe = yaml.safe_load(out.read_text())
    assert recipe["controlnet"] == [
        {"model": "control_v11p_sd15_canny", "image": None, "weight": 0.8,
         "guidance_start": 0.1, "guidance_end": 0.9, "module": "canny", "processor_res": 384,
         "threshold_a": 50, "threshold_b": 150, "pixel_perfect": True,
         "control_mode": "My prompt is more important", "resize_mode": "Resize and Fill"},
    ]  # fmt: skip
    assert "set each controlnet unit's image" in err
    assert "Pixel Perfect" not in err and "pixel perfect" not in err


def test_the_current_extensions_fields_that_decide_no_pixels_are_read_quietly():
    """Today's extension adds Low Vram, Hr Option and Save Detected Map to each unit: the first
    and last decide no pixels, Hr Option "Both" is what sdbatch does; other Hr Options warn."""
    extra = ', Low Vram: False, Hr Option: Both, Save Detected Map: True"'
    now = CURRENT.replace('Control Mode: Balanced"', "Control Mode: Balanced" + extra)
    assert now != CURRENT
    quiet, plain = recipe_from_infotext(now, "r"), recipe_from_infotext(CURRENT, "r")
    assert quiet.values["controlnet"] == plain.values["controlnet"]
    assert quiet.warnings == plain.warnings
    low = recipe_from_infotext(now.replace("Hr Option: Both", "Hr Option: Low res only"), "r")
    assert "not reproduced: ControlNet 1 Hr Option: Low res only (sdbatch: Both)" in low.warnings


def test_pixel_perfect_is_the_units_pixel_perfect_and_with_module_none_left_out():
    """Today's layout: Pixel Perfect: True on canny is pixel_perfect: true (no warning); on
    Module: none it changes nothing in the extension, so the recipe leaves it out; a value
    that is neither True nor False is a warning."""
    out = recipe_from_infotext(CURRENT, "r")
    canny = out.values["controlnet"][0]
    assert canny["pixel_perfect"] is True and canny["processor_res"] == 384
    assert not any("Pixel Perfect" in w for w in out.warnings)
    assert "pixel_perfect: true" in out.to_yaml()
    off = recipe_from_infotext(CURRENT.replace("Pixel Perfect: True", "Pixel Perfect: False"), "r")
    assert "pixel_perfect" not in off.values["controlnet"][0]
    none = CURRENT.replace("Module: canny", "Module: none")
    got = recipe_from_infotext(none, "r")
    assert "pixel_perfect" not in got.values["controlnet"][0]
    assert "module" not in got.values["controlnet"][0]
    assert not any("Pixel Perfect" in w for w in got.warnings)
    odd = recipe_from_infotext(CURRENT.replace("Pixel Perfect: True", "Pixel Perfect: 2"), "r")
    assert "pixel_perfect" not in odd.values["controlnet"][0]
    assert "not reproduced: ControlNet 0 Pixel Perfect: 2 (sdbatch: False)" in odd.warnings
