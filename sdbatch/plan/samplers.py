"""A1111 sampler names -> diffusers schedulers.

A pure table: importing this module imports neither torch nor diffusers;
``sdbatch.render.schedulers.build_scheduler`` makes the diffusers scheduler of an entry.

``exact=True`` means diffusers runs the same solver as A1111 (k-diffusion / CompVis code) on the
same sigma schedule (checked at 20 steps against k-diffusion's formulas, relative error < 1e-4)
with the same kind of noise. Images still differ from A1111's in their noise *values*, because the
random streams differ, and some diffusers classes feed the UNet a rounded timestep.

Every entry pins the options that decide the schedule (``timestep_spacing`` and friends), and
``build_scheduler`` (in ``sdbatch.render.schedulers``) drops those keys from the model's
scheduler config first, so a model shipping e.g. ``use_karras_sigmas=True`` or SDXL's
``timestep_spacing="leading"`` does not change what "Euler" means. A1111 ignores the model's
scheduler config too.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from sdbatch.errors import RecipeError


@dataclass(frozen=True)
class Sampler:
    name: str  # A1111's name, e.g. "DPM++ 2M Karras"
    cls: str  # diffusers scheduler class name
    options: dict = field(default_factory=dict, hash=False)  # kwargs for Cls.from_config
    exact: bool = True
    note: str = ""
    # An A1111 schedule diffusers lacks, by its key in sdbatch.render.schedulers.SCHEDULES:
    # "discard_next_to_last_sigma" (the DPM2 family) or "a1111_grid" (DDIM, PLMS).
    a1111_schedule: str = ""

    def __post_init__(self) -> None:  # an own copy: entries below share their option dicts
        object.__setattr__(self, "options", dict(self.options))


# k-diffusion samplers: A1111 spaces sigmas over t = linspace(999, 0, steps) ("linspace").
_K = {"timestep_spacing": "linspace"}
_KARRAS = {**_K, "use_karras_sigmas": True}
# DDIM/PLMS: diffusers' leading grid (t = 1, 51, ..., 951 at 20 steps), which a1111_grid replaces
# by A1111's own (sdbatch.render.schedulers): the same points when 1000 is a multiple of steps.
_COMPVIS = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

# A1111 computes steps+1 sigmas and drops the next-to-last one (sdbatch.render.schedulers).
_DPM2 = {"a1111_schedule": "discard_next_to_last_sigma"}
_2SA_NOTE = (
    "no DPM++ 2S a in diffusers; uses DPMSolverSDEScheduler (A1111's DPM++ SDE): the same "
    "DPM-Solver++(2S) step, two UNet calls a step, ancestral noise at each step's end, but DPM++ "
    "SDE also noises its midpoint and puts it between sigma and sigma_next instead of sigma_down "
    "(the two samplers coincide only at eta=0), and its noise comes from per-image Brownian trees"
)
_2M_GRID = (
    "diffusers' linspace grid for this class ends at t~999/steps then jumps to sigma 0; A1111's "
    "ends at t=0 (sigma 0.03) then 0"
)
_BROWNIAN = (
    "A1111 draws the SDE noise from a per-image Brownian tree; diffusers draws Gaussian noise "
    "from the per-image generator each step (same distribution, different values)"
)

_TABLE = [  # A1111 1.5's order (sd_samplers_kdiffusion.py, then DDIM, PLMS, UniPC)
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", _K),
    Sampler("Euler", "EulerDiscreteScheduler", _K),
    Sampler("LMS", "LMSDiscreteScheduler", _K),
    Sampler("Heun", "HeunDiscreteScheduler", _K),
    Sampler("DPM2", "KDPM2DiscreteScheduler", _K, **_DPM2),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", _K, **_DPM2),
    Sampler("DPM++ 2S a", "DPMSolverSDEScheduler", _K, False, _2SA_NOTE),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {**_2M, **_K}, False, _2M_GRID),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", _K),
    Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {**_2M_SDE, **_K},
        False,
        f"{_2M_GRID}; {_BROWNIAN}",
    ),
    Sampler("LMS Karras", "LMSDiscreteScheduler", _KARRAS),
    Sampler("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS, **_DPM2),
    Sampler("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS, **_DPM2),
    Sampler("DPM++ 2S a Karras", "DPMSolverSDEScheduler", _KARRAS, False, _2SA_NOTE),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_2M, **_KARRAS}),
    Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS),
    Sampler(
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {**_2M_SDE, **_KARRAS},
        False,
        _BROWNIAN,
    ),
    Sampler(
        "DDIM", "DDIMScheduler", {**_COMPVIS, "clip_sample": False}, a1111_schedule="a1111_grid"
    ),
    Sampler(
        "PLMS", "PNDMScheduler", {**_COMPVIS, "skip_prk_steps": True}, a1111_schedule="a1111_grid"
    ),
    Sampler(
        "UniPC",
        "UniPCMultistepScheduler",
        # final_sigmas_type="sigma_min": A1111 stops at t=1/1000 without a final denoise (and bh1
        # with diffusers' default final sigma 0 returns NaN).
        {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min", **_K},
        False,
        "A1111's defaults (order 3, bh1, time-uniform grid); A1111 steps through fractional "
        "timesteps (e.g. 749.25), diffusers rounds them to integers",
    ),
]
SAMPLERS: dict[str, Sampler] = {s.name: s for s in _TABLE}

# Keys of a model's scheduler config that choose a sampler or its schedule rather than describe the
# model (betas, prediction_type, ...). Dropped before from_config so the table alone decides them.
SAMPLER_KEYS = frozenset(
    "timestep_spacing steps_offset use_karras_sigmas use_exponential_sigmas use_beta_sigmas "
    "use_lu_lambdas algorithm_type solver_order solver_type lower_order_final euler_at_final "
    "final_sigmas_type noise_sampler_seed interpolation_type skip_prk_steps set_alpha_to_one "
    "clip_sample thresholding predict_x0 disable_corrector solver_p lambda_min_clipped".split()
)


def _key(name: str) -> str:
    return "".join(name.split()).casefold()


_BY_KEY = {_key(name): s for name, s in SAMPLERS.items()}


def resolve_sampler(name: str) -> Sampler:
    """The sampler for an A1111 name; case and whitespace do not matter ("dpm++ 2m  karras")."""
    if isinstance(name, str) and _key(name) in _BY_KEY:
        return _BY_KEY[_key(name)]
    allowed = "known samplers: " + ", ".join(SAMPLERS)
    close = difflib.get_close_matches(_key(str(name)), list(_BY_KEY), n=1, cutoff=0.5)
    if close:
        allowed += f"; closest match: {_BY_KEY[close[0]].name!r}"
    raise RecipeError("sampler", name, allowed)


def scheduler_spec(s: Sampler) -> str:
    """Stable text for the manifest and job ids: ``Cls(key=value, ...)``, keys sorted.

    Lists the A1111 schedule (e.g. ``a1111_grid=True``) where it replaces the class's own.
    """
    options = {**s.options, **({s.a1111_schedule: True} if s.a1111_schedule else {})}
    return f"{s.cls}({', '.join(f'{k}={v!r}' for k, v in sorted(options.items()))})"
