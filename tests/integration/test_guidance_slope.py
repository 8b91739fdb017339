"""The guidance-slope penalty measures what its docstring says, on a model whose answer is known."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sdbatch.shapes.guidance_slope import GUIDANCE, REL_STEP, guidance_slope  # noqa: E402

EMPTY = torch.zeros(1, 3, dtype=torch.long)


class Out:
    def __init__(self, sample):
        self.sample = sample


def text(ids):
    """Caption id 0 = empty; the 'encoding' is just the ids as floats."""
    return (ids.float(),)


def linear_unet(gain):
    """Noise prediction = x * (1 + gain * caption): guidance term c - u = gain * x."""

    def unet(x, t, enc):
        cond = (enc[:, 0] > 0).float().view(-1, 1, 1, 1)
        return Out(x * (1 + gain * cond))

    return unet


def args(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, 4, 8, 8, generator=g)
    noisy = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    ids = torch.ones(n, 3, dtype=torch.long)
    sqrt_1m = torch.linspace(0.05, 1.0, 1000)
    return noisy, latents, t, ids, sqrt_1m, g


@pytest.mark.parametrize("gain", [0.0, 0.5, 2.0])
def test_slope_is_step_times_slope_of_the_guidance_term(gain):
    noisy, latents, t, ids, sqrt_1m, g = args()
    got = guidance_slope(linear_unet(gain), text, noisy, latents, t, ids, EMPTY, sqrt_1m, g, 4)
    # the latent moves by REL_STEP * sqrt(1 - alpha_bar) along a unit direction; the guidance
    # term GUIDANCE * gain * x moves by GUIDANCE * gain times that
    want = GUIDANCE * gain * REL_STEP * sqrt_1m[t[:4]]
    assert got.shape == (4,)
    assert torch.allclose(got, want, atol=1e-5)


def test_empty_captions_have_no_guidance_and_no_slope():
    noisy, latents, t, _, sqrt_1m, g = args()
    ids = torch.zeros(6, 3, dtype=torch.long)
    got = guidance_slope(linear_unet(3.0), text, noisy, latents, t, ids, EMPTY, sqrt_1m, g, 6)
    assert torch.equal(got, torch.zeros(6))
