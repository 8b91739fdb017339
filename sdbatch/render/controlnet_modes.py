"""The ControlNet extension's control modes, on diffusers' ControlNet residuals.

The extension (sd-webui-controlnet, scripts/hook.py) adds each unit's residuals to the UNet
scaled by its weight ("Balanced"), or, for the other two modes, with its "soft injection":
residual ``i`` (the down blocks' in the order the UNet makes them, then the mid block's) times
``weight * 0.825 ** (12 - i)``, so SD 1.x's 13 run from ``0.825 ** 12`` (about 0.1, the first
down block's) up to 1 (the mid block's); SDXL's 10 take the first 10 of those 13 factors (its
mid block ``0.825 ** 3``), as the extension's ``control_scales[:10]`` does. "ControlNet is
more important" also multiplies every residual by the cond mark, so the uncond rows (the
negative prompt's) get none of it: CFG then pushes away from an uncond without control. In the
hires pass the extension uses the soft factors for canny (and mlsd) units whatever their mode.

diffusers' ``guess_mode`` is none of these (logspace factors from 0.1 to 1, and the ControlNet
run on the cond rows only), so diffusers runs its ControlNet as in "Balanced" and
`control_modes` rescales the residuals per unit and per row before they are summed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from sdbatch.plan.recipe import Job

SOFT = 0.825
SOFT_IN_HIRES = ("canny", "mlsd")  # the extension's forced soft injection in the hires pass


def residual_scales(count: int, soft: bool) -> list[float]:
    """The factor of each of ``count`` residuals on top of the unit's weight (diffusers
    multiplies by the weight itself): 1, or the extension's soft-injection factors."""
    if not soft:
        return [1.0] * count
    return [SOFT ** float(12 - i) for i in range(count)]


def unit_modes(jobs: Sequence[Job], hires: bool) -> list[tuple[bool, bool]]:
    """(soft, cond rows only) per unit of the batch (a batch shares its units' modes)."""
    out = []
    for u in jobs[0].control.units:
        soft = u.mode != "Balanced" or (hires and u.module in SOFT_IN_HIRES)
        out.append((soft, u.mode == "ControlNet is more important"))
    return out


def uncond_rows(pipe, rows: int, images: int) -> int:
    """How many of the ControlNet's ``rows`` are uncond rows (they come first): with AND, the
    wrapper's (sdbatch.render.conditioning.ComposedUNet); else diffusers' uncond half under
    CFG, none without it."""
    from sdbatch.render.conditioning import ComposedUNet

    unet = pipe.unet
    if isinstance(unet, ComposedUNet):
        return unet.conditioning.at(unet.step).uncond.shape[0]
    if rows == 2 * images:
        return images
    if rows == images:
        return 0
    raise RuntimeError(f"ControlNet batch of {rows} rows for {images} images")


def shaped(residuals: list[torch.Tensor], soft: bool, cond_only: bool, uncond: int) -> list:
    """One unit's residuals (downs, then mid) with its mode's factors and row mask."""
    out = []
    for r, scale in zip(residuals, residual_scales(len(residuals), soft), strict=True):
        if scale != 1.0:
            r = r * scale
        if cond_only and uncond:
            keep = torch.ones(r.shape[0], dtype=r.dtype, device=r.device)
            keep[:uncond] = 0
            r = r * keep.view(-1, *[1] * (r.ndim - 1))
        out.append(r)
    return out


@contextlib.contextmanager
def swapped_forward(module, forward) -> Iterator[None]:
    """``module.forward`` is ``forward`` on the instance until the block ends, then what it
    was (an instance's own forward set by an outer block stays)."""
    had = "forward" in vars(module)
    before = vars(module).get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had:
            module.forward = before
        else:
            del module.forward


@contextlib.contextmanager
def control_modes(pipe, jobs: Sequence[Job], hires: bool = False) -> Iterator[None]:
    """During one call of a ControlNet pipeline, its ControlNet (one model, or diffusers'
    MultiControlNetModel) gives the residuals of each unit's control mode. Nothing changes
    when every unit is Balanced (outside the hires pass's forced soft injection)."""
    control = getattr(pipe, "controlnet", None)
    modes = unit_modes(jobs, hires) if jobs[0].control is not None else []
    if control is None or not any(soft or cond for soft, cond in modes):
        yield
        return
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    nets = control.nets if isinstance(control, MultiControlNetModel) else None
    original = control.forward

    def forward(sample, timestep, *args, controlnet_cond=None, conditioning_scale=1.0,
                return_dict=True, **kwargs):  # fmt: skip
        if nets is None:
            runs = [(original, controlnet_cond, conditioning_scale)]
        else:
            runs = list(zip(nets, controlnet_cond, conditioning_scale, strict=True))
        uncond = uncond_rows(pipe, sample.shape[0], len(jobs))
        total = None
        for (net, cond, scale), (soft, cond_only) in zip(runs, modes, strict=True):
            down, mid = net(sample, timestep, *args, controlnet_cond=cond,
                            conditioning_scale=scale, return_dict=False, **kwargs)  # fmt: skip
            residuals = shaped([*down, mid], soft, cond_only, uncond)
            if total is not None:  # summed in the units' order, as MultiControlNetModel does
                residuals = [a + b for a, b in zip(total, residuals, strict=True)]
            total = residuals
        return total[:-1], total[-1]

    with swapped_forward(control, forward):
        yield
