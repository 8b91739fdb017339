"""Initial noise as A1111 makes it: per-image seeds, variation seeds blended with slerp.

Without a variation seed sdbatch lets diffusers draw the noise (one ``torch.Generator`` per
image); these functions are used only when ``subseed_strength > 0``, and draw in the same order
A1111 does: the variation seed's noise first, then the seed's, each from a fresh generator.
txt2img hands that noise to diffusers as ``latents``; img2img and inpainting add it to the
picture's latents (A1111's img2img noise is the same blend), which diffusers' image pipelines
draw inside ``prepare_latents``: `image_noise` substitutes it there.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

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


@contextlib.contextmanager
def image_noise(pipe, noise: torch.Tensor | None) -> Iterator[None]:
    """During one call of an img2img or inpaint pipeline, the (B, C, h, w) noise its
    ``prepare_latents`` adds to the picture's latents is ``noise`` (None: diffusers draws it,
    as without variation seeds). Its module's ``randn_tensor`` is swapped only while
    ``prepare_latents`` runs, so the VAE's sampling and the sampler's ancestral noise still
    come from the image's generator; a call that never draws that noise is an error, never a
    picture without the variation."""
    if noise is None:
        yield
        return
    module = sys.modules[type(pipe).__module__]
    draw = module.randn_tensor
    wrapped = pipe.__dict__.get("prepare_latents")  # the inpaint pipeline's latent fills
    prepare = pipe.prepare_latents
    used = []

    def randn(shape, *args, device=None, dtype=None, **kwargs):
        if tuple(shape) != tuple(noise.shape):
            return draw(shape, *args, device=device, dtype=dtype, **kwargs)
        used.append(shape)
        return noise.to(device or noise.device, dtype or noise.dtype)

    def prepare_latents(*args, **kwargs):
        module.randn_tensor = randn
        try:
            return prepare(*args, **kwargs)
        finally:
            module.randn_tensor = draw

    object.__setattr__(pipe, "prepare_latents", prepare_latents)
    try:
        yield
    finally:
        if wrapped is None:
            del pipe.__dict__["prepare_latents"]
        else:
            object.__setattr__(pipe, "prepare_latents", wrapped)
    if not used:
        raise RuntimeError(f"{type(pipe).__name__} drew no noise of {tuple(noise.shape)}")
