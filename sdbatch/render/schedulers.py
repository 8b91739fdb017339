"""A1111's schedules that diffusers' schedulers lack: subclasses that only change ``set_timesteps``.

DPM2 family. A1111 runs DPM2, DPM2 a and their Karras variants with ``discard_next_to_last_sigma``:
it builds the sigma schedule for steps + 1 and drops the next-to-last sigma, so the last
step goes straight from the 20th sigma to 0 (an Euler step) instead of spending a UNet call on
sigma_min (0.03), and the steps before it are a little shorter. diffusers' ``KDPM2*`` classes
have no such option, so ``discarding(cls)`` returns a subclass whose ``set_timesteps`` builds
its tables on A1111's sigmas. The tables follow k-diffusion's ``sample_dpm_2`` /
``sample_dpm_2_ancestral`` (midpoint sigma = geometric mean of sigma and the step's target;
the ancestral target is ``sigma_down``), which is also what diffusers computes from its own
sigmas.

DDIM and PLMS. Since 1.6 A1111 runs them on ``t = range(0, 1000, 1000 // steps) + 1``
(clipped to 999) and stops at t=1: the model is never called at t=1 and the image keeps
t=1's tiny noise (sigma 0.04). That is ``steps`` steps only when 1000 is a multiple of
``steps`` (steps=30 gives 31 grid points, so 30 steps from t=991). diffusers' "leading"
grid always has ``steps`` points and adds a last step from t=1 to alphas_cumprod[0].
``timestep_grid(cls)`` gives diffusers' class A1111's grid; the step formulas are the same.

A1111's schedule types (1.9+). An entry with ``schedule_type`` (``sdbatch.plan.samplers``:
e.g. "Euler Karras", "DPM2 a Exponential", "DPM++ 2M SGM Uniform") runs on the sigmas
``sdbatch.plan.schedule_types.sigmas`` computes for it, from the model's sigma table (its
scheduler config's betas, as A1111 builds it) and the sampler's own "discard penultimate sigma"
(DPM2, DPM2 a, DPM++ 3M SDE). ``a1111_schedule(cls, ...)`` returns a subclass whose
``set_timesteps(steps)`` computes them for however many steps it is asked (the hires pass too)
and hands them to the class: EulerDiscreteScheduler takes ``sigmas=``; for the others it lets the
class set up its state for that many steps, then rebuilds the tables the class would have built
from such sigmas (``_LAYOUTS``): sigmas as given, timesteps at k-diffusion's ``sigma_to_t``
(log-linear in the model's table; whole numbers for DPMSolverMultistep, as its own Karras
schedule rounds them), each second-order class's layout of entries.

``tests/integration/test_samplers_run.py`` checks every step against written-out A1111 loops;
``tests/integration/test_schedule_types_run.py`` checks the computed schedules.
``build_scheduler`` makes the scheduler of a sampler of ``sdbatch.plan.samplers``' table.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from sdbatch.plan.samplers import SAMPLER_KEYS, Sampler, a1111_names, resolve_sampler
from sdbatch.plan.schedule_types import model_sigmas_from_betas
from sdbatch.plan.schedule_types import sigmas as a1111_sigmas


def _interleave(first: torch.Tensor, rest: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """diffusers' layout: entry 0, then each later entry twice (first- and second-order
    half of a step), then the final entry."""
    return torch.cat([first, rest.repeat_interleave(2), last])


def _tables(sched, sigmas: np.ndarray, timesteps: np.ndarray, ancestral: bool, device) -> None:
    """Fill ``sched``'s step tables for ``sigmas`` (without the final 0) and their timesteps."""
    log_sigmas = sched.log_sigmas.cpu()
    s = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
    if ancestral:  # k-diffusion get_ancestral_step(sigma, sigma_next), eta 1
        nxt = torch.cat([s[1:], s.new_zeros(1)])
        up = (nxt**2 * (s**2 - nxt**2) / s**2) ** 0.5
        down = (nxt**2 - up**2) ** 0.5
        down[-1] = 0.0
        mid = s.log().lerp(down.log(), 0.5).exp()
        mid[-2:] = 0.0  # the last step (to sigma 0) is a plain Euler step
        sched.sigmas_up = _interleave(up[:1], up[1:], up[-1:]).to(device)
        sched.sigmas_down = _interleave(down[:1], down[1:], down[-1:]).to(device)
        t_mid = [sched._sigma_to_t(m, log_sigmas) for m in mid[:-2]]
    else:  # the midpoint of the step *into* sigma i, stored at i
        mid = s.log().lerp(s.roll(1).log(), 0.5).exp()
        t_mid = [sched._sigma_to_t(m, log_sigmas) for m in mid[1:-1]]
    t = torch.from_numpy(np.asarray(timesteps, dtype=np.float32))
    t_mid = torch.tensor(np.asarray(t_mid, dtype=np.float32))
    sched.sigmas = _interleave(s[:1], s[1:], s[-1:])  # diffusers keeps sigmas on the CPU
    sched.sigmas_interpol = _interleave(mid[:1], mid[1:], mid[-1:]).to(device)
    sched.timesteps = torch.cat([t[:1], torch.stack([t_mid, t[1:]], dim=-1).flatten()]).to(device)
    sched.sample = None
    sched._step_index = None
    sched._begin_index = None


