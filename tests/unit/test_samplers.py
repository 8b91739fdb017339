"""The A1111 sampler table: names, lookup, errors and spec strings. No torch here."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from sdbatch.errors import RecipeError, UserError
from sdbatch.plan.samplers import (
    SAMPLERS,
    UNSUPPORTED,
    Sampler,
    a1111_names,
    resolve_sampler,
    scheduler_spec,
    split_sampler,
)

OLD_NAMES = [  # A1111's dropdown order (1.5), less DPM fast / DPM adaptive
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "LMS Karras",
    "DPM2 Karras",
    "DPM2 a Karras",
    "DPM++ 2S a Karras",
    "DPM++ 2M Karras",
    "DPM++ SDE Karras",
    "DPM++ 2M SDE Karras",
    "DDIM",
    "PLMS",
    "UniPC",
]
ADDED = ["DPM++ 2M SDE Heun", "DPM++ 3M SDE", "LCM"]  # A1111 1.6+ samplers diffusers can run
A1111_NAMES = OLD_NAMES + ADDED


def test_import_does_not_import_torch_or_diffusers():
    code = (
        "import sys, sdbatch.plan.samplers\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_table_has_the_a1111_names_in_a1111_order():
    assert list(SAMPLERS) == A1111_NAMES
    assert all(s.name == name for name, s in SAMPLERS.items())


@pytest.mark.parametrize("name", A1111_NAMES)
def test_every_name_resolves_to_itself(name):
    assert resolve_sampler(name) is SAMPLERS[name]


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("dpm++ 2m karras", "DPM++ 2M Karras"),
        ("Euler A", "Euler a"),
        ("EULER", "Euler"),
        ("  DPM++  2M   SDE\tKarras ", "DPM++ 2M SDE Karras"),
        ("DPM++2M Karras", "DPM++ 2M Karras"),
        ("dpm2 A karras", "DPM2 a Karras"),
        ("ddim", "DDIM"),
        ("unipc", "UniPC"),
    ],
)
def test_lookup_ignores_case_and_whitespace(typed, name):
    assert resolve_sampler(typed).name == name


def test_unknown_name_lists_known_samplers_and_closest_match_on_one_line():
    with pytest.raises(RecipeError) as info:
        resolve_sampler("DPM++ 2M Karass")
    err = info.value
    msg = str(err)
    assert isinstance(err, UserError) and err.exit_code == 2
    assert (err.field, err.value) == ("sampler", "DPM++ 2M Karass")
    assert "\n" not in msg
    assert msg.startswith("sampler: 'DPM++ 2M Karass' is not allowed; known samplers: Euler a, ")
    assert "known samplers: " + ", ".join(A1111_NAMES) in msg
    assert msg.endswith("; closest match: 'DPM++ 2M Karras'")


@pytest.mark.parametrize(
    ("typed", "closest"),
    [("eular a", "Euler a"), ("dpm++ sde karas", "DPM++ SDE Karras"), ("Uni PC2", "UniPC")],
)
def test_closest_match(typed, closest):
    with pytest.raises(RecipeError, match=re.escape(f"closest match: '{closest}'") + "$"):
        resolve_sampler(typed)


@pytest.mark.parametrize("bad", ["zzzzzzzz", "", "Euler\nDDIM", None, 3])
def test_garbage_still_gives_a_one_line_error(bad):
    with pytest.raises(RecipeError) as info:
        resolve_sampler(bad)
    assert "\n" not in str(info.value)
    assert "known samplers: Euler a, Euler, LMS" in str(info.value)


def test_spec_strings_are_pinned():
    # These strings go into the manifest and into job ids: changing one re-renders old jobs.
    assert scheduler_spec(SAMPLERS["Euler a"]) == (
        "EulerAncestralDiscreteScheduler(timestep_spacing='linspace')"
    )
    assert scheduler_spec(SAMPLERS["DPM++ 2M Karras"]) == (
        "DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2, "
        "timestep_spacing='linspace', use_karras_sigmas=True)"
    )
    assert scheduler_spec(SAMPLERS["DPM++ 2M SDE"]) == (
        "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=2, "
        "timestep_spacing='linspace')"
    )
    assert scheduler_spec(SAMPLERS["DPM++ SDE Karras"]) == (
        "DPMSolverSDEScheduler(timestep_spacing='linspace', use_karras_sigmas=True)"
    )
    assert scheduler_spec(SAMPLERS["DDIM"]) == (
        "DDIMScheduler(a1111_grid=True, clip_sample=False, set_alpha_to_one=False, "
        "steps_offset=1, timestep_spacing='leading')"
    )
    assert scheduler_spec(SAMPLERS["PLMS"]) == (
        "PNDMScheduler(a1111_grid=True, set_alpha_to_one=False, skip_prk_steps=True, "
        "steps_offset=1, timestep_spacing='leading')"
    )
    assert scheduler_spec(SAMPLERS["DPM2 a Karras"]) == (
        "KDPM2AncestralDiscreteScheduler(discard_next_to_last_sigma=True, "
        "timestep_spacing='linspace', use_karras_sigmas=True)"
    )
    # Added later: their uniform schedule is A1111's, computed by sdbatch.
    assert scheduler_spec(SAMPLERS["DPM++ 2M SDE Heun"]) == (
        "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', schedule_type='Uniform', "
        "solver_order=2, solver_type='heun', timestep_spacing='linspace')"
    )
    assert scheduler_spec(SAMPLERS["DPM++ 3M SDE"]) == (
        "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', schedule_type='Uniform', "
        "solver_order=3, timestep_spacing='linspace')"
    )
    assert scheduler_spec(SAMPLERS["LCM"]) == (
        "LCMScheduler(original_inference_steps=50, timestep_scaling=10.0)"
    )
    assert scheduler_spec(resolve_sampler("Euler Karras")) == (
        "EulerDiscreteScheduler(schedule_type='Karras', timestep_spacing='linspace')"
    )


def test_spec_sorts_options_and_ignores_their_order():
    a = Sampler("x", "C", {"b": 1, "a": "s", "c": True})
    b = Sampler("x", "C", {"c": True, "a": "s", "b": 1})
    assert scheduler_spec(a) == scheduler_spec(b) == "C(a='s', b=1, c=True)"
    assert scheduler_spec(Sampler("x", "C")) == "C()"


def test_specs_differ_except_where_one_scheduler_stands_in_for_two_names():
    by_spec: dict[str, list[str]] = {}
    for s in SAMPLERS.values():
        by_spec.setdefault(scheduler_spec(s), []).append(s.name)
    shared = sorted(names for names in by_spec.values() if len(names) > 1)
    # DPM++ 2S a has no diffusers scheduler; it borrows DPM++ SDE's (see its note).
    assert shared == [["DPM++ 2S a", "DPM++ SDE"], ["DPM++ 2S a Karras", "DPM++ SDE Karras"]]


def test_approximate_entries_explain_themselves():
    for s in SAMPLERS.values():
        assert bool(s.note) == (not s.exact), s.name
        assert "\n" not in s.note
    assert "DPMSolverSDEScheduler" in SAMPLERS["DPM++ 2S a"].note
    assert {s.name for s in SAMPLERS.values() if s.exact} == {
        "Euler a",
        "Euler",
        "LMS",
        "Heun",
        "DPM2",
        "DPM2 a",
        "DPM++ SDE",
        "LMS Karras",
        "DPM2 Karras",
        "DPM2 a Karras",
        "DPM++ 2M Karras",
        "DPM++ SDE Karras",
        "DDIM",
        "PLMS",
    }


def test_karras_names_and_only_they_use_karras_sigmas():
    for s in SAMPLERS.values():
        assert s.options.get("use_karras_sigmas", False) == s.name.endswith("Karras"), s.name


def test_sampler_is_frozen_and_hashable():
    s = SAMPLERS["Euler"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cls = "DDIMScheduler"  # type: ignore[misc]
    assert hash(s) == hash(Sampler("Euler", "EulerDiscreteScheduler", dict(s.options)))


@pytest.mark.parametrize(
    ("typed", "name", "schedule"),
    [
        ("Euler Karras", "Euler Karras", "Karras"),
        ("euler a exponential", "Euler a Exponential", "Exponential"),
        ("DPM++ 2M sgm_uniform", "DPM++ 2M SGM Uniform", "SGM Uniform"),
        ("DPM++ 2M SGMUniform", "DPM++ 2M SGM Uniform", "SGM Uniform"),
        ("DPM2 a  Align Your Steps", "DPM2 a Align Your Steps", "Align Your Steps"),
        ("DPM++ 3M SDE Exponential", "DPM++ 3M SDE Exponential", "Exponential"),
        ("DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun Karras", "Karras"),
        ("Euler Normal", "Euler", ""),  # Normal is Uniform: the plain name
        ("LMS Polyexponential", "LMS Exponential", "Exponential"),  # rho 1: Exponential
        ("DPM++ 2M Automatic", "DPM++ 2M Karras", ""),  # A1111 1.10's own schedule for it
        ("DDIM Karras", "DDIM", ""),  # A1111 ignores the schedule type for DDIM
    ],
)
def test_a_schedule_type_after_the_name_is_that_schedule(typed, name, schedule):
    s = resolve_sampler(typed)
    assert s.name == name
    assert s.schedule_type == schedule or s.options.get("use_karras_sigmas")


def test_job_names_split_into_a1111_110s_two_fields():
    assert a1111_names(SAMPLERS["DPM++ 2M Karras"]) == ("DPM++ 2M", "Karras")
    assert a1111_names(SAMPLERS["DPM++ 2M"]) == ("DPM++ 2M", "Uniform")
    assert a1111_names(SAMPLERS["Euler a"]) == ("Euler a", "Uniform")
    assert a1111_names(resolve_sampler("DPM2 a Beta")) == ("DPM2 a", "Beta")
    for own in ("DDIM", "PLMS", "UniPC", "LCM"):
        assert a1111_names(SAMPLERS[own]) == (own, "Automatic")
    assert split_sampler("dpm++ 2m  karras") == ("DPM++ 2M", "Karras")
    assert split_sampler("Euler a") == ("Euler a", None)


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("Restart", "Heun, DPM++ 2M"),
        ("DPM fast", "DPM++ 2M, DPM++ SDE"),
        ("dpm adaptive", "DPM++ 2M, DPM++ SDE"),
        ("DPM adaptive Karras", "DPM++ 2M, DPM++ SDE"),
        ("Euler a CFG++", "Euler a"),
        ("DPM++ 2M CFG++", "DPM++ 2M"),
        ("DDIM CFG++", "DDIM"),
        ("Euler CFG++", "Euler"),
        ("Fancy CFG++", "Euler a, DPM++ 2M"),
    ],
)
def test_samplers_diffusers_lacks_are_one_line_saying_why_and_what_is_close(name, close):
    with pytest.raises(RecipeError) as info:
        resolve_sampler(name)
    msg = str(info.value)
    assert "\n" not in msg and info.value.field == "sampler"
    assert "sdbatch cannot run it: " in msg and "diffusers has no scheduler for it" in msg
    assert msg.endswith(f"; close samplers sdbatch runs: {close}")
    assert set(UNSUPPORTED) == {"Restart", "DPM fast", "DPM adaptive"}
