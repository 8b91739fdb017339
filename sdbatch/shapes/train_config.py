"""The shapes-model trainer's settings: one dataclass, its command line, and what a resume checks.

Why separate: ``train_tiny`` is the loop; this is what a run *is* (the model card prints
``TrainConfig.command()`` as the exact command that reproduces the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainConfig:
    out: Path = Path("build/sdbatch-shapes")  # the diffusers folder written at the end
    work: Path = Path("build/shapes-work")  # checkpoints, loss curve
    seed: int = 0
    minutes: float = 90.0  # cap on total training time, all resumes together (raise to go on)
    threads: str = "auto"  # a number, or auto: the fastest of 1 and all cores, re-probed
    batch: int = 64
    vae_steps: int = 1500
    unet_steps: int = 6500
    tune_steps: int = 2000  # phase 3: fresh LR schedule, guidance-slope penalty on
    lr_vae: float = 1e-3
    lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.999
    empty_prob: float = 0.1
    wrong_prob: float = 0.35  # captions naming one attribute wrongly (see CaptionTokens)
    unk_prob: float = 0.1
    tags_prob: float = 0.25
    min_snr: float = 5.0  # 0 = plain epsilon MSE
    slope_weight: float = 0.3  # phase 3's penalty on the guidance slope (see guidance_slope)
    slope_batch: int = 16  # images per step that the penalty looks at
    slope_limit: float = 0.3  # slopes below this are free (PLMS's stable range)
    ckpt_every: int = 250
    keep: int = 2  # checkpoints kept
    progress: bool = True
    fresh: bool = False  # ignore existing checkpoints

    def command(self) -> str:
        """The exact command line that reproduces this run (for the model card)."""
        parts = ["python -m sdbatch.shapes.train"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("progress", "fresh"):
                continue
            parts.append(f"--{f.name.replace('_', '-')} {value}")
        return " ".join(parts)


# What must match for a checkpoint to be resumed (step counts may grow: that extends a run).
RESUME_KEYS = (
    "seed",
    "batch",
    "lr_vae",
    "lr",
    "warmup",
    "empty_prob",
    "wrong_prob",
    "unk_prob",
    "min_snr",
)
# ... and, once phase 3 has begun, these too.
TUNE_KEYS = ("vae_steps", "unet_steps", "slope_weight", "slope_batch", "slope_limit")


def parse_args(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"Path": Path, "int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default, help=f"default {f.default}")
    return TrainConfig(**vars(parser.parse_args(argv)))