@functools.cache
def discarding(cls: type) -> type:
    """A subclass of diffusers' ``KDPM2DiscreteScheduler`` or ``KDPM2AncestralDiscreteScheduler``
    that schedules ``steps`` steps the way A1111 does (see the module docstring)."""
    ancestral = "Ancestral" in cls.__name__

    def set_timesteps(self, num_inference_steps: int, device=None, num_train_timesteps=None):
        # The parent's own grid for steps + 1 (linspace or Karras, its timestep rounding and
        # log_sigmas), read back from its tables: entry 0, then every second entry.
        cls.set_timesteps(self, num_inference_steps + 1, device, num_train_timesteps)
        sigmas = torch.cat([self.sigmas[:1], self.sigmas[1:-1:2]]).numpy()[:-1]  # all > 0
        timesteps = torch.cat([self.timesteps[:1], self.timesteps[2::2]]).cpu().numpy()
        # Drop the next-to-last sigma of the list ending in 0: the smallest one above 0.
        _tables(self, sigmas[:-1], timesteps[:-1], ancestral, device)
        self.num_inference_steps = num_inference_steps

    return type(cls.__name__, (cls,), {"set_timesteps": set_timesteps, "__module__": __name__})


@functools.cache
def timestep_grid(cls: type) -> type:
    """A subclass of diffusers' ``DDIMScheduler`` or ``PNDMScheduler`` (``skip_prk_steps``)
    that steps over A1111's grid (see the module docstring).

    diffusers computes each step's target as ``t - 1000 // steps``, which is the grid's next
    point everywhere except where the grid's top point was clipped from 1000 to 999 (steps
    3, 9, 27, 37, 111, 333 and above 500): there the first step lands one timestep lower.
    """
    plms = cls.__name__ == "PNDMScheduler"

    def set_timesteps(self, num_inference_steps: int, device=None):
        cls.set_timesteps(self, num_inference_steps, device)  # step ratio, PLMS state
        n = self.config.num_train_timesteps
        grid = np.clip(np.arange(0, n, n // num_inference_steps) + 1, 0, n - 1)
        down = grid[::-1][:-1]  # evaluated at every point but t=1; the last step lands there
        if plms:  # the first step also evaluates its target (pseudo improved Euler)
            down = np.concatenate([down[:2], down[1:]])
            self.plms_timesteps = down.copy()
        self.timesteps = torch.from_numpy(down.astype(np.int64)).to(device)

    return type(cls.__name__, (cls,), {"set_timesteps": set_timesteps, "__module__": __name__})


# Sampler.a1111_schedule -> the subclass factory.
SCHEDULES = {"discard_next_to_last_sigma": discarding, "a1111_grid": timestep_grid}


def model_sigmas(scheduler) -> np.ndarray:
    """The model's sigma table (ascending, index = timestep) as A1111 builds it from the
    scheduler config's betas; for betas A1111 has no formula for (``trained_betas``, another
    ``beta_schedule``), the scheduler's own ``alphas_cumprod``."""
    c = scheduler.config
    if (
        c.get("trained_betas") is None
        and c.get("beta_schedule") in ("scaled_linear", "linear")
        and not c.get("rescale_betas_zero_snr", False)
    ):
        return model_sigmas_from_betas(
            c.beta_start, c.beta_end, c.num_train_timesteps, c.beta_schedule
        )
    ac = scheduler.alphas_cumprod.double().cpu().numpy()
    table = ((1 - ac) / ac) ** 0.5
    if not (np.all(np.isfinite(table)) and np.all(np.diff(table) > 0) and table[0] > 0):
        raise ValueError(
            "A1111's schedule types need a model with finite sigmas; this scheduler config's "
            "alphas_cumprod reaches 0 (rescale_betas_zero_snr?)"
        )
    return table


def _timesteps(sched, sigmas: np.ndarray) -> np.ndarray:
    """k-diffusion's ``sigma_to_t`` on the scheduler's own table: linear in log sigma between
    neighbouring entries, clamped at the ends (diffusers' ``_sigma_to_t`` computes the same)."""
    ac = sched.alphas_cumprod.double().cpu().numpy()
    log_table = np.log(((1 - ac) / ac) ** 0.5)
    return np.interp(np.log(sigmas), log_table, np.arange(len(log_table), dtype=np.float64))


def _reset(sched) -> None:
    sched._step_index = None
    sched._begin_index = None


def _euler(sched, cls, s: np.ndarray, device) -> None:
    cls.set_timesteps(sched, device=device, sigmas=s)  # diffusers' own custom-sigmas path


def _flat(sched, cls, s: np.ndarray, device, whole: bool = False) -> None:
    """One UNet call per sigma but the last (Euler a, LMS, DPM++ 2M and its SDE kin)."""
    n = len(s) - 1
    cls.set_timesteps(sched, n, device)  # the class's state (LMS derivatives, DPM history)
    t = _timesteps(sched, s[:-1])
    t = np.round(t).astype(np.int64) if whole else t.astype(np.float32)
    sched.sigmas = torch.from_numpy(s.astype(np.float32))  # diffusers keeps sigmas on the CPU
    sched.timesteps = torch.from_numpy(t).to(device)
    sched.num_inference_steps = n
    _reset(sched)


def _interleaved(s: np.ndarray) -> torch.Tensor:
    """Heun and DPM++ SDE: entry 0, each later sigma twice (both halves of a step), the 0."""
    st = torch.from_numpy(s.astype(np.float32))
    return torch.cat([st[:1], st[1:-1].repeat_interleave(2), st[-1:]])


def _heun(sched, cls, s: np.ndarray, device) -> None:
    n = len(s) - 1
    cls.set_timesteps(sched, n, device)
    t = torch.from_numpy(_timesteps(sched, s[:-1]).astype(np.float32))
    sched.sigmas = _interleaved(s)
    sched.timesteps = torch.cat([t[:1], t[1:].repeat_interleave(2)]).to(device)
    _reset(sched)


def _dpm_sde(sched, cls, s: np.ndarray, device) -> None:
    """DPMSolverSDEScheduler: Heun's layout, each second call at the step's midpoint (its own
    ``_second_order_timesteps``); the Brownian tree spans the new sigmas at the first step."""
    n = len(s) - 1
    cls.set_timesteps(sched, n, device)
    ac = sched.alphas_cumprod.double().cpu().numpy()
    second = sched._second_order_timesteps(s[:-1], np.log(((1 - ac) / ac) ** 0.5))
    t = torch.from_numpy(_timesteps(sched, s[:-1]))
    t = torch.cat([t[:1], t[1:].repeat_interleave(2)])
    t[1::2] = torch.from_numpy(np.asarray(second, dtype=np.float64))
    sched.sigmas = _interleaved(s)
    sched.timesteps = t.to(device)
    _reset(sched)


def _kdpm2(sched, cls, s: np.ndarray, device) -> None:
    n = len(s) - 1
    cls.set_timesteps(sched, n, device)  # log_sigmas and the rest of the class's state
    ancestral = "Ancestral" in cls.__name__
    _tables(sched, s[:-1], _timesteps(sched, s[:-1]), ancestral, device)
    sched.num_inference_steps = n


# diffusers class -> how its tables are rebuilt on A1111's sigmas (plan.samplers'
# CUSTOM_SCHEDULES lists the same classes, and which schedule types each cannot run).
_LAYOUTS = {
    "EulerDiscreteScheduler": _euler,
    "EulerAncestralDiscreteScheduler": _flat,
    "LMSDiscreteScheduler": _flat,
    "DPMSolverMultistepScheduler": functools.partial(_flat, whole=True),
    "HeunDiscreteScheduler": _heun,
    "DPMSolverSDEScheduler": _dpm_sde,
    "KDPM2DiscreteScheduler": _kdpm2,
    "KDPM2AncestralDiscreteScheduler": _kdpm2,
}
_ENDS_ANYWHERE = {
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
}


@functools.cache
def a1111_schedule(cls: type, schedule_type: str, sampler: str, family: str = "sd1") -> type:
    """A subclass of diffusers' ``cls`` whose ``set_timesteps(steps)`` runs A1111's
    ``schedule_type`` as A1111 runs it for ``sampler`` (its "discard penultimate sigma"
    included) on a ``family`` model ("sd1" or "sdxl": Align Your Steps' table); see the module
    docstring. Custom ``sigmas=`` / ``timesteps=`` passed in by a caller go to ``cls`` as they are.
    """
    layout = _LAYOUTS[cls.__name__]

    @functools.wraps(cls.__init__)  # the same signature: diffusers' from_config reads it
    def __init__(self, *args, **kwargs):
        self._a1111_ready = False  # some classes' __init__ set 1000 steps: theirs, not ours
        cls.__init__(self, *args, **kwargs)
        self._a1111_ready = True

    def set_timesteps(self, num_inference_steps=None, device=None, *args, **kwargs):
        given = args or any(v is not None for v in kwargs.values())
        if num_inference_steps is None or given or not getattr(self, "_a1111_ready", True):
            return cls.set_timesteps(self, num_inference_steps, device, *args, **kwargs)
        s = a1111_sigmas(
            schedule_type, int(num_inference_steps), model_sigmas(self), family, sampler=sampler
        )
        if s[-1] != 0 and cls.__name__ not in _ENDS_ANYWHERE:
            raise ValueError(f"{cls.__name__} cannot end a schedule above 0 ({schedule_type})")
        layout(self, cls, s, device)

    attrs = {"__init__": __init__, "set_timesteps": set_timesteps, "__module__": __name__}
    return type(cls.__name__, (cls,), attrs)


def build_scheduler(
    sampler: Sampler | str,
    base_config: Any,
    seeds: list[int] | None = None,
    family: str = "sd1",
):
    """A fresh diffusers scheduler: ``Cls.from_config(base_config, **options)``.

    ``base_config`` is the model's scheduler config (``pipe.scheduler.config``); ``family`` the
    model's ("sd1" or "sdxl", for the Align Your Steps schedule type). ``seeds`` holds one
    seed per image of the batch, in order. Only DPMSolverSDEScheduler uses them: it ignores the
    pipeline's generator and draws its noise from one Brownian tree per image seeded by
    ``noise_sampler_seed`` (diffusers' BatchedBrownianTree), so a batch of N matches N single calls.
    Every other noisy scheduler draws from the pipeline's generator, which must then be a list with
    one ``torch.Generator`` per image. Build one scheduler per batch: the seeds live in its config.
    """
    import diffusers

    s = resolve_sampler(sampler) if isinstance(sampler, str) else sampler
    config = {k: v for k, v in dict(base_config).items() if k not in SAMPLER_KEYS}
    options = dict(s.options)
    cls = getattr(diffusers, s.cls)
    if s.a1111_schedule:
        cls = SCHEDULES[s.a1111_schedule](cls)
    if s.schedule_type:
        cls = a1111_schedule(cls, s.schedule_type, a1111_names(s)[0], family)
    if s.cls == "DPMSolverSDEScheduler":
        if seeds is None:
            raise ValueError(
                f"{s.name} ({s.cls}) needs seeds=[one seed per image]; without them diffusers "
                "seeds its Brownian tree from torch's global RNG and images are not reproducible"
            )
        # Always a list, even for one image: an int would build one tree over the whole batch.
        options["noise_sampler_seed"] = [
            int(x) for x in ([seeds] if isinstance(seeds, int) else seeds)
        ]
    return cls.from_config(config, **options)
