"""Replay: A1111 infotext -> a recipe that Hydra composes into exactly that one job. No torch."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import sdbatch.config as config
from sdbatch.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PATH
from sdbatch.outputs.infotext import format_infotext, parse_infotext
from sdbatch.outputs.record import infotext_for
from sdbatch.plan.generation import Hires
from sdbatch.plan.hashing import model_hash
from sdbatch.plan.recipe import build_plan
from sdbatch.plan.samplers import SAMPLERS
from sdbatch.views.replay import (
    FIELDS,
    ReplayError,
    a1111_sampler,
    default_name,
    recipe_from_infotext,
)
from tests.conftest import quick_cfg

EMBEDDED_HASH = model_hash(EMBEDDED_MODEL_PATH)

SAMPLES_FILE = Path(__file__).resolve().parents[1] / "data" / "a1111-infotext-samples.txt"


def load_samples() -> list[str]:
    """Samples are separated by a "----" line; leading "#" lines are a header comment."""
    lines = SAMPLES_FILE.read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines).split("\n----\n")


SAMPLES = load_samples()
NEG_1 = "lowres, ((bad anatomy)), ((bad hands)), text, missing finger"  # sample 1's start
NO_RNG = "no RNG field: A1111's default noise source, the GPU"  # A1111 omits RNG: GPU

# Per sample: the recipe values replay must write, and the fields it must flag.
EXPECTED = [
    (
        {
            "sampler": "DPM++ SDE Karras",
            "steps": 20,
            "cfg": 7,
            "seeds": 3120790884,
            "size": "512x512",
            "model": {"name": "AnythingV5V3_v5PrtRE"},
            "rng": "gpu",  # no RNG field
        },
        [],
    ),
    (
        {
            "prompt": "1girl, solo, black hair, long hair, dreadlocks, looking at viewer",
            "negative_prompt": "lowres, bad anatomy",
            "sampler": "DPM++ 2M Karras",  # 1.9+ layout: Sampler + Schedule type
            "steps": 25,
            "cfg": 7.5,
            "seeds": 1234567890,
            "size": "512x768",
            "model": {"name": "v1-5-pruned-emaonly"},
            "hires": {"scale": 2, "steps": 10, "upscaler": "latent", "denoise": 0.5},
            "rng": "gpu",
        },
        [],
    ),
    (
        {
            "prompt": "a cat sitting on a windowsill, golden hour",
            "negative_prompt": "",
            "sampler": "Euler a",
            "steps": 20,
            "cfg": 7,
            "seeds": 42,
            "size": "512x512",
            "model": {"name": "v1-5-pruned-emaonly", "clip_skip": 2},
            "subseed": 43,
            "subseed_strength": 0.1,
            "rng": "gpu",
        },
        ["ENSD"],
    ),
    (
        {
            "prompt": "masterpiece, best quality, 1girl, <lora:add_detail:0.6>, easynegative",
            "negative_prompt": "easynegative, (worst quality:1.4)",
            "sampler": "DPM++ 2M SDE Karras",
            "steps": 30,
            "cfg": 6,
            "seeds": 987654321,
            "size": "768x512",
            "model": {"name": "anything-v5"},
            "rng": "gpu",
        },
        ["VAE", "Emphasis"],  # Lora hashes, TI hashes: names in the LoRA, embeddings folders
    ),
    (
        {
            "prompt": "검은 머리, 긴 머리, (드레드락:1.2), 미소\na second prompt line",
            "negative_prompt": "저화질, (나쁜 손:1.3)",
            "sampler": "DDIM",
            "steps": 28,
            "cfg": 11,
            "seeds": 0,
            "size": "512x824",  # 828 is no multiple of 8: A1111's latent is 828 // 8 = 103 high
            "model": {"name": "AnythingV5V3_v5PrtRE"},
            "rng": "cpu",  # RNG: CPU
        },
        [],
    ),
    (
        {
            "prompt": "a photo of an astronaut riding a horse",
            "sampler": "UniPC",
            "steps": 50,
            "cfg": 1,
            "seeds": 4294967295,
            "size": "1024x1024",
            "model": {"name": "sd_xl_base_1.0"},
            "rng": "gpu",
        },
        ["Prompt S/R"],
    ),
]
CASES = list(range(len(EXPECTED)))


def replay(index: int):
    return recipe_from_infotext(SAMPLES[index], f"sample_{index + 1}", f"s{index + 1}.png")


def same_types(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_types(a[k], b[k]) for k in a)
    return type(a) is type(b)


@pytest.fixture
def recipes_dir(tmp_path, monkeypatch):
    """A user recipe folder in SDBATCH_RECIPES, registered in the ConfigStore, removed after."""
    monkeypatch.setenv(config.RECIPES_ENV, str(tmp_path))
    yield tmp_path
    store = ConfigStore.instance().repo.get("recipe", {})
    for path in tmp_path.glob("*.yaml"):
        store.pop(path.name, None)


def compose_recipe(folder: Path, name: str) -> dict:
    config.register_configs()  # recipes are registered at import time; ours came later
    with initialize_config_module("sdbatch.conf", version_base="1.3"):
        cfg = compose("sdbatch", overrides=[f"+recipe={name}"])
    return OmegaConf.to_container(cfg, resolve=True)


def plan_recipe(recipe, folder: Path):
    """Write the recipe, compose it as ``sdbatch +recipe=NAME`` would, and plan it."""
    (folder / f"{recipe.name}.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    return build_plan(compose_recipe(folder, recipe.name), recipe_dirs=[folder])


def expected_hires(values: dict) -> Hires | None:
    """The Hires a recipe's ``hires:`` block must plan (HiresConfig's defaults filled in)."""
    h = values.get("hires")
    if not h:
        return None
    return Hires(float(h["scale"]), h.get("upscaler", "latent"), h.get("steps", 0), h["denoise"])


def test_every_sample_has_expectations():
    assert len(SAMPLES) == len(EXPECTED)


@pytest.mark.parametrize("index", CASES)
def test_sample_becomes_a_recipe_with_the_right_values(index):
    values, _ = EXPECTED[index]
    recipe = replay(index)
    assert recipe.values["name"] == f"sample_{index + 1}"
    for key, value in values.items():
        assert recipe.values[key] == value, key
        assert same_types(recipe.values[key], value), key  # 7 stays 7, 7.5 stays 7.5
    for key in ("model", "hires", "subseed", "subseed_strength"):
        assert (key in recipe.values) == (key in values), key
    assert recipe.values["negative_prompt"].startswith(
        values.get("negative_prompt", NEG_1 if index == 0 else "")
    )


@pytest.mark.parametrize("index", CASES)
def test_recipe_yaml_reads_back_as_the_same_values(index, tmp_path):
    recipe = replay(index)
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    assert OmegaConf.to_container(OmegaConf.load(path), resolve=True) == recipe.values


@pytest.mark.parametrize("index", CASES)
def test_recipe_composes_with_hydra_and_plans_exactly_that_job(index, recipes_dir, monkeypatch):
    from tests.unit.test_lora_files import SD1_KEYS, write_safetensors

    loras = recipes_dir / "Lora"  # sample 3's <lora:add_detail:0.6> needs its file to plan
    write_safetensors(loras / "add_detail.safetensors", SD1_KEYS)
    monkeypatch.setenv("SDBATCH_LORA", str(loras))
    recipe = replay(index)
    plan = plan_recipe(recipe, recipes_dir)
    assert len(plan.jobs) == 1
    job, v = plan.jobs[0], recipe.values
    assert (job.prompt, job.negative_prompt) == (v["prompt"], v["negative_prompt"])
    assert (job.sampler, job.steps, job.cfg) == (v["sampler"], v["steps"], v["cfg"])
    assert job.seed == v["seeds"]
    assert f"{job.width}x{job.height}" == v["size"]
    assert job.model.name == v.get("model", {}).get("name", "sdbatch-shapes")
    assert job.model.clip_skip == v.get("model", {}).get("clip_skip", 1)
    ex = job.extras  # hires fix, variation seed, noise source
    assert ex.hires == expected_hires(v)
    assert (ex.subseed, ex.subseed_strength) == (v.get("subseed"), v.get("subseed_strength", 0))
    assert ex.rng == v["rng"]


@pytest.mark.parametrize("index", CASES)
def test_fields_not_reproduced_are_comments_and_warnings(index):
    _, flagged = EXPECTED[index]
    recipe = replay(index)
    text = recipe.to_yaml()
    for key in flagged:
        assert [c for c in recipe.comments if c.startswith(f"not reproduced: {key}:")], key
        assert len([w for w in recipe.warnings if w.startswith(f"not reproduced: {key}:")]) == 1
        assert f"\n# not reproduced: {key}:" in text
    noted = [w for w in recipe.warnings if w.startswith("not reproduced")]
    assert len(noted) == len(flagged)


@pytest.mark.parametrize("index", CASES)
def test_a_missing_rng_field_means_a1111s_default_the_gpu(index):
    recipe = replay(index)
    has_rng = "RNG" in parse_infotext(SAMPLES[index]).params
    assert (NO_RNG in recipe.comments) is not has_rng
    assert f"\n# {NO_RNG}\n" in recipe.to_yaml() or has_rng
    assert not [w for w in recipe.warnings if "RNG" in w]  # CPU and GPU are both reproduced


def test_hires_and_variation_seed_are_written_as_yaml_blocks():
    hires = replay(1).to_yaml()
    assert "hires:\n  denoise: 0.5\n  scale: 2\n  steps: 10\n  upscaler: latent\n" in hires
    assert "rng: gpu\n" in hires
    seed = replay(2).to_yaml()
    assert "subseed: 43\nsubseed_strength: 0.1\n" in seed


def test_comments_show_values_as_the_infotext_wrote_them():
    text = replay(3).to_yaml()
    assert '\n# Lora hashes: "add_detail: 7c6bad76eb54"\n' in text
    assert '\n# TI hashes: "easynegative: c74b4e810b03"\n' in text
    assert "# VAE hash: 735e4c3a44" in text and "# Version: v1.9.4" in text
    assert "  name: anything-v5  # Model hash: 1fe6c7ec54; set model.dir to the folder" in text


def test_size_that_is_no_multiple_of_8_is_rounded_down_with_a_warning():
    warnings = replay(4).warnings
    assert any(w.startswith("Size: 512x828 is not a multiple of 8") for w in warnings)


def test_foreign_model_is_named_and_warned_about():
    recipe = replay(1)
    assert any(
        w.startswith("Model: v1-5-pruned-emaonly (hash 6ce0161689)") for w in recipe.warnings
    )


def our_infotext(**params) -> str:
    """Infotext like sdbatch writes (``RNG: CPU`` included); a value "" drops that key."""
    base = {"Steps": 2, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1, "Size": "64x64"}
    base.update({"Model hash": EMBEDDED_HASH, "Model": EMBEDDED_MODEL_NAME, "RNG": "CPU"})
    base.update({"Version": "sdbatch 0.1.0"}, **params)
    return format_infotext("a red circle", "blurry", {k: v for k, v in base.items() if v != ""})


def test_clip_skip_goes_into_the_model_and_its_job_id():
    recipe = recipe_from_infotext(our_infotext(**{"Clip skip": 2}), "x")
    assert recipe.values["model"] == {"clip_skip": 2} and recipe.warnings == []
    assert "model:\n  clip_skip: 2\n" in recipe.to_yaml()


def test_our_embedded_model_leaves_the_model_unset():
    from sdbatch.models import EMBEDDED_MODEL_PATH
    from sdbatch.plan.hashing import model_hash

    recipe = recipe_from_infotext(
        our_infotext(**{"Model hash": model_hash(EMBEDDED_MODEL_PATH)}), "x"
    )
    assert "model" not in recipe.values and recipe.warnings == []
    other = recipe_from_infotext(our_infotext(**{"Model hash": "0000000000"}), "x")
    assert "model" not in other.values
    assert any("not the embedded sdbatch-shapes's" in w for w in other.warnings)


@pytest.mark.parametrize(
    ("cfg", "line"),
    [("7", "cfg: 7\n"), ("7.0", "cfg: 7\n"), ("7.5", "cfg: 7.5\n"), ("0", "cfg: 0\n")],
)
def test_cfg_is_written_like_the_infotext(cfg, line):
    assert line in recipe_from_infotext(our_infotext(**{"CFG scale": cfg}), "x").to_yaml()


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"Sampler": "Euler a"}, "Euler a"),
        ({"Sampler": "DPM++ 2M Karras"}, "DPM++ 2M Karras"),  # A1111 < 1.9
        ({"Sampler": "DPM++ 2M"}, "DPM++ 2M"),  # A1111 < 1.9: uniform
        ({"Sampler": "DPM++ 2M", "Schedule type": "Karras"}, "DPM++ 2M Karras"),
        ({"Sampler": "DPM++ 2M", "Schedule type": "Automatic"}, "DPM++ 2M Karras"),
        ({"Sampler": "DPM++ 2M", "Schedule type": "Uniform"}, "DPM++ 2M"),
        ({"Sampler": "DPM++ SDE", "Schedule type": "Automatic"}, "DPM++ SDE Karras"),
        ({"Sampler": "DPM2 a", "Schedule type": "Automatic"}, "DPM2 a Karras"),
        ({"Sampler": "Euler a", "Schedule type": "Automatic"}, "Euler a"),
        ({"Sampler": "DPM++ 2M SDE", "Schedule type": "Automatic"}, "DPM++ 2M SDE Exponential"),
        ({"Sampler": "LMS", "Schedule type": "Karras"}, "LMS Karras"),
        ({"Sampler": "DPM++ 2M Karras", "Schedule type": "Karras"}, "DPM++ 2M Karras"),
        # A1111 lets a combined name's suffix win over the dropdown
        ({"Sampler": "DPM++ 2M Karras", "Schedule type": "Uniform"}, "DPM++ 2M Karras"),
        ({"Sampler": "DPM++ 3M SDE", "Schedule type": "Automatic"}, "DPM++ 3M SDE Exponential"),
        ({"Sampler": "Euler", "Schedule type": "Karras"}, "Euler Karras"),
        ({"Sampler": "Euler a", "Schedule type": "Normal"}, "Euler a"),  # Normal is Uniform
        ({"Sampler": "DDIM", "Schedule type": "Karras"}, "DDIM"),  # ignored, as in A1111
        # no Schedule type: before 1.9 a bare name was uniform; 1.9+ itself reads Automatic
        ({"Sampler": "DPM++ 2M", "Version": "v1.8.0"}, "DPM++ 2M"),
        ({"Sampler": "DPM++ 2M", "Version": "sdbatch 0.1.0"}, "DPM++ 2M"),
        ({"Sampler": "DPM++ 2M", "Version": "v1.10.1"}, "DPM++ 2M Karras"),
        ({"Sampler": "DPM++ 2M", "Version": "f2.0.1v1.10.1-previous-313"}, "DPM++ 2M Karras"),
    ],
)
def test_a1111_sampler_follows_schedule_type_and_its_automatic_default(params, name):
    assert a1111_sampler(params) == name


def test_unknown_sampler_is_one_line_naming_it_and_the_known_ones():
    text = our_infotext(Sampler="DPM++ 9M", **{"Schedule type": "Automatic"})
    with pytest.raises(ReplayError) as err:
        recipe_from_infotext(text, "x", "a.png")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("a.png: Sampler: DPM++ 9M, Schedule type: Auto")
    assert "not a sampler sdbatch has" in msg and "known samplers: " + ", ".join(SAMPLERS) in msg


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"Sampler": "Restart"}, "Sampler: Restart: sdbatch cannot run it: A1111's Restart"),
        ({"Sampler": "Euler a CFG++"}, "close samplers sdbatch runs: Euler a"),
        ({"Sampler": "DPM2", "Schedule type": "KL Optimal"}, "sampler DPM2 cannot run it"),
        ({"Sampler": "Euler", "Schedule type": "Align Your Steps GITS"}, "known schedule types"),
    ],
)
def test_samplers_and_schedules_sdbatch_cannot_run_are_one_line(params, fragment):
    with pytest.raises(ReplayError) as err:
        recipe_from_infotext(our_infotext(**params), "x", "a.png")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("a.png: Sampler: ") and fragment in msg


V110 = {"Version": "v1.10.1"}


@pytest.mark.parametrize(
    ("params", "values"),
    [
        ({"Sampler": "DPM++ 2M Karras"}, {"sampler": "DPM++ 2M Karras"}),  # A1111 < 1.9
        (
            {"Sampler": "DPM++ 2M", "Schedule type": "Karras", **V110},
            {"sampler": "DPM++ 2M Karras"},
        ),
        (
            {"Sampler": "DPM++ 2M", "Schedule type": "Automatic", **V110},
            {"sampler": "DPM++ 2M Karras"},
        ),
        ({"Sampler": "DPM++ 2M"}, {"sampler": "DPM++ 2M", "schedule_type": "Uniform"}),  # < 1.9
        (
            {"Sampler": "DPM++ 2M", "Schedule type": "Uniform", **V110},
            {"sampler": "DPM++ 2M", "schedule_type": "Uniform"},
        ),
        ({"Sampler": "Euler", "Schedule type": "Karras", **V110}, {"sampler": "Euler Karras"}),
        (
            {"Sampler": "DPM++ 2M SDE", "Schedule type": "Automatic", **V110},
            {"sampler": "DPM++ 2M SDE Exponential"},
        ),
        ({"Sampler": "DPM++ 2M SDE"}, {"sampler": "DPM++ 2M SDE", "schedule_type": "Uniform"}),
        ({"Sampler": "DDIM", "Schedule type": "Karras", **V110}, {"sampler": "DDIM"}),
    ],
    ids=lambda v: ",".join(f"{k}={v[k]}" for k in v if k != "Version"),
)
def test_both_infotext_layouts_replay_to_the_schedule_a1111_used(params, values, recipes_dir):
    """Old (``Sampler: DPM++ 2M Karras``) and new (``Sampler: DPM++ 2M, Schedule type:
    Karras``) infotexts give recipes that plan A1111's schedule: the job a recipe written by
    hand plans, whose own infotext (the new layout) replays to the same recipe again."""
    recipe = recipe_from_infotext(our_infotext(**params), "x")
    assert {k: recipe.values[k] for k in ("sampler", "schedule_type") if k in recipe.values} == (
        values
    )
    keys = list(recipe.values)  # the YAML's order: sampler, then its schedule type, then steps
    assert keys[keys.index("sampler") : keys.index("steps")] == list(values)
    (job,) = plan_recipe(recipe, recipes_dir).jobs
    direct = build_plan(quick_cfg(prompt="a red circle", seeds=[1], **values)).jobs[0]
    assert job.job_id == direct.job_id
    again = recipe_from_infotext(infotext_for(job), "x")
    assert {k: v for k, v in again.values.items() if k != "name"} == {
        k: v for k, v in recipe.values.items() if k != "name"
    }
    assert a1111_sampler(parse_infotext(infotext_for(job)).params) == job.sampler


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"Seed": ""}, "the infotext has no Seed"),
        ({"Seed": "-1"}, "Seed: '-1' is not allowed"),
        ({"Steps": "2.5"}, "Steps: '2.5' is not allowed"),
        ({"CFG scale": "abc"}, "CFG scale: 'abc' is not allowed"),
        ({"Size": "big"}, "Size: 'big' is not allowed"),
    ],
)
def test_bad_or_missing_core_fields_are_one_line_errors(params, fragment):
    with pytest.raises(ReplayError, match=fragment):
        recipe_from_infotext(our_infotext(**params), "x", "a.png")


def test_unknown_fields_and_flags_are_kept_as_comments_and_warnings():
    text = our_infotext() + ", Face restoration: CodeFormer, Tiling"
    recipe = recipe_from_infotext(text, "x")
    assert "not reproduced: Face restoration: CodeFormer" in recipe.comments
    assert "not reproduced: Tiling" in recipe.comments
    assert len(recipe.warnings) == 2


def test_defaults_that_sdbatch_matches_are_comments_without_warnings():
    recipe = recipe_from_infotext(our_infotext(**{"ENSD": 0, "Emphasis": "Original"}), "x")
    assert recipe.warnings == []
    assert set(recipe.comments) == {
        "ENSD: 0 (what sdbatch does)",
        "Emphasis: Original (what sdbatch does)",
        "Version: sdbatch 0.1.0",
    }


def test_img2img_fields_map_to_the_image_keys_and_ask_for_the_picture(recipes_dir):
    fields = {"Denoising strength": 0.4, "Mask blur": 2, "Mask mode": "Inpaint not masked",
              "Inpaint area": "Only masked", "Masked area padding": 16,
              "Masked content": "latent noise"}  # fmt: skip
    recipe = recipe_from_infotext(our_infotext(**fields), "x")
    assert "hires" not in recipe.values
    assert {k: recipe.values[k] for k in ("denoise", "mask_blur", "inpainting_mask_invert",
            "inpaint_full_res", "inpaint_full_res_padding", "inpainting_fill")} == {
        "denoise": 0.4, "mask_blur": 2, "inpainting_mask_invert": "Inpaint not masked",
        "inpaint_full_res": True, "inpaint_full_res_padding": 16, "inpainting_fill": "latent noise",
    }  # fmt: skip
    assert len(recipe.warnings) == 1 and "set init_images" in recipe.warnings[0]
    assert plan_recipe(recipe, recipes_dir).jobs  # plans (as txt2img until init_images is set)


HIRES_FIELDS = {"Denoising strength": 0.5, "Hires upscale": 1.5, "Hires upscaler": "Lanczos"}


def test_hires_fix_is_mapped_with_any_upscaler_sdbatch_has(recipes_dir):
    recipe = recipe_from_infotext(our_infotext(**HIRES_FIELDS, **{"Hires steps": 3}), "x")
    assert recipe.values["hires"] == {
        "denoise": 0.5,
        "scale": 1.5,
        "upscaler": "lanczos",
        "steps": 3,
    }
    assert recipe.warnings == [] and recipe.comments == ["Version: sdbatch 0.1.0"]
    (job,) = plan_recipe(recipe, recipes_dir).jobs
    assert job.extras.hires == Hires(1.5, "lanczos", 3, 0.5)


@pytest.mark.parametrize("upscaler", ["SwinIR 4x", "LDSR", "ScuNET GAN", "DAT x4"])
def test_an_upscaler_sdbatch_lacks_is_a_warned_comment_and_latent_is_used(upscaler, recipes_dir):
    text = our_infotext(**{**HIRES_FIELDS, "Hires upscaler": upscaler})
    recipe = recipe_from_infotext(text, "x")
    assert recipe.values["hires"] == {"denoise": 0.5, "scale": 1.5}  # the hires fix still runs
    assert f"not reproduced: Hires upscaler: {upscaler}" in recipe.comments
    assert recipe.warnings == [
        f"not reproduced: Hires upscaler: {upscaler} "
        "(an architecture sdbatch does not build (it has the ESRGAN family); the recipe uses "
        "latent)"
    ]
    (job,) = plan_recipe(recipe, recipes_dir).jobs
    assert job.extras.hires == Hires(1.5, "latent", 0, 0.5)


def test_hires_resize_turns_the_whole_hires_fix_into_warned_comments():
    fields = {"Denoising strength": 0.5, "Hires resize": "1024x1024", "Hires upscaler": "Latent"}
    recipe = recipe_from_infotext(our_infotext(**fields), "x")
    assert "hires" not in recipe.values  # no half-set hires block that would not run
    assert [w.split(":")[0] for w in recipe.warnings] == ["not reproduced"] * 3
    assert all("Hires resize" in w for w in recipe.warnings)


@pytest.mark.parametrize(("rng", "value"), [("CPU", "cpu"), ("GPU", "gpu"), ("", "gpu")])
def test_rng_cpu_and_gpu_are_mapped(rng, value, recipes_dir):
    recipe = recipe_from_infotext(our_infotext(RNG=rng), "x")
    assert recipe.values["rng"] == value and recipe.warnings == []
    assert (NO_RNG in recipe.comments) == (rng == "")
    (job,) = plan_recipe(recipe, recipes_dir).jobs
    assert job.extras.rng == value


def test_rng_nv_is_a_warned_comment_and_uses_the_gpu(recipes_dir):
    recipe = recipe_from_infotext(our_infotext(RNG="NV"), "x")
    assert "not reproduced: RNG: NV" in recipe.comments and NO_RNG not in recipe.comments
    assert len(recipe.warnings) == 1
    assert recipe.warnings[0].startswith("not reproduced: RNG: NV (sdbatch has no CPU copy")
    assert recipe.values["rng"] == "gpu"  # NV reproduces NVIDIA's GPU noise; cpu would not
    (job,) = plan_recipe(recipe, recipes_dir).jobs
    assert job.extras.rng == "gpu"


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"Variation seed": 7, "Variation seed strength": 1.5}, "Variation seed strength"),
        ({"Variation seed": -1, "Variation seed strength": 0.5}, "Variation seed"),
        ({**HIRES_FIELDS, "Denoising strength": 2}, "Denoising strength"),
        ({**HIRES_FIELDS, "Hires steps": 2.5}, "Hires steps"),
    ],
)
def test_bad_extra_values_are_one_line_errors(params, bad):
    with pytest.raises(ReplayError, match=f"^a.png: {bad}: '.*' is not allowed"):
        recipe_from_infotext(our_infotext(**params), "x", "a.png")


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"rng": "gpu"},
        {"hires": {"scale": 2, "steps": 2, "denoise": 0.5}},
        {"hires": {"scale": 1.5, "upscaler": "lanczos", "denoise": 0.35}, "rng": "gpu"},
        {"seeds": [5, 6], "subseed": 100, "subseed_strength": 0.3},
        {"subseed": 7, "subseed_strength": 1, "hires": {"scale": 2, "denoise": 0.7}},
        {"sampler": "DPM++ 2M", "schedule_type": "Uniform"},
        {
            "sampler": "DPM2 a",
            "schedule_type": "Exponential",
            "hires": {"scale": 2, "denoise": 0.5},
        },
        {"sampler": "DPM++ 2M SDE"},
    ],
    ids=[
        "plain",
        "gpu",
        "hires",
        "lanczos-gpu",
        "subseed",
        "subseed-hires",
        "2m-uniform",
        "dpm2a-exponential-hires",
        "2m-sde-automatic",
    ],  # fmt: skip
)
def test_our_own_infotext_replays_to_the_same_job_id(cfg, recipes_dir):
    """sdbatch's infotext -> recipe -> the same job id and the same infotext, for every extra."""
    original = build_plan(quick_cfg(**{"prompt": "a red circle", "seeds": [1], **cfg})).jobs[-1]
    recipe = recipe_from_infotext(infotext_for(original), "again")
    assert recipe.warnings == []
    (job,) = plan_recipe(recipe, recipes_dir).jobs
    assert job.extras == original.extras
    assert job.job_id == original.job_id
    assert infotext_for(job) == infotext_for(original)


