"""Tiny SD-1.x UNet and VAE for tests, shaped by the embedded model's own configs.

One source of truth for the shapes (the embedded model's */config.json, see
sdbatch/shapes/model.py), seeded random weights so each test file can build its own
pipeline without the trained weights.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from sdbatch.models import EMBEDDED_MODEL_PATH


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(
        UNet2DConditionModel.load_config(EMBEDDED_MODEL_PATH / "unet")
    )


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL.from_config(AutoencoderKL.load_config(EMBEDDED_MODEL_PATH / "vae"))


# Stable Diffusion 1.5's scheduler_config.json (the scheduler tests step over its sigmas).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}
