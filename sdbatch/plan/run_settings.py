"""How a run executes (``run.*``), validated in one place, and which settings decide pixels.

Pure: no torch. ``run.device`` and ``run.dtype`` are checked here before anything is loaded or
written; ``auto`` is resolved by the runner, which knows whether CUDA is present.

Which settings decide the pixels. Everything in the recipe that reaches the pipeline (model,
prompts, sampler, steps, CFG, size, seed, hires fix, variation seed, RNG) is in the job id
already. Of the ``run.*`` settings, the **dtype** decides pixels too (fp16 and bf16 images
differ visibly from fp32 ones), so the resolved dtype joins the job id (only when it is not
fp32, so CPU jobs keep the ids they always had), the multirun folder name (``run.dtype=...``
overrides are kept in it) and the manifest (``dtype`` column). The **device** does not: with
``rng: cpu`` the same job on a CPU and on a GPU starts from the same noise and differs only by
kernel rounding, as an image differs from itself in another batch; the manifest records it per
row (``device`` column). ``rng: gpu`` draws noise on the device and is part of the job id.
``run.compile`` does not either: a compiled UNet differs from the eager one by kernel rounding
only (measured: at most 1/255 on the bench workload, as batch-mates differ), so compiled and
eager runs share job ids and resume each other.

``run.compile`` compiles the UNet with ``torch.compile``. Compiling costs minutes on a small
CPU machine (cold cache) and saves a fraction of every batch, so it is done only when this
run (this shard) has at least ``COMPILE_MIN_BATCHES`` batches; below that the setting is a
warning and the run stays eager, so a short run never becomes slower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sdbatch.errors import RecipeError

DTYPES = ("fp32", "fp16", "bf16")
VERIFY = ("hash", "size")
# run.compile pays only past this many batches: make bench-cpu measured break-even at about
# 480 and 1650 batches of the embedded model (compile cost / saving a batch); above both
COMPILE_MIN_BATCHES = 2000
MAX_JOBS = 1_000_000  # run.max_jobs: a plan past this is refused before it is built
# The run.* settings that decide pixels (see the module docstring); job_folder keeps them.
PIXEL_RUN_KEYS = ("run.dtype",)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True, slots=True)
class RunSettings:
    dry_run: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    retry_failed: bool = False
    verify: str = "hash"  # hash | size
    progress: bool = True
    show_jobs: int = 5
    deadline: str | None = None
    max_jobs: int = MAX_JOBS
    strict_prompts: bool = False
    compile: bool = False


def _bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise RecipeError(field, value, "true or false")


def _count(field: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise RecipeError(field, value, f"an integer >= {lo}")
    return value


def parse_run(run: dict | None) -> RunSettings:
    """``run:`` of a composed recipe -> RunSettings; a bad value names its key."""
    run = dict(run or {})
    d = RunSettings()
    device = str(run.get("device", d.device)).strip().lower()
    if not _DEVICE.match(device):
        raise RecipeError("run.device", run.get("device"), "auto, cpu, cuda, cuda:N or mps")
    dtype = str(run.get("dtype", d.dtype)).strip().lower()
    if dtype not in ("auto", *DTYPES):
        raise RecipeError("run.dtype", run.get("dtype"), f"one of auto, {', '.join(DTYPES)}")
    verify = str(run.get("verify", d.verify)).strip().lower()
    if verify not in VERIFY:
        raise RecipeError(
            "run.verify", run.get("verify"), "hash (sha256 of each image) or size (faster)"
        )
    deadline = run.get("deadline", d.deadline)
    return RunSettings(
        dry_run=_bool("run.dry_run", run.get("dry_run", d.dry_run)),
        device=device,
        dtype=dtype,
        retry_failed=_bool("run.retry_failed", run.get("retry_failed", d.retry_failed)),
        verify=verify,
        progress=_bool("run.progress", run.get("progress", d.progress)),
        show_jobs=_count("run.show_jobs", run.get("show_jobs", d.show_jobs), 0),
        deadline=None if deadline in (None, "") else str(deadline),
        max_jobs=_count("run.max_jobs", run.get("max_jobs", d.max_jobs), 1),
        strict_prompts=_bool("run.strict_prompts", run.get("strict_prompts", d.strict_prompts)),
        compile=_bool("run.compile", run.get("compile", d.compile)),
    )


def compile_now(settings: RunSettings, batches: int) -> tuple[bool, str | None]:
    """Whether to compile the UNet for a run of ``batches`` batches, and the warning when
    ``run.compile`` is asked for a run too short to pay for it."""
    if not settings.compile:
        return False, None
    if batches < COMPILE_MIN_BATCHES:
        return False, (
            f"run.compile: {batches} batches is below {COMPILE_MIN_BATCHES}, where compiling "
            "starts to pay; rendering without it"
        )
    return True, None


def resolve_dtype(dtype: str, device_type: str) -> str:
    """``auto``: fp16 on CUDA, fp32 elsewhere (A1111's defaults); otherwise as given."""
    if dtype == "auto":
        return "fp16" if device_type == "cuda" else "fp32"
    return dtype
