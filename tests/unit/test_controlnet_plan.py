"""ControlNet units in the plan: validation, sweeps and matching, job ids, infotext text."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from sdbatch.errors import RecipeError
from sdbatch.plan.controlnet import a1111_short_hash
from sdbatch.plan.recipe import build_plan
from tests.conftest import quick_cfg


def weights(path: Path, salt: str = "") -> Path:
    """A whole safetensors file (one claimed tensor)."""
    header = {
        "__metadata__": {"salt": salt},
        "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
    }
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0")
    return path


def picture(path: Path, colour: str = "white") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


@pytest.fixture
def world(tmp_path):
    weights(tmp_path / "cn" / "control_shapes.safetensors")
    weights(tmp_path / "cn" / "other.safetensors", "2")
    picture(tmp_path / "cond" / "a.png", "white")
    picture(tmp_path / "cond" / "b.png", "black")
    picture(tmp_path / "pics" / "a.png", "red")
    picture(tmp_path / "pics" / "b.png", "blue")
    return tmp_path


def plan(world, units, **over):
    cfg = quick_cfg(folders={"controlnet": str(world / "cn")}, controlnet=units, **over)
    return build_plan(cfg, recipe_dirs=[world])


def unit(**over):
    return {"model": "control_shapes", "image": "cond/a.png", **over}


def test_without_units_ids_are_unchanged(world):
    plain = build_plan(quick_cfg(), recipe_dirs=[world])
    empty = plan(world, [])
    assert [j.job_id for j in plain.jobs] == [j.job_id for j in empty.jobs]
    assert all(j.control is None for j in empty.jobs)


def test_a_unit_joins_the_id_with_its_weight_window_and_file_hashes(world):
    plain = {j.job_id for j in build_plan(quick_cfg(), recipe_dirs=[world]).jobs}
    ids = {}
    for name, u in {
        "base": unit(),
        "weight": unit(weight=0.5),
        "start": unit(guidance_start=0.2),
        "end": unit(guidance_end=0.8),
        "image": unit(image="cond/b.png"),
        "model": unit(model="other"),
        "prompt": unit(control_mode="My prompt is more important"),
        "control": unit(control_mode="controlnet is more important"),  # any letter case
    }.items():
        ids[name] = tuple(j.job_id for j in plan(world, [u]).jobs)
    assert len(set(ids.values())) == len(ids)
    assert not plain & {i for v in ids.values() for i in v}
    again = tuple(j.job_id for j in plan(world, [unit()]).jobs)
    assert again == ids["base"]
    balanced = tuple(j.job_id for j in plan(world, [unit(control_mode="balanced")]).jobs)
    assert balanced == ids["base"]  # the default mode spelled out: the same jobs
    # the mode is in the key only as a unit's last entry, "Balanced" as jobs always had it
    (cn,) = json.loads(plan(world, [unit()]).jobs[0].control.key())["cn"]
    assert cn[-1] == "Balanced" and len(cn) == 6
    control = plan(world, [unit(control_mode="ControlNet is more important")]).jobs[0].control
    assert control.units[0].mode == "ControlNet is more important"
    assert control.infotext()["ControlNet 0"].endswith("Control Mode: ControlNet is more important")


def test_editing_a_condition_image_changes_only_its_jobs(world):
    before = plan(world, [unit(image="cond")])
    picture(world / "cond" / "b.png", "grey")
    after = plan(world, [unit(image="cond")])
    changed = {
        b.control.units[0].image
        for b, a in zip(before.jobs, after.jobs, strict=True)
        if b.job_id != a.job_id
    }
    assert changed == {str(world / "cond" / "b.png")}


def test_a_folder_of_condition_images_is_swept_and_matched_to_init_images_by_stem(world):
    swept = plan(world, [unit(image="cond")])
    assert len(swept.jobs) == 2 * 2 * 2  # prompts x seeds x condition images
    matched = plan(world, [unit(image="cond")], init_images="pics", denoise=0.5)
    assert len(matched.jobs) == 2 * 2 * 2  # prompts x seeds x pictures (not x 2 conditions)
    for j in matched.jobs:
        assert Path(j.control.units[0].image).stem == Path(j.image.file.path).stem
    listed = plan(world, [unit(image="cond/*.png")], init_images="pics", denoise=0.5)
    assert len(listed.jobs) == 2 * 2 * 2 * 2  # a glob is swept


def test_several_units_multiply_and_share_a_batch(world):
    p = plan(world, [unit(image="cond"), unit(model="other", weight=0.3)], batch_size=16)
    assert len(p.jobs) == 8 and len(p.batches) == 1
    assert [u.model for u in p.jobs[0].control.units] == ["control_shapes", "other"]


def test_the_infotext_unit_text_is_the_extensions(world):
    p = plan(world, [unit(weight=0.5, guidance_end=0.8)])
    h = a1111_short_hash(world / "cn" / "control_shapes.safetensors")
    assert len(h) == 8
    assert p.jobs[0].control.infotext() == {
        "ControlNet 0": (
            f"Module: none, Model: control_shapes [{h}], Weight: 0.5, Resize Mode: Crop and "
            "Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, "
            "Guidance End: 0.8, Pixel Perfect: False, Control Mode: Balanced"
        )
    }


def test_a_canny_unit_joins_the_id_with_its_settings_and_none_keeps_the_old_id(world):
    base = tuple(j.job_id for j in plan(world, [unit()]).jobs)
    assert tuple(j.job_id for j in plan(world, [unit(module="none")]).jobs) == base
    ids = {
        name: tuple(j.job_id for j in plan(world, [unit(module="canny", **over)]).jobs)
        for name, over in {
            "default": {},
            "a": {"threshold_a": 50},
            "b": {"threshold_b": 150},
            "res": {"processor_res": 256},
            "pixel perfect": {"pixel_perfect": True},
        }.items()
    }
    assert len({base, *ids.values()}) == 6
    same = plan(world, [unit(module="canny", threshold_a=100, threshold_b=200)])
    assert tuple(j.job_id for j in same.jobs) == ids["default"]  # the defaults, written out
    off = plan(world, [unit(module="canny", pixel_perfect=False)])
    assert tuple(j.job_id for j in off.jobs) == ids["default"]  # off: the ids of before
    assert tuple(j.job_id for j in plan(world, [unit(pixel_perfect=False)]).jobs) == base


def test_a_canny_units_infotext_manifest_entry_and_dry_run_line(world):
    from sdbatch.plan.recipe import iter_preview

    p = plan(world, [unit(module="Canny", threshold_a=50, processor_res=256)])
    h = a1111_short_hash(world / "cn" / "control_shapes.safetensors")
    assert p.jobs[0].control.infotext()["ControlNet 0"] == (
        f"Module: canny, Model: control_shapes [{h}], Weight: 1.0, Resize Mode: Crop and "
        "Resize, Processor Res: 256, Threshold A: 50, Threshold B: 200, Guidance Start: 0.0, "
        "Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"
    )
    assert p.jobs[0].control.columns()[0]["module"] == "canny"
    assert plan(world, [unit()]).jobs[0].control.columns()[0]["module"] == "none"
    line = next(iter_preview(p.jobs, 1))
    assert line.endswith("ControlNet control_shapes (a.png, 1, canny 50/200 at 256)")
    pp = plan(world, [unit(module="canny", threshold_a=50, processor_res=256, pixel_perfect=True)])
    assert pp.jobs[0].control.infotext()["ControlNet 0"] == p.jobs[0].control.infotext()[
        "ControlNet 0"
    ].replace("Pixel Perfect: False", "Pixel Perfect: True")
    line = next(iter_preview(pp.jobs, 1))
    assert line.endswith("ControlNet control_shapes (a.png, 1, canny 50/200 pixel perfect)")


@pytest.mark.parametrize(
    "units, field, words",
    [
        ([unit(model="control_shape")], "controlnet[0].model", "closest match: 'control_shapes'"),
        ([unit(image="cond/missing.png")], "controlnet[0].image", "not found"),
        ([unit(image=None)], "controlnet[0].image", "required"),
        ([unit(weight=3)], "controlnet[0].weight", "0..2"),
        ([unit(weight=-0.1)], "controlnet[0].weight", "0..2"),
        ([unit(guidance_start=1.5)], "controlnet[0].guidance_start", "0..1"),
        (
            [unit(guidance_start=0.8, guidance_end=0.2)],
            "controlnet[0].guidance_start",
            "guidance_end",
        ),
        (
            [unit(control_mode="Prompt")],
            "controlnet[0].control_mode",
            "one of Balanced, My prompt is more important, ControlNet is more important",
        ),
        ([unit(module="depth")], "controlnet[0].module", "none or canny"),
        ([unit(module="canny", threshold_a=256)], "controlnet[0].threshold_a", "1..255"),
        ([unit(module="canny", threshold_b=True)], "controlnet[0].threshold_b", "1..255"),
        ([unit(module="canny", processor_res=63)], "controlnet[0].processor_res", "64..2048"),
        ([unit(processor_res=512)], "controlnet[0].processor_res", "module: none"),
        (
            [unit(module="canny", pixel_perfect="maybe")],
            "controlnet[0].pixel_perfect",
            "'maybe' is not allowed; true or false",
        ),
        ([unit(module="canny", pixel_perfect=1)], "controlnet[0].pixel_perfect", "true or false"),
        ([unit(pixel_perfect=True)], "controlnet[0].pixel_perfect", "false with module: none"),
        ([unit(strength=1)], "controlnet[0].strength", "keys model, image"),
        (["nope"], "controlnet[0]", "a unit"),
    ],
)
def test_bad_units_are_one_line_naming_the_field(world, units, field, words):
    with pytest.raises(RecipeError) as err:
        plan(world, units)
    text = str(err.value)
    assert text.startswith(f"{field}:") and words in text and "\n" not in text


def test_and_is_planned_with_controlnet(world):
    jobs = plan(world, [unit()], prompt="a red circle AND a blue square").jobs
    assert jobs and all(j.prompt == "a red circle AND a blue square" for j in jobs)
    assert all(j.control is not None for j in jobs)


def test_a_model_needs_a_folder(world, monkeypatch):
    monkeypatch.delenv("SDBATCH_CONTROLNET", raising=False)
    monkeypatch.delenv("SDBATCH_A1111", raising=False)
    cfg = quick_cfg(controlnet=[unit()])
    with pytest.raises(RecipeError, match="folders.controlnet"):
        build_plan(cfg, recipe_dirs=[world])


A1111_TEXT = (
    "a red circle\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, "
    "CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'ControlNet 0: "Module: none, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.7, Resize '
    "Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance "
    'Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, Control Mode: Balanced", '
    'ControlNet 1: "Module: canny, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1, Resize '
    "Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance "
    'Start: 0, Guidance End: 1, Pixel Perfect: True, Control Mode: ControlNet is more important", '
    "Version: v1.10.1"
)


def test_replay_maps_the_extensions_units_back_and_asks_for_the_images():
    import yaml

    from sdbatch.views.replay import recipe_from_infotext

    out = recipe_from_infotext(A1111_TEXT, "cn")
    assert out.values["controlnet"] == [
        {"model": "control_v11p_sd15_canny", "image": None, "weight": 0.7,
         "guidance_start": 0.1, "guidance_end": 0.9},
        {"model": "control_v11f1p_sd15_depth", "image": None, "weight": 1.0,
         "guidance_start": 0.0, "guidance_end": 1.0, "module": "canny", "processor_res": 512,
         "threshold_a": 100, "threshold_b": 200, "pixel_perfect": True,
         "control_mode": "ControlNet is more important"},
    ]  # fmt: skip
    text = "\n".join(out.warnings)
    assert "set each controlnet unit's image" in text
    assert "Module canny is not built in" not in text
    assert "Control Mode" not in text  # mapped back: both modes the extension writes
    odd = recipe_from_infotext(A1111_TEXT.replace("ControlNet is more", "Nothing is more"), "cn")
    assert "ControlNet 1 Control Mode: Nothing is more important (sdbatch: Balanced)" in "\n".join(
        odd.warnings
    )
    assert "control_mode" not in odd.values["controlnet"][1]
    assert "Pixel Perfect" not in text  # mapped back
    depth = recipe_from_infotext(A1111_TEXT.replace("Module: canny", "Module: depth_midas"), "cn")
    assert "ControlNet 1: Module depth_midas is not built in" in "\n".join(depth.warnings)
    assert "module" not in depth.values["controlnet"][1]
    assert not any("ControlNet 0" in w for w in out.warnings)
    assert not any("ControlNet" in c for c in out.comments)  # mapped, not "not reproduced"
    assert yaml.safe_load(out.to_yaml())["controlnet"] == out.values["controlnet"]


def test_replay_of_an_interpolation_in_a_model_name_is_dropped():
    from sdbatch.views.replay import recipe_from_infotext

    text = A1111_TEXT.replace("control_v11p_sd15_canny", "${oc.env:HOME}")
    out = recipe_from_infotext(text, "cn")
    assert [u["model"] for u in out.values["controlnet"]] == ["control_v11f1p_sd15_depth"]
    assert "${" not in out.to_yaml().split("controlnet:")[1].splitlines()[0]


def test_a_diffusers_folder_is_a_model_and_its_pickle_beside_safetensors_is_not_refused(world):
    folder = world / "cn" / "tiny_folder"
    weights(folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    p = plan(world, [unit(model="tiny_folder")])
    assert p.jobs[0].control.units[0].path == str(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(RecipeError, match="allow_pickle"):
        plan(world, [unit(model="tiny_folder")])


def test_the_dry_run_preview_names_each_jobs_units(world):
    from sdbatch.plan.recipe import iter_preview

    p = plan(world, [unit(image="cond"), unit(model="other", weight=0.5)])
    lines = list(iter_preview(p.jobs, 4))
    assert lines[0].endswith("ControlNet control_shapes (a.png, 1), other (a.png, 0.5)")
    assert any("control_shapes (b.png, 1)" in ln for ln in lines)
    plain = list(iter_preview(build_plan(quick_cfg(), recipe_dirs=[world]).jobs, 1))
    assert "ControlNet" not in plain[0]


def sdxl_weights(path: Path, layout: str) -> Path:
    """A whole safetensors file whose key names are an SDXL ControlNet's (its added
    size-and-pooled-text embedding), in diffusers' layout or the original one."""
    if layout == "diffusers":
        names = ["add_embedding.linear_1.weight", "controlnet_cond_embedding.conv_in.weight"]
    else:
        names = ["control_model.label_emb.0.0.weight", "control_model.input_hint_block.0.weight"]
    header = {name: {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]} for name in names}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0")
    return path


