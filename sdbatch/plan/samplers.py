"""A1111 sampler names and schedule types -> diffusers schedulers.

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

Two readings of a sampler name
------------------------------
A job's sampler is one entry, named as A1111 < 1.9 named its samplers: "DPM++ 2M Karras" is
DPM++ 2M on the Karras schedule and a bare name ("DPM++ 2M") is the model's own, uniform,
schedule. That name is the manifest's ``sampler`` column and goes into job ids, and
``resolve_sampler`` reads it.

A recipe is read as A1111 1.9+ reads its two dropdowns (``plan_sampler``): ``sampler`` and
``schedule_type`` (default "Automatic", A1111's default). "Automatic" is the sampler's own
schedule in A1111 1.10 (``schedule_types.resolve_automatic``): Karras for DPM++ 2M, DPM++ SDE,
DPM++ 2S a, DPM2 and DPM2 a; Exponential for DPM++ 2M SDE, DPM++ 2M SDE Heun and DPM++ 3M SDE;
Uniform for the others. So ``sampler: DPM++ 2M`` renders what A1111 1.9+ renders for it, Karras,
and is the same job (the same id) as ``sampler: DPM++ 2M Karras``. The uniform schedule that a
bare name meant in sdbatch before schedule types (and in A1111 < 1.9) is ``schedule_type:
Uniform``, and those jobs keep their ids. A combined name takes "Automatic" or its own schedule
type; another one is an error, not a guess. A schedule type joins a job's identity only where it
changes the sigmas: Normal is Uniform and Polyexponential (rho 1) is Exponential for every model
sdbatch runs (no sigma or rho overrides), so they are the same jobs; DDIM, PLMS and UniPC step
over their own timesteps and, as in A1111, ignore the schedule type.

A schedule type that an old combined name covers runs as that name always has (diffusers'
``use_karras_sigmas`` for "DPM++ 2M Karras"). Any other is computed here, by
``schedule_types.sigmas`` on the model's sigma table (its scheduler config's betas), and
``sdbatch.render.schedulers.a1111_schedule`` hands those sigmas to the diffusers class:
``sigmas=`` for EulerDiscreteScheduler, the class's own step tables rebuilt on them for the
others. ``schedule_type_table()`` is the resulting sampler x schedule type table (Markdown).
Samplers diffusers has no scheduler for (Restart, DPM fast, DPM adaptive, the CFG++ variants)
are a one-line RecipeError naming close ones sdbatch runs.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field

from sdbatch.errors import RecipeError
from sdbatch.plan.schedule_types import (
    A1111_SAMPLERS,
    INTERNAL_NAMES,
    SCHEDULE_TYPES,
    parse_schedule_type,
    resolve_automatic,
)


@dataclass(frozen=True)
class Sampler:
    name: str  # the job's name, A1111 < 1.9's style, e.g. "DPM++ 2M Karras" (see above)
    cls: str  # diffusers scheduler class name
    options: dict = field(default_factory=dict, hash=False)  # kwargs for Cls.from_config
    exact: bool = True
    note: str = ""
    # An A1111 schedule diffusers lacks, by its key in sdbatch.render.schedulers.SCHEDULES:
    # "discard_next_to_last_sigma" (the DPM2 family) or "a1111_grid" (DDIM, PLMS).
    a1111_schedule: str = ""
    # An A1111 schedule type sdbatch computes (schedule_types.sigmas, the sampler's own discard
    # included) and hands the class (sdbatch.render.schedulers.a1111_schedule); "": its own.
    schedule_type: str = ""

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
_3M_NOTE = (
    "diffusers' third-order SDE step (DPMSolverMultistepScheduler, sde-dpmsolver++, order 3) "
    "weighs the second difference differently from k-diffusion's sample_dpmpp_3m_sde, and "
    "below 15 steps takes a second-order step where k-diffusion's penultimate one is third "
    "order; " + _BROWNIAN
)
_LCM_NOTE = (
    "diffusers' LCMScheduler picks whole timesteps of LCM's 50-step grid (999, 759, 499, 259 at "
    "4 steps); A1111 spreads its steps evenly over that grid, between its points too (999, "
    "672.3, 345.7, 19), and its noise stream differs"
)
_UNIFORM_CUSTOM = {"schedule_type": "Uniform"}  # A1111's uniform sigmas, computed by sdbatch

# Samplers added after the table above (A1111 1.6+), in A1111 1.10's order. No old jobs to
# keep: their uniform schedule is A1111's own (computed by sdbatch), not diffusers' grid.
_ADDED = [
    Sampler(
        "DPM++ 2M SDE Heun",
        "DPMSolverMultistepScheduler",
        {**_2M_SDE, "solver_type": "heun", **_K},
        False,
        _BROWNIAN,
        **_UNIFORM_CUSTOM,
    ),
    Sampler(
        "DPM++ 3M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, **_K},
        False,
        _3M_NOTE,
        **_UNIFORM_CUSTOM,
    ),
    Sampler(
        "LCM",
        "LCMScheduler",
        {"original_inference_steps": 50, "timestep_scaling": 10.0},
        False,
        _LCM_NOTE,
    ),
]
SAMPLERS: dict[str, Sampler] = {s.name: s for s in _TABLE + _ADDED}

# Keys of a model's scheduler config that choose a sampler or its schedule rather than describe the
# model (betas, prediction_type, ...). Dropped before from_config so the table alone decides them.
SAMPLER_KEYS = frozenset(
    "timestep_spacing steps_offset use_karras_sigmas use_exponential_sigmas use_beta_sigmas "
    "use_lu_lambdas algorithm_type solver_order solver_type lower_order_final euler_at_final "
    "final_sigmas_type noise_sampler_seed interpolation_type skip_prk_steps set_alpha_to_one "
    "clip_sample thresholding predict_x0 disable_corrector solver_p lambda_min_clipped "
    "original_inference_steps timestep_scaling".split()  # the last two: LCM's
)

# --- A1111's samplers: the ones sdbatch runs, the ones it cannot --------------------------

# A1111 1.10's samplers sdbatch runs (their bare entries above), in A1111's order.
BASE_SAMPLERS: tuple[str, ...] = tuple(n for n in A1111_SAMPLERS if n in SAMPLERS)
# These step over their own timesteps; A1111 ignores the schedule type for them, and so do we.
OWN_TIMESTEPS = frozenset({"DDIM", "PLMS", "UniPC"})
# The sampler's own schedule, not one of A1111's schedule types: only Automatic (= Uniform).
_OWN_SCHEDULE_ONLY = frozenset({"LCM"})

# A1111 samplers without a diffusers scheduler: why, and close samplers sdbatch runs.
UNSUPPORTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "DPM fast": (
        "k-diffusion's DPM-Solver-fast picks its own orders and steps from sigma_min and sigma_max",
        ("DPM++ 2M", "DPM++ SDE"),
    ),
    "DPM adaptive": (
        "k-diffusion's adaptive DPM-Solver chooses its own number of steps by error control",
        ("DPM++ 2M", "DPM++ SDE"),
    ),
    "Restart": (
        "A1111's Restart sampler runs Heun steps with jumps back to higher noise",
        ("Heun", "DPM++ 2M"),
    ),
}
_CFGPP = (
    "CFG++ renoises each step with the unconditional prediction instead of the guided one, "
    "inside the sampler's step"
)
# Normal and Polyexponential give the same sigmas as these (no overrides; rho 1): same jobs.
SAME_SCHEDULE = {"Normal": "Uniform", "Polyexponential": "Exponential"}

# diffusers classes sdbatch can hand a computed schedule (sdbatch.render.schedulers) -> the
# schedule types they cannot run, and why. Classes not listed take none.
_KL = (
    "A1111's KL Optimal stops at sigma_min (no last step to 0), and {cls}'s tables end with a "
    "step to sigma 0"
)
CUSTOM_SCHEDULES: dict[str, dict[str, str]] = {
    "EulerDiscreteScheduler": {},
    "EulerAncestralDiscreteScheduler": {},
    "LMSDiscreteScheduler": {},
    "HeunDiscreteScheduler": {"KL Optimal": _KL},
    "KDPM2DiscreteScheduler": {"KL Optimal": _KL},
    "KDPM2AncestralDiscreteScheduler": {"KL Optimal": _KL},
    "DPMSolverSDEScheduler": {"KL Optimal": _KL},
    "DPMSolverMultistepScheduler": {"KL Optimal": _KL},
}
_OWN_ONLY_WHY = "{base} samples over its own timestep table, and {cls} takes no other schedule"
# What an exactly scheduled sampler still does differently from A1111 (not its grid).
_SOLVER_NOTES = {
    "DPM++ 2S a": _2SA_NOTE,
    "DPM++ 2M SDE": _BROWNIAN,
    "DPM++ 2M SDE Heun": _BROWNIAN,
    "DPM++ 3M SDE": _3M_NOTE,
}


def _key(name: str) -> str:
    return "".join(name.split()).casefold()


_BY_KEY = {_key(name): s for name, s in SAMPLERS.items()}
_BASE_KEYS = {_key(name): name for name in BASE_SAMPLERS}
_UNSUPPORTED_KEYS = {_key(name): name for name in UNSUPPORTED}


def _spellings(label: str) -> set[str]:
    extra = {"SGMUniform"} if label == "SGM Uniform" else set()  # A1111's alias
    return {_key(label), _key(INTERNAL_NAMES[label])} | {_key(x) for x in extra}


# "<sampler><schedule type>", whitespace and case aside -> (sampler, schedule type)
_COMBINED: dict[str, tuple[str, str]] = {}
for _base in (*BASE_SAMPLERS, *UNSUPPORTED):
    for _label in SCHEDULE_TYPES:
        for _spelling in _spellings(_label):
            assert _key(_base) + _spelling not in _COMBINED, (_base, _label)
            _COMBINED[_key(_base) + _spelling] = (_base, _label)


def _known() -> str:
    return "known samplers: " + ", ".join(SAMPLERS)


def _unsupported(typed: object, why: str, close: tuple[str, ...]) -> RecipeError:
    return RecipeError(
        "sampler", typed, f"sdbatch cannot run it: {why}, and diffusers has no scheduler for it; "
        f"close samplers sdbatch runs: {', '.join(close)}",
    )  # fmt: skip


def split_sampler(name: str) -> tuple[str, str | None]:
    """(A1111 1.10's sampler, the schedule type a combined name carries or None):
    "dpm++ 2m  karras" -> ("DPM++ 2M", "Karras"), "Euler a" -> ("Euler a", None). Case and
    whitespace do not matter. A sampler sdbatch cannot run, or does not know, is a RecipeError."""
    if not isinstance(name, str) or len(name.strip().splitlines()) > 1:
        raise RecipeError("sampler", name, _known())  # a line break is no spelling of a name
    key = _key(name)
    if key in _BASE_KEYS:
        return _BASE_KEYS[key], None
    hit = _COMBINED.get(key)
    base = hit[0] if hit else _UNSUPPORTED_KEYS.get(key)
    if base in UNSUPPORTED:
        why, close = UNSUPPORTED[base]
        raise _unsupported(name, f"{why}", close)
    if key.endswith("cfg++"):
        stem = _BASE_KEYS.get(key.removesuffix("cfg++"))
        raise _unsupported(name, _CFGPP, (stem,) if stem else ("Euler a", "DPM++ 2M"))
    if hit:
        return hit
    allowed = _known()
    close = difflib.get_close_matches(key, list(_BY_KEY), n=1, cutoff=0.5)
    if close:
        allowed += f"; closest match: {_BY_KEY[close[0]].name!r}"
    raise RecipeError("sampler", name, allowed)


def _cannot(base: str, label: str) -> str | None:
    """Why ``base`` cannot run the schedule type ``label`` (canonical, not Automatic), or None."""
    if base in OWN_TIMESTEPS:
        return None
    cls = SAMPLERS[base].cls
    if base in _OWN_SCHEDULE_ONLY:
        return None if label == "Uniform" else _OWN_ONLY_WHY.format(base=base, cls=cls)
    name = base if label == "Uniform" else f"{base} {label}"
    if name in SAMPLERS:
        return None
    blocked = CUSTOM_SCHEDULES.get(cls)
    if blocked is None:
        return f"diffusers' {cls} takes no schedule from outside"
    why = blocked.get(label)
    return why.format(cls=cls) if why else None


def _takes(base: str) -> list[str]:
    return [x for x in SCHEDULE_TYPES if x == "Automatic" or not _cannot(base, _same(x))]


def _same(label: str) -> str:
    return SAME_SCHEDULE.get(label, label)


@functools.cache
def _entry(base: str, label: str | None) -> Sampler:
    """The job's sampler for A1111 1.10's ``base`` on schedule type ``label`` (None or
    "Automatic": the sampler's own)."""
    bare = SAMPLERS[base]
    if base in OWN_TIMESTEPS:
        return bare
    if label in (None, "Automatic"):
        label = resolve_automatic(base)
    label = _same(label)
    why = _cannot(base, label)
    if why:
        runs = [b for b in BASE_SAMPLERS if b not in OWN_TIMESTEPS and not _cannot(b, label)]
        raise RecipeError(
            "schedule_type", label, f"sampler {base} cannot run it ({why}); {base} takes "
            f"{', '.join(_takes(base))}; {label} runs with {', '.join(runs) or 'no sampler'}",
        )  # fmt: skip
    name = base if label == "Uniform" else f"{base} {label}"
    if name in SAMPLERS:
        return SAMPLERS[name]
    note = _SOLVER_NOTES.get(base, "")
    return Sampler(name, bare.cls, bare.options, not note, note, schedule_type=label)


def resolve_sampler(name: str) -> Sampler:
    """The sampler of a job's name (A1111 < 1.9's reading: a bare name is the uniform schedule):
    "DPM++ 2M Karras", "dpm++ 2m  karras", "Euler a", "Euler Exponential". Case and whitespace do
    not matter; an unknown name is a RecipeError listing the known ones and the closest."""
    base, suffix = split_sampler(name)
    return _entry(base, "Uniform" if suffix is None else suffix)


def plan_sampler(sampler: str, schedule_type: object = "Automatic") -> Sampler:
    """The job's sampler for a recipe's ``sampler`` and ``schedule_type``, read as A1111 1.9+
    reads them: "Automatic" is the sampler's own schedule type (DPM++ 2M: Karras), a combined
    name ("DPM++ 2M Karras") carries its own, and a schedule type a sampler cannot run is a
    one-line RecipeError naming both and the ones that work."""
    base, suffix = split_sampler(sampler)
    label = parse_schedule_type(schedule_type)
    if suffix not in (None, "Automatic") and base not in OWN_TIMESTEPS:
        if label != "Automatic" and _same(label) != _same(suffix):
            raise RecipeError(
                "schedule_type", schedule_type, f"sampler {sampler!r} already names the "
                f"{suffix} schedule; write sampler: {base} with schedule_type: {label}, or "
                "leave schedule_type at Automatic",
            )  # fmt: skip
        label = suffix
    return _entry(base, label)


def plan_samplers(samplers: list, schedule_types: list) -> list[Sampler]:
    """Every sampler x schedule type of a recipe's two axes, sampler-major, each job's sampler
    once (``DPM++ 2M`` and ``DPM++ 2M Karras`` are one; DDIM ignores the schedule type)."""
    if not schedule_types:
        raise RecipeError(
            "schedule_type", schedule_types, "at least one value (Automatic: each sampler's own)"
        )
    out = [plan_sampler(str(s), t) for s in samplers for t in schedule_types]
    return list(dict.fromkeys(out))


_VERSION = re.compile(r"v(\d+)\.(\d+)")


def _splits_schedule_type(version: str | None) -> bool:
    """Did this A1111 write "Schedule type" (1.9+)? Forge's "f2.0.1v1.10.1-..." counts."""
    m = _VERSION.search(version or "")
    return bool(m) and (int(m[1]), int(m[2])) >= (1, 9)


def from_infotext(sampler: str, schedule_type: str | None = None, version: str | None = None):
    """The sampler A1111 ran for an infotext's ``Sampler``, ``Schedule type`` and ``Version``.

    A1111 1.9+ always writes ``Schedule type`` ("Automatic": the sampler's own, per 1.10's
    table); a combined name's suffix wins over it, as in A1111. Without one (A1111 < 1.9, or
    sdbatch before schedule types) the name is read the old way: a bare name is the uniform
    schedule. A 1.9+ ``Version`` without the field means Automatic, as A1111 itself reads it.
    """
    base, suffix = split_sampler(sampler)
    if suffix is not None:
        return _entry(base, suffix)
    if schedule_type is None or not str(schedule_type).strip():
        return _entry(base, "Automatic" if _splits_schedule_type(version) else "Uniform")
    return _entry(base, parse_schedule_type(str(schedule_type).strip()))


def a1111_names(s: Sampler) -> tuple[str, str]:
    """What A1111 1.10 writes for this job: (``Sampler``, ``Schedule type``), e.g. ("DPM++ 2M",
    "Karras") for "DPM++ 2M Karras" and ("DPM++ 2M", "Uniform") for the bare "DPM++ 2M".
    Samplers on their own timesteps (DDIM, PLMS, UniPC, LCM) write "Automatic"."""
    base, suffix = split_sampler(s.name)
    if base in OWN_TIMESTEPS or base in _OWN_SCHEDULE_ONLY:
        return base, "Automatic"
    return base, _same(suffix or "Uniform")


def recipe_fields(s: Sampler) -> dict[str, str]:
    """The recipe keys that plan exactly this sampler: ``{"sampler": "DPM++ 2M Karras"}``, or,
    where the bare name would now mean A1111 1.9+'s Automatic, ``{"sampler": "DPM++ 2M",
    "schedule_type": "Uniform"}``."""
    if plan_sampler(s.name) == s:
        return {"sampler": s.name}
    sampler, schedule = a1111_names(s)
    return {"sampler": sampler, "schedule_type": schedule}


def scheduler_spec(s: Sampler) -> str:
    """Stable text for the manifest and job ids: ``Cls(key=value, ...)``, keys sorted.

    Lists the A1111 schedule (e.g. ``a1111_grid=True``) where it replaces the class's own, and
    a schedule type sdbatch computes (``schedule_type='Karras'``).
    """
    options = {**s.options, **({s.a1111_schedule: True} if s.a1111_schedule else {})}
    if s.schedule_type:
        options["schedule_type"] = s.schedule_type
    return f"{s.cls}({', '.join(f'{k}={v!r}' for k, v in sorted(options.items()))})"


def schedule_type_table() -> str:
    """The sampler x schedule type table (Markdown) for the docs: what sdbatch runs of each
    A1111 1.10 combination, "exact", "approximate" (the sampler entry's note says why) or "not
    possible" (a RecipeError); "ignored" where A1111 ignores the schedule type too."""
    head = ["sampler", *SCHEDULE_TYPES]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for base in BASE_SAMPLERS:
        cells = [base]
        for label in SCHEDULE_TYPES:
            if base in OWN_TIMESTEPS:
                cells.append("own timesteps" if label == "Automatic" else "ignored")
                continue
            try:
                s = _entry(base, label)
            except RecipeError:
                cells.append("not possible")
                continue
            cell = "exact" if s.exact else "approximate"
            if label == "Automatic":
                cell = f"{a1111_names(s)[1] if base not in _OWN_SCHEDULE_ONLY else 'own'}: {cell}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    same = ", ".join(f"{a} is {b}" for a, b in SAME_SCHEDULE.items())
    lines += [
        "",
        f"{same} (the same jobs). Not runnable (diffusers has no scheduler for them): "
        f"{', '.join(UNSUPPORTED)} and the CFG++ variants (Euler a CFG++, DPM++ 2M CFG++, "
        "DDIM CFG++, ...).",
    ]
    return "\n".join(lines) + "\n"
