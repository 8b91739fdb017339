"""Load a diffusers pipeline for a `Model`, offline. Imports torch and diffusers."""

from __future__ import annotations

import warnings

import torch

from sdbatch.checkpoints import Model


def load_pipeline(model: Model, device: torch.device, dtype: torch.dtype):
    """A local diffusers folder, offline (``local_files_only``), without a safety checker."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    dlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    tlogging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype rename
        pipe = StableDiffusionPipeline.from_pretrained(
            model.path,
            torch_dtype=dtype,
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