def test_an_sdxl_controlnet_on_an_sd1_checkpoint_is_one_line_naming_the_units_model(world):
    sdxl_weights(world / "cn" / "xl_canny.safetensors", "diffusers")
    with pytest.raises(RecipeError) as err:
        plan(world, [unit(), unit(model="xl_canny")])
    text = str(err.value)
    assert text.startswith("controlnet[1].model: 'xl_canny' is not allowed; an SD 1.x ControlNet")
    assert "xl_canny is an SDXL ControlNet" in text and "\n" not in text
    folder = world / "cn" / "xl_folder"
    folder.mkdir()
    weights(folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"addition_embed_type": "text_time"}))
    with pytest.raises(RecipeError, match=r"^controlnet\[0\]\.model: 'xl_folder'"):
        plan(world, [unit(model="xl_folder")])


def test_an_sdxl_controlnet_in_the_original_layout_is_one_line_naming_the_units_model(world):
    """diffusers' converter would drop its label_emb layers: refused before anything runs."""
    sdxl_weights(world / "cn" / "xl_ldm.safetensors", "original")
    with pytest.raises(RecipeError) as err:
        plan(world, [unit(model="xl_ldm")])
    text = str(err.value)
    assert text.startswith("controlnet[0].model: 'xl_ldm' is not allowed; an SDXL ControlNet in")
    assert "diffusers' layout" in text and "label_emb" in text and "\n" not in text
