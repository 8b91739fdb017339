"""A1111's schedule for DPM2 and DPM2 a on diffusers' KDPM2 schedulers.

Why: A1111 runs DPM2, DPM2 a and their Karras variants with ``discard_next_to_last_sigma``:
it builds the sigma schedule for steps + 1 and drops the next-to-last sigma, so the last
step goes straight from the 20th sigma to 0 (an Euler step) instead of spending a UNet call on
sigma_min (0.03), and the steps before it are a little shorter. diffusers' ``KDPM2*`` classes
have no such option, so ``discarding(cls)`` returns a subclass whose ``set_timesteps`` builds
its tables on A1111's sigmas. The tables follow k-diffusion's ``sample_dpm_2`` /
``sample_dpm_2_ancestral`` (midpoint sigma = geometric mean of sigma and the step's target;
the ancestral target is ``sigma_down``), which is also what diffusers computes from its own
sigmas; ``tests/unit/test_dpm2.py`` checks every step against a k-diffusion-style loop.

Imports torch and diffusers: only ``samplers.build_scheduler`` calls it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


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
