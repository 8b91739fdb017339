"""A1111's "Schedule type" (1.9+): the sigma schedules, computed as A1111 1.10 computes them.

A1111 1.9 split the sampler from its noise schedule (infotext ``Sampler: DPM++ 2M, Schedule
type: Karras``). This module rebuilds each schedule type from the model's sigma table with Python
and numpy only (no torch), following A1111's ``modules/sd_schedulers.py`` and the k-diffusion
functions it calls (``get_sigmas_karras`` and friends, ``DiscreteSchedule.get_sigmas``,
``sigma_to_t``, ``t_to_sigma``), driven the way ``KDiffusionSampler.get_sigmas`` drives them.
``tests/data/a1111_sigmas.json`` holds A1111's own arrays (float32 torch) for the unit tests.

``sigmas()`` returns what A1111 hands its k-diffusion sampler: a decreasing float64 array, in
most cases ``steps + 1`` values ending in 0. Its exceptions, kept because A1111 has them:

* **KL Optimal** ends at the model's sigma_min (0.0292 for SD), not 0: A1111 appends no zero, so
  its samplers stop with that little noise left in the image.
* **DDIM** takes every ``1000 // steps``-th table entry from t=1 up, so it has ``steps + 1``
  values only where 1000 is a multiple of ``steps`` (30 steps give 32 values: 31 sampler steps),
  and it starts at t=951 (20 steps), never at the table's top; one step is [sigma(t=1), 0].
* **Align Your Steps** ignores the model: it interpolates NVIDIA's 11-value table (SD 1.5's or
  SDXL's, by ``family``) log-linearly to ``steps`` values, and 1 step is [0.029, 0].
* **Beta** and **Karras** / **Exponential** / **Polyexponential** / **KL Optimal** / **SGM
  Uniform** / **Normal** span [sigma_min, sigma_max] of the model, or the overrides A1111 writes
  as ``Schedule min sigma`` / ``Schedule max sigma``; **Uniform**, **Simple**, **DDIM** and
  Align Your Steps ignore those overrides, as in A1111. ``rho`` (``Schedule rho``) only reaches
  Karras (default 7) and Polyexponential (default 1, where it equals Exponential).
* **Normal** equals Uniform and **SGM Uniform** is Uniform over ``steps + 1`` points with the last
  dropped, for a model whose sigma_min / sigma_max are its own table's ends.

``discard_next_to_last`` is A1111's "Discard penultimate sigma": the schedule is built for
``steps + 1`` and its next-to-last value dropped. The DPM2 family and DPM++ 3M SDE always do it.

**Automatic** (A1111's default) is the sampler's own ``scheduler`` option, or, for a k-diffusion
sampler without one, ``model_wrap.get_sigmas(steps)``: the Uniform schedule.
``resolve_automatic`` gives A1111 1.10's table: Karras for DPM++ 2M, DPM++ SDE, DPM++ 2S a, DPM2,
DPM2 a and Restart; Exponential for DPM++ 2M SDE, DPM++ 2M SDE Heun and DPM++ 3M SDE; Uniform for
Euler, Euler a, LMS, Heun and LCM. An old name with a schedule suffix ("DPM++ 2M Karras") gives
its suffix, as A1111's ``get_sampler_and_scheduler`` reads it. DDIM, DDIM CFG++, PLMS and UniPC
step over their own timestep grid and DPM fast / DPM adaptive take only sigma_min and
sigma_max: A1111 ignores the schedule type for them, and ``resolve_automatic`` returns None.

Which schedule types diffusers (0.42) can run on these sigmas, checked by setting each class's
schedule and reading back its ``sigmas`` (20 steps, SD's betas):

| scheduler | takes | exact | approximate | not possible |
| --- | --- | --- | --- | --- |
| EulerDiscrete | ``sigmas=`` | all, KL Optimal end included | | |
| DPMSolverMultistep [1] | ``timesteps=`` (int) [2] | Simple, DDIM [3] | the rest | KL Optimal end |
| HeunDiscrete | ``timesteps=`` (float) [4] | all but KL Optimal end | | KL Optimal end |
| UniPCMultistep | ``sigmas=``, flow models only | | | all (SD, SDXL) |
| EulerAncestral, LMS, KDPM2, KDPM2Ancestral, DPMSolverSDE, DEIS | neither | | | all [5] |
| DDIM, PNDM | neither | | | not applicable [6] |

1. And DPMSolverSinglestep, the same way.
2. Cast to int; sigma = the table interpolated *linearly* in t; a final 0 is appended.
3. Table entries at whole t. Uniform / Normal / SGM Uniform are exact too where their t are
   whole (10 steps), else close (Uniform, 20 steps: 5e-3 relative); Karras 20 steps: 4e-2.
4. Fractional t, interpolated linearly (k-diffusion: log-linearly), a final 0 appended. Exact
   sigmas (1e-7) need t chosen so that diffusers' linear interpolation lands on them, which
   hands the UNet a t a fraction of a step off k-diffusion's; k-diffusion's t give 3e-3 (Karras).
5. Through the API; a subclass that replaces ``set_timesteps``, as ``sdbatch.render.schedulers``
   does for KDPM2, can run any of them.
6. A1111 ignores the schedule type for DDIM and PLMS.

"Exact" is up to diffusers' own sigma table, which builds its betas in float32 and so sits up to
9e-6 (relative) from A1111's. StableDiffusionPipeline and StableDiffusionXLPipeline pass
``sigmas=`` / ``timesteps=`` to ``set_timesteps`` and raise ValueError for a scheduler whose
``set_timesteps`` lacks the parameter.

``model_sigmas_from_betas`` builds the table as A1111 does: the CompVis beta schedule and its
cumulative product in float64, alphas_cumprod stored as float32, the sigmas in float32 (within
1 ulp of torch's float32 ``** 0.5``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import numpy as np

from sdbatch.errors import RecipeError

# A1111's labels (what infotext writes), in A1111's order, and its internal names.
SCHEDULE_TYPES: tuple[str, ...] = (
    "Automatic",
    "Uniform",
    "Karras",
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
)
INTERNAL_NAMES: dict[str, str] = {
    label: label.lower().replace(" ", "_") for label in SCHEDULE_TYPES
}  # "SGM Uniform" -> "sgm_uniform", "Align Your Steps" -> "align_your_steps", ...
_ALIASES = {"SGMUniform": "SGM Uniform"}  # A1111's alias list

# rho defaults (A1111's Scheduler.default_rho); only these two take a rho.
_DEFAULT_RHO = {"Karras": 7.0, "Polyexponential": 1.0}

# NVIDIA's Align Your Steps tables, as A1111 ships them (SDXL for SDXL models, else SD 1.5).
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}

BETA_ALPHA = BETA_BETA = 0.6  # A1111's beta_dist_alpha / beta_dist_beta defaults

# A1111 1.10's samplers -> (schedule type for Automatic, or None where the schedule type is
# ignored; discard_next_to_last_sigma). k-diffusion samplers first, then LCM, then the
# timestep samplers (sd_samplers_kdiffusion.py, sd_samplers_lcm.py, sd_samplers_timesteps.py).
A1111_SAMPLERS: dict[str, tuple[str | None, bool]] = {
    "DPM++ 2M": ("Karras", False),
    "DPM++ SDE": ("Karras", False),
    "DPM++ 2M SDE": ("Exponential", False),
    "DPM++ 2M SDE Heun": ("Exponential", False),
    "DPM++ 2S a": ("Karras", False),
    "DPM++ 3M SDE": ("Exponential", True),
    "Euler a": ("Uniform", False),
    "Euler": ("Uniform", False),
    "LMS": ("Uniform", False),
    "Heun": ("Uniform", False),
    "DPM2": ("Karras", True),
    "DPM2 a": ("Karras", True),
    "DPM fast": (None, False),
    "DPM adaptive": (None, False),
    "Restart": ("Karras", False),
    "LCM": ("Uniform", False),
    "DDIM": (None, False),
    "DDIM CFG++": (None, False),
    "PLMS": (None, False),
    "UniPC": (None, False),
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch not in " _-")


_BY_KEY: dict[str, str] = {
    **{_key(label): label for label in SCHEDULE_TYPES},
    **{_key(name): label for label, name in INTERNAL_NAMES.items()},
    **{_key(alias): label for alias, label in _ALIASES.items()},
}
_SAMPLER_KEYS = {_key(name): name for name in A1111_SAMPLERS}


def parse_schedule_type(value: object) -> str:
    """A1111's label for a schedule type: its label or internal name, case, spaces and
    underscores aside ("karras", "sgm_uniform", "Align Your Steps", "SGMUniform")."""
    if isinstance(value, str) and _key(value) in _BY_KEY:
        return _BY_KEY[_key(value)]
    allowed = "known schedule types: " + ", ".join(SCHEDULE_TYPES)
    close = difflib.get_close_matches(_key(str(value)), list(_BY_KEY), n=1, cutoff=0.6)
    if close:
        allowed += f"; closest match: {_BY_KEY[close[0]]!r}"
    raise RecipeError("schedule_type", value, allowed)


def _split_sampler(sampler_name: str) -> tuple[str, str | None]:
    """(A1111 sampler, schedule type from an old-style suffix such as " Karras", or None)."""
    if not isinstance(sampler_name, str):
        raise RecipeError("sampler", sampler_name, "a sampler name, e.g. 'DPM++ 2M'")
    name = " ".join(sampler_name.split())
    if _key(name) in _SAMPLER_KEYS:
        return _SAMPLER_KEYS[_key(name)], None
    spellings = [(label, label) for label in SCHEDULE_TYPES]
    spellings += [(name_, label) for label, name_ in INTERNAL_NAMES.items()]
    spellings += list(_ALIASES.items())
    for suffix, label in spellings:
        if name.casefold().endswith(" " + suffix.casefold()):
            base = name[: -len(suffix) - 1]
            if _key(base) in _SAMPLER_KEYS:
                return _SAMPLER_KEYS[_key(base)], label
    allowed = "known A1111 samplers: " + ", ".join(A1111_SAMPLERS)
    raise RecipeError("sampler", sampler_name, allowed)


def resolve_automatic(sampler_name: str) -> str | None:
    """The schedule type A1111 1.10 runs for "Automatic" with this sampler (see the module
    docstring), or None for a sampler that ignores the schedule type. An old name with a
    schedule suffix ("DPM++ 2M Karras", "LMS Karras") gives its suffix."""
    sampler, suffix = _split_sampler(sampler_name)
    if suffix is not None and suffix != "Automatic":
        return suffix
    return A1111_SAMPLERS[sampler][0]


def discards_next_to_last_sigma(sampler_name: str) -> bool:
    """Whether A1111 always drops the penultimate sigma for this sampler (DPM2, DPM2 a, their
    Karras names, DPM++ 3M SDE)."""
    return A1111_SAMPLERS[_split_sampler(sampler_name)[0]][1]


def model_sigmas_from_betas(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    n: int = 1000,
    schedule: str = "scaled_linear",
) -> np.ndarray:
    """The model's sigma table, ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, index = timestep.

    ``schedule`` uses diffusers' names: "scaled_linear" (SD 1.x, SD 2.x, SDXL; ldm's "linear":
    betas = linspace(sqrt(start), sqrt(end)) ** 2) or "linear" (betas = linspace(start, end)).
    Computed as A1111 does: betas and their cumulative product in float64, alphas_cumprod
    stored as float32, the sigmas in float32. Returned as float32, ascending.
    """
    if schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    elif schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
    else:
        raise ValueError(f"schedule: {schedule!r}; known: 'scaled_linear', 'linear'")
    alphas_cumprod = np.cumprod(1.0 - betas).astype(np.float32)
    one = np.float32(1.0)
    return (((one - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)).astype(np.float32)


# --- k-diffusion's DiscreteSchedule, on a float64 copy of the table -------------------------


def _t_to_sigma(t: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Log-linear interpolation of the table at fractional timesteps."""
    t = np.asarray(t, dtype=np.float64)
    low = np.floor(t).astype(np.int64)
    high = np.ceil(t).astype(np.int64)
    w = t - low
    return np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high])


