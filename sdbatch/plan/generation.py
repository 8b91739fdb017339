"""A1111 generation options beyond the sweep axes: hires fix, variation seeds, noise source.

Pure: parsing, validation, job-id keys and infotext fields. The pixels are made in
``sdbatch.render.pipeline`` (hires fix) and ``sdbatch.render.noise`` (variation seeds, RNG).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdbatch.errors import RecipeError
from sdbatch.plan.upscalers import infotext_name, resolve_upscaler


@dataclass(frozen=True, slots=True)
class Hires:
    """A1111's hires fix: render at the base size, upscale, then img2img at the target size."""

    scale: float  # target = base size x scale (rounded down to a multiple of 8)
    upscaler: str  # latent | lanczos | another A1111 name (sdbatch.plan.upscalers)
    steps: int  # second-pass steps; 0 = the same as the first pass (A1111's rule)
    denoise: float  # img2img strength of the second pass
    upscaler_file: str | None = None  # a model upscaler's file
    upscaler_hash: str | None = None  # its hash: joins the job id (the file decides pixels)

    def target(self, width: int, height: int) -> tuple[int, int]:
        return int(width * self.scale) // 8 * 8, int(height * self.scale) // 8 * 8

    def describe(self) -> str:
        steps = f"{self.steps} steps" if self.steps else "same steps"
        return f"{self.scale:g}x {self.label}, {steps}, denoise {self.denoise:g}"

    def pass_steps(self, base_steps: int) -> tuple[int, float]:
        """``(num_inference_steps, strength)`` that make diffusers' img2img run A1111's hires
        pass: exactly ``steps`` (or the first pass's) denoising steps, the last ones of a
        schedule of ``int(steps / min(denoise, 0.999))`` steps (A1111's
        ``setup_img2img_steps`` when the steps are given, as the hires pass gives them).
        diffusers runs ``int(num_inference_steps * strength)``; the half step keeps that
        product from rounding below the steps wanted."""
        wanted = self.steps or base_steps
        total = max(wanted, int(wanted / min(self.denoise, 0.999)))
        return total, min(1.0, (wanted + 0.5) / total)

    @property
    def label(self) -> str:
        """The upscaler as A1111 names it (``Hires upscaler:``)."""
        return infotext_name(self.upscaler)


@dataclass(frozen=True, slots=True)
class Extras:
    """Per-job options that change pixels but are not sweep axes of the plan line."""

    subseed: int | None = None  # A1111's variation seed
    subseed_strength: float = 0.0  # 0 = off; noise = slerp(strength, seed noise, subseed noise)
    rng: str = "cpu"  # cpu: same image on any device; gpu: A1111's default on NVIDIA cards
    hires: Hires | None = None
    dtype: str = "fp32"  # the resolved run.dtype: it decides pixels (sdbatch.plan.run_settings)

    def key(self) -> str:
        """The job-id part; empty for the defaults so plain jobs keep their ids."""
        parts = []
        if self.subseed_strength > 0:
            parts.append(f"subseed={self.subseed}@{self.subseed_strength!r}")
        if self.rng != "cpu":
            parts.append(f"rng={self.rng}")
        if self.hires:
            h = self.hires
            model = f",{h.upscaler_hash}" if h.upscaler_hash else ""  # none: ids as before
            # a1111-steps: the pass runs all its steps (A1111's rule), not steps x denoise
            key = f"hires={h.scale!r},{h.upscaler},{h.steps},{h.denoise!r}{model},a1111-steps"
            parts.append(key)
        if self.dtype != "fp32":
            parts.append(f"dtype={self.dtype}")
        return ";".join(parts)

    def batch_key(self) -> tuple:
        """What must be equal for jobs to share a forward pass (the hires pass shape)."""
        return (self.hires,)

    def infotext(self) -> dict[str, object]:
        """The fields A1111 writes, keyed by A1111's names (ordered by the caller)."""
        out: dict[str, object] = {}
        if self.subseed_strength > 0:
            out["Variation seed"] = self.subseed
            out["Variation seed strength"] = self.subseed_strength
        if self.hires:
            out["Denoising strength"] = self.hires.denoise
        if self.rng == "cpu":
            out["RNG"] = "CPU"  # A1111's default is GPU: it writes RNG only when it differs
        if self.hires:
            out["Hires upscale"] = self.hires.scale
            if self.hires.steps:
                out["Hires steps"] = self.hires.steps
            out["Hires upscaler"] = self.hires.label
        return out


def _number(field: str, value, lo: float, hi: float | None, allowed: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecipeError(field, value, allowed) from None
    if isinstance(value, bool) or number < lo or (hi is not None and number > hi):
        raise RecipeError(field, value, allowed)
    return number


def parse_hires(
    cfg: dict | None, folders: dict | None = None, allow_pickle: bool = False
) -> Hires | None:
    """``hires: {scale: 2, upscaler: latent, steps: 10, denoise: 0.5}``; scale 1 (or none) = off.
    ``folders``/``allow_pickle``: where model upscalers are found and how they may be read."""
    if not cfg:
        return None
    scale = _number("hires.scale", cfg.get("scale", 1), 1, 8, "a number in 1..8 (1 = off)")
    if scale == 1:
        return None
    steps = _number("hires.steps", cfg.get("steps", 0), 0, 1000, "an integer in 0..1000")
    if not float(steps).is_integer():
        raise RecipeError("hires.steps", cfg.get("steps"), "an integer in 0..1000")
    denoise = _number("hires.denoise", cfg.get("denoise", 0.7), 0, 1, "a number in 0..1")
    if denoise == 0:
        raise RecipeError("hires.denoise", cfg.get("denoise"), "a number in (0, 1]")
    upscaler, file, digest = resolve_upscaler(cfg.get("upscaler"), folders, allow_pickle)
    return Hires(scale, upscaler, int(steps), denoise, file, digest)


def parse_rng(value) -> str:
    rng = str(value or "cpu").lower()
    if rng not in ("cpu", "gpu"):
        raise RecipeError("rng", value, "cpu (the same image on any device) or gpu")
    return rng


def parse_subseed_strength(value) -> float:
    return _number("subseed_strength", value or 0, 0, 1, "a number in 0..1 (0 = off)")
