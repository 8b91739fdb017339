"""How much classifier-free guidance's push changes as the noisy latent moves (a training penalty).

Why: at CFG 7 the guided noise prediction is ``u + 7 (c - u)``. Where the caption decides an
attribute that the noisy picture also starts to show, the conditional branch ignores the
picture while the unconditional one follows it, so the guided prediction moves *against* the
latent, steeply: a stiff ODE. One-step samplers (Euler, DDIM) step over that; PLMS's
4th-order Adams-Bashforth extrapolation is only stable for |step x slope| below ~0.3 and
oscillates (see the model card). This measures the guidance term's slope along directions the
data actually varies in (towards another training picture's latent), scaled so that it reads
as the |step x slope| a 20-step sampler sees; the trainer's tune phase penalises the squared
excess over ``--slope-limit`` (below it, guidance is left alone: penalising every slope
removed guidance altogether, see the model card's probes).
"""

from __future__ import annotations

import torch

GUIDANCE = 7.0  # the CFG scale the penalty is expressed for
REL_STEP = 0.2  # a 20-step schedule moves sigma by about 20% per step


def guidance_slope(unet, text, noisy, latents, t, ids, empty_ids, sqrt_one_minus_ac,
                   g: torch.Generator, k: int) -> torch.Tensor:  # fmt: skip
    """Per-image |step x slope| of the guidance term for the first ``k`` training images.

    The latent moves by ``REL_STEP * sigma`` (in sigma space) towards another image's clean
    latent; the guidance term ``GUIDANCE * (c - u)`` is evaluated before and after, and the
    change's norm divided by the move's is the slope times the step.
    """
    k = min(k, noisy.shape[0])
    x, tk = noisy[:k], t[:k]
    n = latents.shape[0]
    other = (torch.arange(k) + torch.randint(1, max(n, 2), (k,), generator=g)) % n  # never itself
    d = latents[other] - latents[:k]
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    moved = x + REL_STEP * sqrt_one_minus_ac[tk].view(-1, 1, 1, 1) * d
    cond = ids[:k]
    enc = text(torch.cat([cond, cond, empty_ids.expand(k, -1), empty_ids.expand(k, -1)]))[0]
    e = unet(torch.cat([x, moved, x, moved]), tk.repeat(4), enc).sample
    c0, c1, u0, u1 = e.chunk(4)
    return GUIDANCE * ((c1 - u1) - (c0 - u0)).flatten(1).norm(dim=1)