def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """The fractional timestep of a sigma (the inverse of ``_t_to_sigma``), clamped to the
    table's ends; k-diffusion's search picks the last entry at or below ``sigma``."""
    log_sigma = math.log(sigma)
    low = int(np.searchsorted(log_sigmas, log_sigma, side="right")) - 1
    low = min(max(low, 0), len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = min(max((lo - log_sigma) / (lo - hi), 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def _append_zero(values: np.ndarray) -> np.ndarray:
    return np.append(np.asarray(values, dtype=np.float64), 0.0)


# --- the beta distribution's quantile, for the Beta schedule (A1111 uses scipy's) -----------


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    f = c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 10_000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return f


def _beta_cdf(x: float, a: float, b: float, log_beta: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - log_beta)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def _beta_ppf(p: float, a: float, b: float) -> float:
    """The beta distribution's quantile: bisection kept by a bracket, sped up by Newton steps."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    lo, hi, x = 0.0, 1.0, 0.5
    for _ in range(200):
        err = _beta_cdf(x, a, b, log_beta) - p
        if err == 0.0:
            return x
        if err < 0:
            lo = x
        else:
            hi = x
        pdf = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_beta)
        nxt = x - err / pdf if pdf > 0 else -1.0
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - x) <= 1e-16 * max(x, 1e-300) or nxt in (lo, hi):
            return nxt
        x = nxt
    return x


# --- the schedule types ---------------------------------------------------------------------


def _ays(n: int, family: str) -> np.ndarray:
    table = np.array(AYS_SIGMAS["sdxl" if family == "sdxl" else "sd1"], dtype=np.float64)
    if n == len(table):
        return _append_zero(table)
    xs = np.linspace(0, 1, len(table))
    ys = np.log(table[::-1])
    return _append_zero(np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1])


def _beta(n: int, sigma_min: float, sigma_max: float, alpha: float, beta: float) -> np.ndarray:
    ts = 1 - np.linspace(0, 1, n)
    x = np.array([_beta_ppf(float(t), alpha, beta) for t in ts])
    return _append_zero(sigma_min + x * (sigma_max - sigma_min))


def _schedule(
    label: str,
    n: int,
    table: np.ndarray,
    family: str,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    beta_alpha: float,
    beta_beta: float,
) -> np.ndarray:
    log_sigmas = np.log(table)
    size = len(table)
    if label == "Uniform":  # DiscreteSchedule.get_sigmas(n)
        return _append_zero(_t_to_sigma(np.linspace(size - 1, 0, n), log_sigmas))
    if label == "Karras":
        ramp = np.linspace(0, 1, n)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return _append_zero((hi + ramp * (lo - hi)) ** rho)
    if label == "Exponential":
        return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))
    if label == "Polyexponential":
        ramp = np.linspace(1, 0, n) ** rho
        log_min, log_max = math.log(sigma_min), math.log(sigma_max)
        return _append_zero(np.exp(ramp * (log_max - log_min) + log_min))
    if label in ("SGM Uniform", "Normal"):
        start, end = _sigma_to_t(sigma_max, log_sigmas), _sigma_to_t(sigma_min, log_sigmas)
        if label == "SGM Uniform":  # n + 1 points, the last (sigma_min) dropped
            ts = np.linspace(start, end, n + 1)[:-1]
        else:
            ts = np.linspace(start, end, n)
        return _append_zero(_t_to_sigma(ts, log_sigmas))
    if label == "KL Optimal":  # no zero appended, as in A1111
        i = np.arange(n + 1) / n
        return np.tan(i * math.atan(sigma_min) + (1.0 - i) * math.atan(sigma_max))
    if label == "Align Your Steps":
        return _ays(n, family)
    if label == "Simple":
        step = size / n
        return _append_zero([table[-(1 + int(x * step))] for x in range(n)])
    if label == "DDIM":
        step = max(size // n, 1)
        return _append_zero(table[1:size:step][::-1])
    if label == "Beta":
        return _beta(n, sigma_min, sigma_max, beta_alpha, beta_beta)
    raise AssertionError(label)


def sigmas(
    schedule: str,
    steps: int,
    model_sigmas: Sequence[float] | np.ndarray,
    family: str = "sd1",
    discard_next_to_last: bool = False,
    *,
    sampler: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    beta_alpha: float = BETA_ALPHA,
    beta_beta: float = BETA_BETA,
) -> np.ndarray:
    """The sigmas A1111 1.10 samples over for ``schedule`` at ``steps`` steps.

    ``schedule``: any spelling ``parse_schedule_type`` takes. ``model_sigmas``: the model's table
    (``model_sigmas_from_betas``), ascending, index = timestep. ``family``: "sd1" or "sdxl"
    (only Align Your Steps reads it; A1111 uses its SD 1.5 table for every non-SDXL model).
    ``discard_next_to_last``: A1111's "Discard penultimate sigma" option. ``sampler``: the
    A1111 sampler; "Automatic" needs it, a sampler that always discards (DPM2, DPM++ 3M SDE)
    discards here too, and one that ignores the schedule type (DDIM, UniPC, ...) is a
    ValueError. ``sigma_min`` / ``sigma_max`` / ``rho``: A1111's schedule overrides
    (None or 0: the model's / the schedule's own). ``beta_alpha`` / ``beta_beta``: the Beta
    schedule's distribution. Returns float64, decreasing (see the module docstring for the
    lengths and ends).
    """
    label = parse_schedule_type(schedule)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: {steps!r}; a whole number >= 1")
    if family not in AYS_SIGMAS:
        raise ValueError(f"family: {family!r}; known: {', '.join(AYS_SIGMAS)}")
    if sampler is not None:
        if A1111_SAMPLERS[_split_sampler(sampler)[0]][0] is None:
            raise ValueError(
                f"A1111's {sampler!r} ignores the schedule type (it uses its own timesteps)"
            )
        discard_next_to_last = discard_next_to_last or discards_next_to_last_sigma(sampler)
    if label == "Automatic":
        if sampler is None:
            raise ValueError("schedule 'Automatic' depends on the sampler: pass sampler=")
        label = resolve_automatic(sampler)
    table = np.asarray(model_sigmas, dtype=np.float64)
    if table.ndim != 1 or len(table) < 2 or not np.all(np.diff(table) > 0) or table[0] <= 0:
        raise ValueError("model_sigmas: an ascending table of positive sigmas, index = timestep")
    n = int(steps) + (1 if discard_next_to_last else 0)
    out = _schedule(
        label,
        n,
        table,
        family,
        float(sigma_min) if sigma_min else float(table[0]),
        float(sigma_max) if sigma_max else float(table[-1]),
        float(rho) if rho and label in _DEFAULT_RHO else _DEFAULT_RHO.get(label, 0.0),
        float(beta_alpha),
        float(beta_beta),
    )
    if discard_next_to_last:
        out = np.concatenate([out[:-2], out[-1:]])
    return out
