"""Initial noise as A1111 makes it: per-image seeds, variation seeds blended with slerp.

Without a variation seed sdbatch lets diffusers draw the noise (one ``torch.Generator`` per
image); these functions are used only when ``subseed_strength > 0``, and draw in the same order
A1111 does: the variation seed's noise first, then the seed's, each from a fresh generator.
"""

from __future__ import annotations

import torch


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``low`` (val=0) to ``high`` (val=1), as A1111's
    ``processing.slerp``: norms over dim 1, and its linear fallback when the two are almost
    parallel (which, as in A1111, weighs ``low`` by ``val``)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (
        torch.sin(val * omega) / so
    ).unsqueeze(1) * high


def variation_noise(
    seed: int, subseed: int, strength: float, shape: tuple[int, int, int], device: torch.device
) -> torch.Tensor:
    """(C, h, w) noise of ``seed`` moved ``strength`` of the way towards ``subseed``'s."""
    subnoise = torch.randn(shape, generator=torch.Generator(device).manual_seed(subseed),
                           device=device)  # fmt: skip
    noise = torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)
    return slerp(strength, noise, subnoise)
