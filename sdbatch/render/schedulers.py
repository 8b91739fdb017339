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

``tests/integration/test_samplers_run.py`` checks every step against written-out A1111 loops.
``build_scheduler`` makes the scheduler of a sampler of ``sdbatch.plan.samplers``' table.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from sdbatch.plan.samplers import SAMPLER_KEYS, Sampler, resolve_sampler


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


def build_scheduler(sampler: Sampler | str, base_config: Any, seeds: list[int] | None = None):
    """A fresh diffusers scheduler: ``Cls.from_config(base_config, **options)``.

    ``base_config`` is the model's scheduler config (``pipe.scheduler.config``). ``seeds`` holds one
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
