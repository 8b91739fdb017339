"""The A1111 sampler table: names, lookup, errors and spec strings. No torch here."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from sdbatch.errors import RecipeError, UserError
from sdbatch.plan.samplers import SAMPLERS, Sampler, resolve_sampler, scheduler_spec

A1111_NAMES = [  # A1111's dropdown order (1.5), less DPM fast / DPM adaptive
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