def test_prompt_hazards_are_warned_about():
    params = {"Steps": 2, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1, "Size": "64x64"}
    text = format_infotext("a {red|blue} cat AND a dog", "", params)
    warnings = recipe_from_infotext(text, "x").warnings
    assert any("dynamic-prompts" in w for w in warnings) and any("AND" in w for w in warnings)


TRICKY = [
    "${name} and \\${x} and ${oc.env:HOME}",
    "- a list? no",
    "#hashtag: yes, 'quoted' \"double\"",
    "  leading and trailing spaces  ",
    "null",
    "123",
    "[a] (b:1.2) \\(c\\)",
    "tab\there",
    "",
]


@pytest.mark.parametrize("prompt", TRICKY)
def test_prompts_survive_yaml_and_omegaconf_exactly(prompt, recipes_dir):
    params = {"Steps": 2, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1, "Size": "64x64"}
    text = format_infotext(prompt, prompt, params)
    recipe = recipe_from_infotext(text, "tricky")
    info = parse_infotext(text)  # infotext strips its outer whitespace, as A1111 does
    assert (recipe.values["prompt"], recipe.values["negative_prompt"]) == (
        info.prompt,
        info.negative_prompt,
    )
    (recipes_dir / "tricky.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    cfg = compose_recipe(recipes_dir, "tricky")
    assert cfg["prompt"] == recipe.values["prompt"]
    assert cfg["negative_prompt"] == recipe.values["negative_prompt"]


def test_mapped_fields_target_keys_the_schema_has():
    schema = OmegaConf.structured(config.SdbatchConfig)
    for key, spec in FIELDS.items():
        if spec.mapped and spec.target:
            node = schema
            for part in spec.target.split("."):
                assert part in node, f"{key} -> {spec.target}"
                node = node[part]


def test_default_name_is_a_usable_recipe_name():
    assert default_name("out/images/1-38b99e15c2187e02.png") == "replay_1-38b99e15c2187e02"
    assert default_name("my image (2).png") == "replay_my_image_2"
