"""Infotext must read and write exactly what AUTOMATIC1111 does, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdbatch.outputs.infotext import (
    Infotext,
    format_infotext,
    parse_infotext,
    parse_size,
    png_info,
    read_png_infotext,
    sampler_name,
)

SAMPLES_FILE = Path(__file__).resolve().parents[1] / "data" / "a1111-infotext-samples.txt"


def load_samples() -> list[str]:
    """Samples are separated by a "----" line; leading "#" lines are a header comment."""
    lines = SAMPLES_FILE.read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    samples, current = [], []
    for line in lines:
        if line == "----":
            samples.append("\n".join(current))
            current = []
        else:
            current.append(line)
    samples.append("\n".join(current))
    return samples


SAMPLES = load_samples()

# (prompt, negative prompt, some params) per sample, in file order; the first sample's long
# prompts are given by their start here and checked further in test_first_sample_in_detail.
EXPECTED = [
    (
        "(best quality), (masterpiece), (high resolution), (1boy:1.3)",
        None,  # long; checked by its start below
        {
            "Steps": "20",
            "Sampler": "DPM++ SDE Karras",
            "CFG scale": "7",
            "Seed": "3120790884",
            "Size": "512x512",
            "Model hash": "7f96a1a9ca",
            "Model": "AnythingV5V3_v5PrtRE",
        },
    ),
    (
        "1girl, solo, black hair, long hair, dreadlocks, looking at viewer",
        "lowres, bad anatomy",
        {
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": "7.5",
            "Seed": "1234567890",
            "Size": "512x768",
            "Denoising strength": "0.5",
            "Hires upscaler": "Latent",
            "Version": "v1.10.1",
        },
    ),
    (
        "a cat sitting on a windowsill, golden hour",
        "",
        {
            "Sampler": "Euler a",
            "Seed": "42",
            "Variation seed strength": "0.1",
            "Clip skip": "2",
            "ENSD": "31337",
        },
    ),
    (
        "masterpiece, best quality, 1girl, <lora:add_detail:0.6>, easynegative",
        "easynegative, (worst quality:1.4)",
        {
            "Sampler": "DPM++ 2M SDE Karras",
            "CFG scale": "6",
            "Size": "768x512",
            "VAE": "kl-f8-anime2.ckpt",
            "Lora hashes": "add_detail: 7c6bad76eb54",
            "TI hashes": "easynegative: c74b4e810b03",
            "Emphasis": "No norm",
        },
    ),
    (
        "검은 머리, 긴 머리, (드레드락:1.2), 미소\na second prompt line",
        "저화질, (나쁜 손:1.3)",
        {"Sampler": "DDIM", "CFG scale": "11", "Seed": "0", "Size": "512x828", "RNG": "CPU"},
    ),
    (
        "a photo of an astronaut riding a horse",
        "",
        {
            "Seed": "4294967295",
            "Size": "1024x1024",
            "Prompt S/R": "horse, zebra",
            "Version": "f2.0.1v1.10.1-previous-313-g8a042934",
        },
    ),
]


def test_samples_file_holds_every_expected_sample():
    assert len(SAMPLES) == len(EXPECTED)


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_sample_parses_to_the_right_fields(index):
    prompt, negative, params = EXPECTED[index]
    info = parse_infotext(SAMPLES[index])
    if negative is None:
        assert info.prompt.startswith(prompt)
        assert "Negative prompt" not in info.prompt
    else:
        assert info.prompt == prompt
        assert info.negative_prompt == negative
    for key, value in params.items():
        assert info.params[key] == value, key
    assert all(isinstance(v, str) for v in info.params.values())


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_sample_round_trips_byte_exactly(index):
    assert parse_infotext(SAMPLES[index]).to_text() == SAMPLES[index]


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_crlf_line_endings_parse_the_same(index):
    assert parse_infotext(SAMPLES[index].replace("\n", "\r\n")) == parse_infotext(SAMPLES[index])


def test_first_sample_in_detail():
    info = parse_infotext(SAMPLES[0])
    assert info.prompt.endswith("silver plate armor, blue jean, blue eyes")
    assert info.negative_prompt.startswith("lowres, ((bad anatomy)), ((bad hands)), text")
    assert info.negative_prompt.endswith("((jpeg artifacts)), ((nsfw))")
    assert list(info.params) == [
        "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model",
    ]  # fmt: skip


def test_unknown_keys_are_kept_in_order():
    info = parse_infotext(SAMPLES[1])
    assert list(info.params)[-5:] == [
        "Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler", "Version",
    ]  # fmt: skip


def test_quoted_values_are_written_as_json():
    line = format_infotext(
        "p",
        "",
        {"Lora hashes": "add_detail: 7c6bad76eb54", "Prompt S/R": "horse, zebra", "N": "a\nb"},
    ).split("\n")[1:]
    assert line == [
        r'Lora hashes: "add_detail: 7c6bad76eb54", Prompt S/R: "horse, zebra", N: "a\nb"'
    ]


def test_non_ascii_stays_readable_when_quoted():
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Styles": "검은, 머리 🎨"})
    assert text.endswith('Styles: "검은, 머리 🎨"')
    assert parse_infotext(text).params["Styles"] == "검은, 머리 🎨"


def test_values_with_quotes_and_backslashes_round_trip():
    tricky = ['say "hi", then: go', "C:\\models\\x.safetensors", '"already quoted"', "a\r\nb"]
    params = {"Steps": 20, "Seed": 1, **{f"K{i}": v for i, v in enumerate(tricky)}}
    info = parse_infotext(format_infotext("p", "n", params))
    assert [info.params[f"K{i}"] for i in range(len(tricky))] == tricky


def test_numbers_are_formatted_like_a1111():
    text = format_infotext(
        "a cat",
        "",
        {
            "Steps": 20,
            "Sampler": "Euler a",
            "CFG scale": 7.0,
            "Seed": 42,
            "Size": "512x512",
            "Clip skip": None,
            "Denoising strength": 0.5,
            "Hires upscale": 2.0,
            "Tiling": True,
        },
    )
    assert text == (
        "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, "
        "Denoising strength: 0.5, Hires upscale: 2, Tiling: True"
    )
    assert format_infotext("x", "", {"A": 7.5, "B": 0.1, "C": 3120790884}).endswith(
        "A: 7.5, B: 0.1, C: 3120790884"
    )


def test_negative_prompt_line_is_left_out_when_empty():
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Size": "8x8"})
    assert text == "p\nSteps: 1, Seed: 2, Size: 8x8"
    text = format_infotext("p\nq", "n\nm", {"Steps": 1, "Seed": 2, "Size": "8x8"})
    assert text == "p\nq\nNegative prompt: n\nm\nSteps: 1, Seed: 2, Size: 8x8"
    assert parse_infotext(text) == Infotext(
        "p\nq", "n\nm", {"Steps": "1", "Seed": "2", "Size": "8x8"}
    )


def test_last_line_with_fewer_than_three_pairs_stays_in_the_prompt():
    text = "a castle on a hill\nstyle: anime, mood: calm"
    info = parse_infotext(text)
    assert info == Infotext(text, "", {})
    assert info.to_text() == text

    text = "a castle\nNegative prompt: blurry\nstyle: anime, mood: calm"
    info = parse_infotext(text)
    assert (info.prompt, info.negative_prompt, info.params) == (
        "a castle",
        "blurry\nstyle: anime, mood: calm",
        {},
    )
    assert info.to_text() == text


def test_params_only_and_empty_text():
    assert parse_infotext("Steps: 1, Seed: 2, Size: 8x8") == Infotext(
        "", "", {"Steps": "1", "Seed": "2", "Size": "8x8"}
    )
    assert parse_infotext("") == Infotext("", "", {})
    info = Infotext("", "only negative", {"Steps": "1", "Seed": "2", "Size": "8x8"})
    assert parse_infotext(info.to_text()) == info


def test_bare_flag_is_written_as_a1111_does_and_kept_on_parse():
    text = format_infotext(
        "p", "", {"Steps": 20, "Seed": 1, "Size": "8x8", "Hires fix": "Hires fix"}
    )
    assert text.endswith("Size: 8x8, Hires fix")
    assert parse_infotext(text).params["Hires fix"] == "Hires fix"
    assert parse_infotext(text).to_text() == text


def test_key_that_cannot_be_read_back_is_refused():
    with pytest.raises(ValueError):
        format_infotext("p", "", {"bad, key": 1})


def test_parse_size():
    assert parse_size("512x768") == (512, 768)
    assert parse_size(parse_infotext(SAMPLES[4]).params["Size"]) == (512, 828)
    with pytest.raises(ValueError):
        parse_size("512 by 768")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"Sampler": "DPM++ 2M", "Schedule type": "Karras"}, "DPM++ 2M Karras"),
        ({"Sampler": "DPM++ SDE Karras"}, "DPM++ SDE Karras"),
        ({"Sampler": "Euler a", "Schedule type": "Automatic"}, "Euler a"),
        ({"Sampler": "DPM++ 2M SDE", "Schedule type": "Exponential"}, "DPM++ 2M SDE Exponential"),
        ({"Sampler": "DPM++ 2M Karras", "Schedule type": "Karras"}, "DPM++ 2M Karras"),
        ({}, ""),
    ],
)
def test_sampler_name_from_both_layouts(params, expected):
    assert sampler_name(params) == expected


def test_sampler_name_of_samples():
    names = [sampler_name(parse_infotext(s).params) for s in SAMPLES]
    assert names[:2] == ["DPM++ SDE Karras", "DPM++ 2M Karras"]


def test_png_keeps_korean_and_emoji_exactly(tmp_path):
    from PIL import Image

    text = format_infotext(
        "검은 머리, 미소 😀🎨\n두 번째 줄", "저화질", {"Steps": 20, "CFG scale": 7.0, "Seed": 1}
    )
    path = tmp_path / "out.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=png_info(text))
    assert b"iTXtparameters" in path.read_bytes()
    assert read_png_infotext(path) == text
    assert parse_infotext(read_png_infotext(path)).prompt == "검은 머리, 미소 😀🎨\n두 번째 줄"


def test_png_reads_a1111_style_text_chunk_and_missing_one(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", SAMPLES[0])  # ASCII: Pillow writes tEXt, as A1111 does
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert b"tEXtparameters" in path.read_bytes()
    assert read_png_infotext(path) == SAMPLES[0]

    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    assert read_png_infotext(bare) is None


def test_json_quoting_matches_json_dumps():
    value = "a, b: c"
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "X": value})
    assert text.endswith("X: " + json.dumps(value, ensure_ascii=False))


# --- what sdbatch writes: A1111 1.10's Sampler / Schedule type split --------------------------


def _our_params(**cfg) -> dict[str, str]:
    from sdbatch.outputs.record import infotext_for
    from sdbatch.plan.recipe import build_plan
    from tests.conftest import quick_cfg

    job = build_plan(quick_cfg(prompt="a red circle", seeds=1, steps=20, **cfg)).jobs[0]
    return parse_infotext(infotext_for(job)).params


@pytest.mark.parametrize(
    ("cfg", "sampler", "schedule_type"),
    [
        ({"sampler": "DPM++ 2M Karras"}, "DPM++ 2M", "Karras"),
        ({"sampler": "DPM++ 2M"}, "DPM++ 2M", "Karras"),  # Automatic, as A1111 1.9+ runs it
        ({"sampler": "DPM++ 2M", "schedule_type": "Uniform"}, "DPM++ 2M", "Uniform"),
        ({"sampler": "Euler a"}, "Euler a", "Uniform"),
        ({"sampler": "Euler", "schedule_type": "Align Your Steps"}, "Euler", "Align Your Steps"),
        ({"sampler": "DPM++ 2M SDE"}, "DPM++ 2M SDE", "Exponential"),
        ({"sampler": "DDIM", "schedule_type": "Karras"}, "DDIM", "Automatic"),  # own timesteps
        ({"sampler": "LCM"}, "LCM", "Automatic"),
    ],
)
def test_sampler_and_schedule_type_are_written_as_a1111_110_writes_them(
    cfg, sampler, schedule_type
):
    params = _our_params(**cfg)
    assert (params["Sampler"], params["Schedule type"]) == (sampler, schedule_type)
    # A1111 1.10's create_infotext order: Schedule type right after Sampler
    assert list(params)[:8] == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    ]  # fmt: skip


def test_our_new_infotext_still_reads_as_the_old_combined_name():
    assert sampler_name(_our_params(sampler="DPM++ 2M Karras")) == "DPM++ 2M Karras"
    assert sampler_name(_our_params(sampler="DDIM")) == "DDIM"


def test_both_layouts_read_back_as_the_same_sampler():
    """Old (A1111 < 1.9, sdbatch before schedule types) and new infotexts of one schedule."""
    from sdbatch.plan.samplers import from_infotext

    def read(params):
        return from_infotext(params["Sampler"], params.get("Schedule type"), params.get("Version"))

    new = _our_params(sampler="DPM++ 2M Karras")
    old = {"Sampler": "DPM++ 2M Karras", "Version": "sdbatch 0.1.0"}
    assert read(new) == read(old) == read({"Sampler": "DPM++ 2M", "Schedule type": "Automatic"})
    uniform = _our_params(sampler="DPM++ 2M", schedule_type="Uniform")
    assert read(uniform) == read({"Sampler": "DPM++ 2M", "Version": "v1.8.0"})
    assert read(uniform).name == "DPM++ 2M"
    names = [read(parse_infotext(s).params).name for s in SAMPLES]
    assert names == [
        "DPM++ SDE Karras", "DPM++ 2M Karras", "Euler a", "DPM++ 2M SDE Karras", "DDIM", "UniPC",
    ]  # fmt: skip
