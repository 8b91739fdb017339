"""The recipe key ``schedule_type`` (A1111 1.9+'s "Schedule type"): parsing, job identity,
errors and the docs table. Pure: no torch."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import sdbatch.config  # noqa: F401  (registers the schema Hydra composes against)
from sdbatch.errors import RecipeError
from sdbatch.plan.recipe import build_plan
from sdbatch.plan.samplers import (
    BASE_SAMPLERS,
    SAMPLERS,
    plan_sampler,
    recipe_fields,
    resolve_sampler,
    schedule_type_table,
    scheduler_spec,
)
from sdbatch.plan.schedule_types import SCHEDULE_TYPES
from tests.conftest import quick_cfg


def one_job(**cfg):
    (job,) = build_plan(quick_cfg(prompt="a red circle", seeds=1, steps=20, **cfg)).jobs
    return job


# Job ids of the embedded model's quick_cfg job (20 steps, seed 1) as sdbatch planned them
# before schedule types existed, with the sampler name and scheduler spec they hash.
# A change here re-renders every finished image of that sampler.
PINNED = {
    "Euler a": ("84fd211ab696aa72", "EulerAncestralDiscreteScheduler(timestep_spacing='linspace')"),
    "Euler": ("02fdf31c0a6501b2", "EulerDiscreteScheduler(timestep_spacing='linspace')"),
    "DPM++ 2M": (
        "d2adb361d7f8c65d",
        "DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2, "
        "timestep_spacing='linspace')",
    ),
    "DPM++ 2M Karras": (
        "724393d64b2b7a3d",
        "DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2, "
        "timestep_spacing='linspace', use_karras_sigmas=True)",
    ),
    "DPM2": (
        "68ca466a7da5c8e6",
        "KDPM2DiscreteScheduler(discard_next_to_last_sigma=True, timestep_spacing='linspace')",
    ),
    "DPM2 a Karras": (
        "21c25ed146da27d7",
        "KDPM2AncestralDiscreteScheduler(discard_next_to_last_sigma=True, "
        "timestep_spacing='linspace', use_karras_sigmas=True)",
    ),
    "DPM++ SDE": ("0a602bc39d56d4da", "DPMSolverSDEScheduler(timestep_spacing='linspace')"),
    "DPM++ 2M SDE": (
        "80702406fd638e20",
        "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=2, "
        "timestep_spacing='linspace')",
    ),
    "DPM++ 2M SDE Karras": (
        "21742d3f3bb8071c",
        "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=2, "
        "timestep_spacing='linspace', use_karras_sigmas=True)",
    ),
    "LMS Karras": (
        "22247b2750145495",
        "LMSDiscreteScheduler(timestep_spacing='linspace', use_karras_sigmas=True)",
    ),
    "DDIM": (
        "9df9e171163b7cbe",
        "DDIMScheduler(a1111_grid=True, clip_sample=False, set_alpha_to_one=False, "
        "steps_offset=1, timestep_spacing='leading')",
    ),
    "UniPC": (
        "90c18927a0a90471",
        "UniPCMultistepScheduler(final_sigmas_type='sigma_min', solver_order=3, "
        "solver_type='bh1', timestep_spacing='linspace')",
    ),
}

# How today's recipes reach each pinned job: (sampler, schedule_type) -> the old job name.
SPELLINGS = [
    ("Euler a", "Automatic", "Euler a"),
    ("Euler a", "Uniform", "Euler a"),
    ("Euler", "Normal", "Euler"),  # Normal is Uniform
    ("DPM++ 2M Karras", "Automatic", "DPM++ 2M Karras"),
    ("DPM++ 2M Karras", "Karras", "DPM++ 2M Karras"),
    ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
    ("DPM++ 2M", "Automatic", "DPM++ 2M Karras"),  # A1111 1.9+: DPM++ 2M's own is Karras
    ("dpm++ 2m", "karras", "DPM++ 2M Karras"),
    ("DPM++ 2M", "Uniform", "DPM++ 2M"),  # what a bare name meant before: same id
    ("DPM2", "Uniform", "DPM2"),
    ("DPM2 a", "Automatic", "DPM2 a Karras"),
    ("DPM++ SDE", "Uniform", "DPM++ SDE"),
    ("DPM++ 2M SDE", "Uniform", "DPM++ 2M SDE"),
    ("DPM++ 2M SDE", "Karras", "DPM++ 2M SDE Karras"),
    ("LMS", "Karras", "LMS Karras"),
    ("DDIM", "Automatic", "DDIM"),
    ("DDIM", "Karras", "DDIM"),  # A1111 ignores the schedule type for DDIM
    ("UniPC", "Exponential", "UniPC"),
]


@pytest.mark.parametrize("name", list(PINNED))
def test_old_sampler_names_keep_their_job_ids(name):
    """The job an old recipe planned is still there, with the recipe keys that name it."""
    fields = recipe_fields(resolve_sampler(name))
    assert fields == (
        {"sampler": name, "schedule_type": "Uniform"}
        if name in ("DPM++ 2M", "DPM2", "DPM++ SDE", "DPM++ 2M SDE")  # bare now: Automatic
        else {"sampler": name}
    )
    job = one_job(**fields)
    assert (job.sampler, job.job_id, job.scheduler) == (name, *PINNED[name])


@pytest.mark.parametrize(("sampler", "schedule_type", "name"), SPELLINGS)
def test_every_spelling_of_an_old_job_is_that_job(sampler, schedule_type, name):
    job = one_job(sampler=sampler, schedule_type=schedule_type)
    assert job.sampler == name
    assert (job.job_id, job.scheduler) == PINNED[name]


def test_a_bare_name_means_what_a1111_19_renders():
    """A1111 1.9+'s Automatic: Karras for DPM++ 2M, SDE and 2S a and DPM2 (a); Exponential for
    the DPM++ SDE multistep samplers; Uniform (the plain name) for the rest."""
    assert {n: plan_sampler(n).name for n in BASE_SAMPLERS} == {
        "DPM++ 2M": "DPM++ 2M Karras",
        "DPM++ SDE": "DPM++ SDE Karras",
        "DPM++ 2M SDE": "DPM++ 2M SDE Exponential",
        "DPM++ 2M SDE Heun": "DPM++ 2M SDE Heun Exponential",
        "DPM++ 2S a": "DPM++ 2S a Karras",
        "DPM++ 3M SDE": "DPM++ 3M SDE Exponential",
        "Euler a": "Euler a",
        "Euler": "Euler",
        "LMS": "LMS",
        "Heun": "Heun",
        "DPM2": "DPM2 Karras",
        "DPM2 a": "DPM2 a Karras",
        "LCM": "LCM",
        "DDIM": "DDIM",
        "PLMS": "PLMS",
        "UniPC": "UniPC",
    }


def test_default_is_automatic_and_a_swept_axis_is_sampler_major():
    assert one_job(sampler="DPM++ 2M").job_id == PINNED["DPM++ 2M Karras"][0]
    plan = build_plan(
        quick_cfg(
            prompt="x",
            seeds=1,
            sampler=["Euler", "DPM++ 2M", "DDIM"],
            schedule_type="Automatic, Karras, Exponential",  # A1111's comma form
        )
    )
    assert [j.sampler for j in plan.jobs] == [
        "Euler",
        "Euler Karras",
        "Euler Exponential",
        "DPM++ 2M Karras",  # Automatic and Karras: one job
        "DPM++ 2M Exponential",
        "DDIM",  # ignores the schedule type: one job
    ]
    assert plan.describe() == "6 jobs = 1 prompts x 6 sampler x 1 cfg x 1 seeds"
    assert plan.values["sampler"][1] == "Euler Karras"
    assert len({j.job_id for j in plan.jobs}) == 6
    assert len({j.scheduler for j in plan.jobs}) == 6  # every schedule is its own batch
    same = build_plan(
        quick_cfg(prompt="x", seeds=1, sampler="Euler", schedule_type=["Karras", "karras"])
    )
    assert [j.sampler for j in same.jobs] == ["Euler Karras"]


def test_spellings_that_give_the_same_sigmas_are_one_job():
    assert one_job(sampler="Euler", schedule_type="Normal") == one_job(sampler="Euler")
    poly = one_job(sampler="Euler a", schedule_type="Polyexponential")
    assert poly == one_job(sampler="Euler a", schedule_type="Exponential")
    assert poly.sampler == "Euler a Exponential"
    assert one_job(sampler="Euler Karras") == one_job(sampler="Euler", schedule_type="Karras")
    assert one_job(sampler="Euler", schedule_type="sgm_uniform").sampler == "Euler SGM Uniform"


def test_a_computed_schedule_joins_the_spec_and_the_id():
    job = one_job(sampler="Euler", schedule_type="Karras")
    assert job.scheduler == (
        "EulerDiscreteScheduler(schedule_type='Karras', timestep_spacing='linspace')"
    )
    others = {one_job(sampler="Euler", schedule_type=t).job_id for t in SCHEDULE_TYPES}
    assert len(others) == len(SCHEDULE_TYPES) - 3  # Automatic = Uniform = Normal


def test_a_combination_that_cannot_run_is_one_line_naming_both_and_what_works():
    with pytest.raises(RecipeError) as info:
        one_job(sampler="DPM2", schedule_type="KL Optimal")
    msg = str(info.value)
    assert "\n" not in msg and info.value.field == "schedule_type"
    assert msg.startswith("schedule_type: 'KL Optimal' is not allowed; sampler DPM2 cannot run it")
    assert "DPM2 takes Automatic, Uniform, Karras, Exponential" in msg
    assert msg.endswith("KL Optimal runs with Euler a, Euler, LMS")
    with pytest.raises(RecipeError, match="sampler LCM cannot run it .*LCM takes Automatic, "):
        one_job(sampler="LCM", schedule_type="Karras")


def test_an_old_name_and_another_schedule_type_is_an_error_not_a_guess():
    with pytest.raises(RecipeError) as info:
        one_job(sampler="DPM++ 2M Karras", schedule_type="Exponential")
    msg = str(info.value)
    assert "\n" not in msg and "already names the Karras schedule" in msg
    assert "write sampler: DPM++ 2M with schedule_type: Exponential" in msg


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("karas", "closest match: 'Karras'"),
        ("Align Your Steps GITS", "known schedule types: Automatic, Uniform, Karras"),
        (None, "at least one value"),
        ([], "at least one value"),
        (3, "known schedule types"),
    ],
)
def test_bad_schedule_types_are_one_line(value, fragment):
    with pytest.raises(RecipeError) as info:
        one_job(schedule_type=value)
    assert "\n" not in str(info.value) and fragment in str(info.value)
    assert info.value.field == "schedule_type"


def test_the_recipe_key_composes_with_hydra():
    with initialize_config_module("sdbatch.conf", version_base="1.3"):
        cfg = compose("sdbatch", overrides=["+recipe=quick", "schedule_type=[Karras,Beta]"])
    plan = build_plan(OmegaConf.to_container(cfg, resolve=True))
    assert {j.sampler for j in plan.jobs} == {"Euler a Karras", "Euler a Beta"}
    with initialize_config_module("sdbatch.conf", version_base="1.3"):
        default = compose("sdbatch", overrides=["+recipe=quick"])
    assert default.schedule_type == "Automatic"


def test_the_docs_table_agrees_with_the_planner():
    table = schedule_type_table()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    head, *body = (r.strip("| ").split(" | ") for r in rows)
    assert head == ["sampler", *SCHEDULE_TYPES]
    assert [r[0] for r in body] == list(BASE_SAMPLERS)
    cells = {r[0]: dict(zip(SCHEDULE_TYPES, r[1:], strict=True)) for r in body}
    assert set(cells["Euler"].values()) == {"Uniform: exact", "exact"}
    assert cells["DPM++ 2M"]["Automatic"] == "Karras: exact"
    assert cells["DPM++ 2M"]["Uniform"] == "approximate"  # diffusers' grid, kept for old ids
    assert cells["DPM2"]["KL Optimal"] == "not possible"
    assert cells["DDIM"]["Karras"] == "ignored"
    assert cells["LCM"]["Karras"] == "not possible"
    for base, row in cells.items():
        for label, cell in row.items():
            if cell == "not possible":
                with pytest.raises(RecipeError):
                    plan_sampler(base, label)
            else:
                s = plan_sampler(base, label)
                assert cell.endswith("exact") == s.exact or base in ("DDIM", "PLMS", "UniPC")
    assert "Restart" in table and "CFG++" in table


def test_every_runnable_combination_has_its_own_spec():
    specs: dict[str, set[str]] = {}
    for base in BASE_SAMPLERS:
        for label in SCHEDULE_TYPES:
            try:
                s = plan_sampler(base, label)
            except RecipeError:
                continue
            specs.setdefault(scheduler_spec(s), set()).add(s.name)
    shared = sorted(sorted(names) for names in specs.values() if len(names) > 1)
    # DPM++ 2S a borrows DPM++ SDE's class on every schedule (its entries' notes say so); the
    # names, which the ids hash too, keep them apart
    assert shared == sorted(
        sorted(f"{base} {t}".strip() for base in ("DPM++ 2S a", "DPM++ SDE"))
        for t in ("", "Karras", *SHARED_COMPUTED)
    )


SHARED_COMPUTED = ("Exponential", "SGM Uniform", "Align Your Steps", "Simple", "DDIM", "Beta")


def test_new_entries_are_not_in_the_table_of_names_but_resolve_like_them():
    s = plan_sampler("Heun", "Beta")
    assert s.name == "Heun Beta" and s.name not in SAMPLERS
    assert s.schedule_type == "Beta" and s.exact and s.cls == "HeunDiscreteScheduler"
    assert plan_sampler("Heun Beta") is s
    sde = plan_sampler("DPM++ 2M SDE")
    assert not sde.exact and "Brownian tree" in sde.note
