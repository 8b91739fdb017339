"""Hydra composition of the shipped recipes against the typed schema."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import sdbatch.config as config
from sdbatch.plan.recipe import build_plan

SHIPPED = ["cfg_sweep", "hair_styles", "quick", "sampler_comparison"]


def composed(*overrides: str) -> dict:
    with initialize_config_module("sdbatch.conf", version_base="1.3"):
        cfg = compose("sdbatch", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def test_the_recipe_library_is_registered():
    assert set(SHIPPED) <= set(config.available_recipes())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_composes_and_plans(name):
    cfg = composed(f"+recipe={name}")
    assert cfg["name"] == name
    assert cfg["output"]["dir"] == f"outputs/{name}"
    assert build_plan(cfg).jobs


def test_hair_styles_plan_matches_the_seed_guide_experiment():
    plan = build_plan(composed("+recipe=hair_styles"))
    assert plan.describe() == "60 jobs = 5 prompts x 1 sampler x 3 cfg x 4 seeds"
    assert {j.template for j in plan.jobs} == {"black hair, long hair, {style}"}
    assert plan.jobs[0].prompt == "black hair, long hair, ponytail"


def test_command_line_overrides_replace_a_swept_axis_with_a_scalar():
    plan = build_plan(composed("+recipe=hair_styles", "cfg=11", "seeds=7"))
    assert {j.cfg for j in plan.jobs} == {11.0}
    assert {j.seed for j in plan.jobs} == {7}


def test_sampler_comparison_has_every_sampler():
    from sdbatch.plan.samplers import SAMPLERS

    plan = build_plan(composed("+recipe=sampler_comparison"))
    # a bare name runs A1111's Automatic schedule (DPM++ 3M SDE -> "DPM++ 3M SDE Exponential")
    got = {j.sampler for j in plan.jobs}
    assert all(name in got or f"{name} Exponential" in got for name in SAMPLERS), got
    assert len(plan.jobs) == len(SAMPLERS)
    # DPM++ 2S a runs on the same diffusers class as DPM++ SDE: the ids must still differ
    assert len({j.job_id for j in plan.jobs}) == len(plan.jobs)


def test_a_misspelt_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        composed("+recipe=quick", "stpes=3")


def test_a_wrong_type_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        composed("+recipe=quick", "batch_size=many")
