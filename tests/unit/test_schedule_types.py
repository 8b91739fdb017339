"""sdbatch.plan.schedule_types against A1111's own sigma arrays.

tests/data/a1111_sigmas.json holds what A1111 1.10's schedule functions (modules/sd_schedulers.py
on k-diffusion's CompVisDenoiser, float32 torch) return for each schedule type at 1, 2, 10, 20 and
30 steps, with and without "Discard penultimate sigma", for SD's beta schedule (plus a few other
step counts, overrides and a linear-beta model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdbatch.errors import RecipeError
from sdbatch.plan import schedule_types as st

DATA = json.loads((Path(__file__).parents[1] / "data" / "a1111_sigmas.json").read_text())
MODELS = {
    name: st.model_sigmas_from_betas(m["beta_start"], m["beta_end"], m["n"], m["schedule"])
    for name, m in DATA["models"].items()
}
_OVERRIDES = ("sigma_min", "sigma_max", "rho", "beta_alpha", "beta_beta")


def _case_id(c: dict) -> str:
    opts = ",".join(f"{k}={v}" for k, v in sorted(c["options"].items()))
    parts = [c["model"], c["schedule"], str(c["steps"]), c["family"]]
    parts += ["discard"] * c["discard_next_to_last"] + [opts] * bool(opts)
    return "-".join(parts)


@pytest.mark.parametrize("name", sorted(DATA["models"]))
def test_model_sigmas_match_a1111(name):
    expected = np.array(DATA["models"][name]["sigmas"], dtype=np.float32)
    got = MODELS[name]
    assert got.dtype == np.float32 and got.shape == (1000,)
    np.testing.assert_allclose(got, expected, rtol=2e-7, atol=0)  # 1 ulp: torch's float32 pow


@pytest.mark.parametrize("case", DATA["cases"], ids=_case_id)
def test_sigmas_match_a1111(case):
    kwargs = {k: case["options"][k] for k in _OVERRIDES if k in case["options"]}
    if case["schedule"] == "Automatic":
        kwargs["sampler"] = "Euler"  # no default of its own: model_wrap.get_sigmas
    got = st.sigmas(
        case["schedule"],
        case["steps"],
        MODELS[case["model"]],
        case["family"],
        case["discard_next_to_last"],
        **kwargs,
    )
    expected = np.array(case["sigmas"])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)


def test_oracle_covers_every_schedule_type_at_the_required_steps():
    seen = {
        (c["schedule"], c["steps"], c["discard_next_to_last"])
        for c in DATA["cases"]
        if c["model"] == "sd" and not c["options"]
    }
    for label in st.SCHEDULE_TYPES[1:]:
        for steps in (1, 2, 10, 20, 30):
            assert (label, steps, False) in seen and (label, steps, True) in seen


def test_schedule_types_are_a1111s_labels_in_its_order():
    assert st.SCHEDULE_TYPES == (
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
        "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
    )  # fmt: skip
    assert st.INTERNAL_NAMES["SGM Uniform"] == "sgm_uniform"
    assert st.INTERNAL_NAMES["Align Your Steps"] == "align_your_steps"


@pytest.mark.parametrize(
    "value, label",
    [
        ("Karras", "Karras"),
        ("karras", "Karras"),
        ("KARRAS", "Karras"),
        ("exponential", "Exponential"),
        ("sgm_uniform", "SGM Uniform"),
        ("SGMUniform", "SGM Uniform"),
        ("sgm uniform", "SGM Uniform"),
        ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"),
        ("Align Your Steps", "Align Your Steps"),
        ("polyexponential", "Polyexponential"),
        ("automatic", "Automatic"),
        ("ddim", "DDIM"),
        (" Beta ", "Beta"),
    ],
)
def test_parse_schedule_type(value, label):
    assert st.parse_schedule_type(value) == label


@pytest.mark.parametrize("value", ["Karas", "cosine", "", None, 7])
def test_parse_schedule_type_refuses_unknown_names_on_one_line(value):
    with pytest.raises(RecipeError) as err:
        st.parse_schedule_type(value)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"schedule_type: {value!r} is not allowed")
    assert "Automatic, Uniform, Karras" in message and "Beta" in message
    if value == "Karas":
        assert "closest match: 'Karras'" in message


@pytest.mark.parametrize(
    "sampler, schedule",
    [
        ("DPM++ 2M", "Karras"),
        ("DPM++ SDE", "Karras"),
        ("DPM++ 2S a", "Karras"),
        ("DPM2", "Karras"),
        ("DPM2 a", "Karras"),
        ("Restart", "Karras"),
        ("DPM++ 2M SDE", "Exponential"),
        ("DPM++ 2M SDE Heun", "Exponential"),
        ("DPM++ 3M SDE", "Exponential"),
        ("Euler a", "Uniform"),
        ("Euler", "Uniform"),
        ("LMS", "Uniform"),
        ("Heun", "Uniform"),
        ("LCM", "Uniform"),
        ("dpm++ 2m", "Karras"),
        # old names: the suffix is the schedule type
        ("DPM++ 2M Karras", "Karras"),
        ("LMS Karras", "Karras"),
        ("DPM++ 2M SDE Karras", "Karras"),
        ("DPM2 a Karras", "Karras"),
        ("Euler Exponential", "Exponential"),
        ("DPM++ 2M Automatic", "Karras"),
        # the schedule type is ignored
        ("DDIM", None),
        ("DDIM CFG++", None),
        ("PLMS", None),
        ("UniPC", None),
        ("DPM fast", None),
        ("DPM adaptive", None),
    ],
)
def test_resolve_automatic(sampler, schedule):
    assert st.resolve_automatic(sampler) == schedule


def test_resolve_automatic_refuses_unknown_samplers():
    with pytest.raises(RecipeError, match=r"^sampler: 'Euler b' is not allowed; known A1111"):
        st.resolve_automatic("Euler b")


def test_discards_next_to_last_sigma():
    assert st.discards_next_to_last_sigma("DPM2")
    assert st.discards_next_to_last_sigma("DPM2 a Karras")
    assert st.discards_next_to_last_sigma("DPM++ 3M SDE")
    assert not st.discards_next_to_last_sigma("DPM++ 2M Karras")
    assert not st.discards_next_to_last_sigma("Euler a")


def test_automatic_is_the_samplers_default_schedule():
    table = MODELS["sd"]
    np.testing.assert_array_equal(
        st.sigmas("Automatic", 20, table, sampler="DPM++ 2M"), st.sigmas("Karras", 20, table)
    )
    np.testing.assert_array_equal(
        st.sigmas("automatic", 20, table, sampler="DPM++ 2M SDE"),
        st.sigmas("Exponential", 20, table),
    )
    # DPM2 always discards the penultimate sigma, whatever the schedule type
    dpm2 = st.sigmas("Automatic", 20, table, sampler="DPM2")
    np.testing.assert_array_equal(dpm2, st.sigmas("Karras", 20, table, "sd1", True))
    assert len(dpm2) == 21
    np.testing.assert_array_equal(
        st.sigmas("Uniform", 20, table, sampler="DPM2"),
        st.sigmas("Uniform", 20, table, "sd1", True),
    )


def test_automatic_needs_a_sampler_that_uses_sigmas():
    table = MODELS["sd"]
    with pytest.raises(ValueError, match="pass sampler="):
        st.sigmas("Automatic", 20, table)
    with pytest.raises(ValueError, match="ignores the schedule type"):
        st.sigmas("Automatic", 20, table, sampler="DDIM")
    with pytest.raises(ValueError, match="ignores the schedule type"):
        st.sigmas("Karras", 20, table, sampler="UniPC")


def test_a1111_quirks_are_kept():
    table = MODELS["sd"]
    kl = st.sigmas("KL Optimal", 20, table)
    assert len(kl) == 21 and kl[-1] == pytest.approx(table[0])  # ends at sigma_min, not 0
    assert len(st.sigmas("DDIM", 30, table)) == 32  # 1000 // 30 = 33: 31 steps
    assert st.sigmas("DDIM", 20, table)[0] == pytest.approx(table[951])
    np.testing.assert_allclose(st.sigmas("Align Your Steps", 1, table), [0.029, 0.0])
    np.testing.assert_allclose(
        st.sigmas("Align Your Steps", 11, table, "sdxl")[:-1], st.AYS_SIGMAS["sdxl"]
    )
    np.testing.assert_allclose(st.sigmas("Normal", 20, table), st.sigmas("Uniform", 20, table))
    # rho reaches Karras and Polyexponential only; Polyexponential at rho 1 is Exponential
    np.testing.assert_array_equal(
        st.sigmas("Exponential", 20, table, rho=3.0), st.sigmas("Exponential", 20, table)
    )
    np.testing.assert_allclose(
        st.sigmas("Polyexponential", 20, table), st.sigmas("Exponential", 20, table), rtol=1e-12
    )


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "20"])
def test_sigmas_refuses_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        st.sigmas("Karras", steps, MODELS["sd"])


def test_sigmas_refuses_bad_tables_and_families():
    with pytest.raises(ValueError, match="model_sigmas"):
        st.sigmas("Karras", 20, MODELS["sd"][::-1])
    with pytest.raises(ValueError, match="family"):
        st.sigmas("Align Your Steps", 20, MODELS["sd"], "sd3")
    with pytest.raises(RecipeError, match="schedule_type"):
        st.sigmas("Karas", 20, MODELS["sd"])
