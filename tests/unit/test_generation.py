"""Hires fix, variation seeds and noise source: parsing, ids, infotext (pure)."""

from __future__ import annotations

import pytest

from sdbatch.errors import RecipeError
from sdbatch.outputs.record import infotext_for
from sdbatch.plan.recipe import build_plan
from tests.conftest import quick_cfg

HIRES = {"scale": 2, "upscaler": "latent", "steps": 10, "denoise": 0.5}


def test_defaults_keep_plain_job_ids_and_write_rng_cpu():
    plain = build_plan(quick_cfg())
    same = build_plan(quick_cfg(rng="cpu", hires={"scale": 1}, subseed_strength=0))
    assert [j.job_id for j in plain.jobs] == [j.job_id for j in same.jobs]
    assert "RNG: CPU" in infotext_for(plain.jobs[0])
    gpu = build_plan(quick_cfg(rng="gpu"))
    assert "RNG" not in infotext_for(gpu.jobs[0])  # A1111's default: not written
    assert gpu.jobs[0].job_id != plain.jobs[0].job_id


def test_hires_fields_in_a1111_order_and_in_the_id():
    job = build_plan(quick_cfg(hires=HIRES)).jobs[0]
    params = infotext_for(job).splitlines()[-1]
    assert params.endswith(
        "Model: sdbatch-shapes, Denoising strength: 0.5, RNG: CPU, Hires upscale: 2, "
        "Hires steps: 10, Hires upscaler: Latent, Version: sdbatch 0.1.0"
    )
    assert "Size: 64x64" in params  # A1111 writes the base size
    assert job.extras.hires.target(64, 64) == (128, 128)
    assert job.job_id != build_plan(quick_cfg()).jobs[0].job_id


def test_hires_steps_zero_means_same_steps_and_is_not_written():
    job = build_plan(quick_cfg(hires={**HIRES, "steps": 0, "upscaler": "Lanczos"})).jobs[0]
    text = infotext_for(job)
    assert "Hires steps" not in text and "Hires upscaler: Lanczos" in text


def test_variation_seeds_follow_a1111s_rule():
    plan = build_plan(quick_cfg(prompt="x", seeds={"start": 10, "count": 3}, subseed=100,
                                subseed_strength=0.25))  # fmt: skip
    assert [(j.seed, j.extras.subseed) for j in plan.jobs] == [(10, 100), (10, 101), (10, 102)]
    assert len({j.job_id for j in plan.jobs}) == 3
    text = infotext_for(plan.jobs[1])
    assert "Seed: 10, Size: 64x64" in text
    assert "Variation seed: 101, Variation seed strength: 0.25" in text


@pytest.mark.parametrize(
    "override, field",
    [
        ({"hires": {**HIRES, "scale": 0.5}}, "hires.scale"),
        ({"hires": {**HIRES, "upscaler": "esrgan"}}, "hires.upscaler"),
        ({"hires": {**HIRES, "denoise": 1.5}}, "hires.denoise"),
        ({"hires": {**HIRES, "steps": -1}}, "hires.steps"),
        ({"rng": "nv"}, "rng"),
        ({"subseed_strength": 2}, "subseed_strength"),
        ({"subseed_strength": 0.5}, "subseed"),
        ({"subseed_strength": 0.5, "subseed": -3}, "subseed"),
    ],
)
def test_bad_generation_options_are_one_line_errors(override, field):
    with pytest.raises(RecipeError) as err:
        build_plan(quick_cfg(**override))
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)


def test_hires_jobs_never_share_a_batch_with_plain_ones():
    from sdbatch.plan.recipe import make_batches

    a = build_plan(quick_cfg()).jobs
    b = build_plan(quick_cfg(hires=HIRES)).jobs
    batches = make_batches(a + b, 8)
    assert [len(x.jobs) for x in batches] == [4, 4]


@pytest.mark.parametrize(
    "steps, base, denoise, total",
    [(10, 20, 0.5, 20), (0, 20, 0.7, 28), (0, 20, 1.0, 20), (8, 4, 0.5, 16), (3, 20, 0.33, 9),
     (0, 37, 0.11, 336), (1, 20, 0.01, 100)],
)  # fmt: skip
def test_hires_pass_runs_all_its_steps_as_a1111(steps, base, denoise, total):
    """A1111's setup_img2img_steps with the steps given: a schedule of steps / denoise, of
    which the last `steps` run; diffusers' img2img runs int(num_inference_steps * strength)."""
    from sdbatch.plan.generation import Hires

    n, strength = Hires(2.0, "latent", steps, denoise).pass_steps(base)
    assert n == total
    assert int(n * strength) == (steps or base)
    assert 0 < strength <= 1
