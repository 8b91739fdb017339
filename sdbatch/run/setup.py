"""A run's setup: settings checked, device resolved, plan built, first model loaded, all before
the runner creates a file or folder (a bad input leaves nothing behind).

torch is imported only when the device depends on the machine, and diffusers only to load.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdbatch.errors import RecipeError, UserError
from sdbatch.plan.extra_networks import tag_warning, unapplied_tags
from sdbatch.plan.recipe import Batch, Job, Plan, build_plan, select_shard, wants_random_seeds
from sdbatch.plan.run_settings import RunSettings, compile_now, parse_run, resolve_dtype
from sdbatch.plan.schema import SdbatchConfig, as_config
from sdbatch.run.control import StopSignal, parse_deadline


def resolve_device(device: str) -> str:
    """``run.device`` as the device the run will use; checked before anything is written.
    torch is imported only when the answer depends on the machine."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            found = f"{count} CUDA devices are visible" if count else "no CUDA device is available"
            raise RecipeError("run.device", device, f"auto or cpu ({found})")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RecipeError("run.device", device, "auto or cpu (MPS is not available)")
    return device


def load_renderer(model, device: str, dtype: str, compile: bool = False):
    """The pipeline for ``model``; any failure to load is one line naming the model."""
    from sdbatch.render.pipeline import Renderer

    try:
        return Renderer.load(model, device, dtype, compile=compile)
    except UserError:
        raise
    except Exception as exc:  # truncated files, missing components, refused pickles ...
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(
            f"model.path: {model.path!r} could not be loaded ({type(exc).__name__}: {detail})"
        ) from None


@dataclass
class Setup:
    """A validated run: everything checked and planned, nothing written yet."""

    plan: Plan
    batches: list[Batch]
    jobs: list[Job]
    settings: RunSettings
    device: str
    dtype: str
    stop: StopSignal
    shard_note: str
    warnings: list[str] = field(default_factory=list)  # one line each, printed with the plan
    compile: bool = False  # run.compile asked for and the run is long enough to pay for it


def prompt_warnings(plan: Plan, strict: bool) -> list[str]:
    """Extra-network tags sdbatch does not apply (hypernetworks, unknown kinds, any tag in a
    negative prompt; LoRA / LyCORIS tags are loaded): one warning per distinct tag, or with
    ``run.strict_prompts`` an error for the first."""
    prompts = dict.fromkeys(j.prompt for j in plan.jobs)
    negatives = dict.fromkeys(j.negative_prompt for j in plan.jobs)
    found = unapplied_tags(prompts, negatives)
    if strict and found:
        field_name, tag = found[0]
        why = "only applied extra-network tags (<lora:...>, <lyco:...>) with run.strict_prompts"
        raise RecipeError(field_name, tag, why)
    return [tag_warning(f, t) for f, t in found]


SALT_FILE = ".sdbatch-seed-salt"


def read_salt(folder: Path) -> str | None:
    """The folder's salt for A1111's -1 seeds, or None before the first real run."""
    try:
        return (Path(folder) / SALT_FILE).read_text().strip() or None
    except OSError:
        return None


def make_salt(folder: Path) -> str:
    """The folder's salt, made now if it has none. Concurrent shards race safely: the file is
    linked into place (never replaced), so the first one wins and the others read it."""
    folder = Path(folder)
    salt = read_salt(folder)
    if salt:
        return salt
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{SALT_FILE}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(secrets.token_hex(16) + "\n")
    try:
        os.link(tmp, folder / SALT_FILE)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return read_salt(folder) or ""


def prepare(cfg: SdbatchConfig | dict, salt_dir: Path | None = None) -> Setup:
    """Validate and plan: every bad input fails here, before a file or folder is created.
    ``salt_dir`` holds the salt of -1 seeds (the recipe's output.dir: one for all multirun jobs
    and shards); without a salt there the -1 seeds are provisional until the run makes it."""
    cfg = as_config(cfg)
    settings = parse_run(asdict(cfg.run))
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device.partition(":")[0])
    salt = read_salt(salt_dir) if salt_dir is not None and wants_random_seeds(cfg) else None
    plan = build_plan(cfg, dtype=dtype, max_jobs=settings.max_jobs, seed_salt=salt)
    warnings = prompt_warnings(plan, settings.strict_prompts)
    shard = cfg.shard
    batches = select_shard(plan, shard.index, shard.count)
    jobs = [j for b in batches for j in b.jobs]
    stop = StopSignal(parse_deadline(settings.deadline))
    shard_note = ""
    if shard.count > 1:
        shard_note = f"; shard {shard.index} of {shard.count}: {len(jobs)} jobs"
    compiled, note = compile_now(settings, len(batches))
    warnings += [note] if note else []
    return Setup(plan, batches, jobs, settings, device, dtype, stop, shard_note, warnings,
                 compiled)  # fmt: skip
