"""The control modes' factors and which units take them (sdbatch.render.controlnet_modes),
on planned jobs: the extension's soft injection, its cond-only rows, and the hires pass's
forced soft injection for canny units."""

from __future__ import annotations

import pytest
import torch

from sdbatch.plan.recipe import iter_preview
from sdbatch.render.controlnet_modes import residual_scales, shaped, unit_modes
from tests.unit.test_controlnet_plan import plan, unit, world  # noqa: F401 (fixture)


def test_soft_factors_rise_to_the_mid_block_as_the_extensions_do():
    sd15 = residual_scales(13, soft=True)
    assert sd15[0] == pytest.approx(0.825**12) and sd15[-1] == 1.0
    assert sd15 == sorted(sd15)  # the first down block's residual is scaled the most
    assert residual_scales(10, soft=True) == sd15[:10]  # SDXL: control_scales[:10]
    assert residual_scales(13, soft=False) == [1.0] * 13


def test_cond_only_zeros_the_uncond_rows_and_keeps_the_others():
    r = torch.ones(4, 2, 1, 1)
    (out,) = shaped([r], soft=False, cond_only=True, uncond=1)
    assert out[:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    (soft,) = shaped([r], soft=True, cond_only=False, uncond=1)
    assert torch.equal(soft, r * 0.825**12)


def test_each_unit_takes_its_mode_and_canny_is_soft_in_the_hires_pass(world):  # noqa: F811
    units = [
        unit(control_mode="My prompt is more important"),
        unit(control_mode="ControlNet is more important"),
        unit(module="canny"),
        unit(),
    ]
    jobs = plan(world, units).jobs
    assert unit_modes(jobs, hires=False) == [(True, False), (True, True), (False, False),
                                             (False, False)]  # fmt: skip
    assert unit_modes(jobs, hires=True)[2:] == [(True, False), (False, False)]
    line = next(iter_preview(jobs, 1))
    assert "(a.png, 1, My prompt is more important), control_shapes (a.png, 1, ControlNet" in line
