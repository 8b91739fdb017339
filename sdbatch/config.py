"""Typed configuration: the schema Hydra composes recipes against, and the recipe library.

Every field has a type and a default, so a misspelt key fails at compose time with Hydra's own
message. Sweep axes are typed ``Any`` because each accepts a scalar *or* a list (OmegaConf has
no unions); `sdbatch.plan.recipe` validates their values.

Recipes live in the top-level ``recipes/`` folder, which is packaged as ``sdbatch.recipes``.
Hydra maps the config group ``recipe`` to a folder named ``recipe/``, so instead of renaming the
folder we register every ``recipes/*.yaml`` in Hydra's ConfigStore under the group ``recipe``
when this module is imported (also in launcher worker processes, which import the task
function). Extra folders join through the ``SDBATCH_RECIPES`` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from sdbatch.plan.recipe_files import RECIPE_NAME, RecipeFileError, load_recipe

RECIPES_ENV = "SDBATCH_RECIPES"


@dataclass
class ModelConfig:
    path: str | None = None  # checkpoint file or diffusers folder; None (and no dir) = tiny model
    dir: str | None = None  # folder of checkpoints like A1111's models/Stable-diffusion
    name: Any = None  # with dir: file stem(s), a list sweeps models; else infotext "Model:"
    vae: str | None = None  # VAE override: .safetensors file or diffusers VAE folder
    clip_skip: int = 1  # A1111 numbering: 1 = last CLIP layer, 2 = penultimate (SD 1.x)
    allow_pickle: bool = False  # load .ckpt/.pt/.bin pickles, which can run code when loaded


@dataclass
class HiresConfig:
    scale: float = 1.0  # 1 = off; 2 = render at size, upscale 2x, img2img at the target size
    upscaler: str = "latent"  # latent (A1111's "Latent") | lanczos (decode, resize, re-encode)
    steps: int = 0  # second-pass steps; 0 = the same as `steps`
    denoise: float = 0.7  # img2img strength of the second pass (A1111's default 0.7)


@dataclass
class RunConfig:
    dry_run: bool = False  # print the plan and the first jobs, write nothing
    device: str = "auto"  # auto | cpu | cuda | cuda:N  (auto: CUDA when present)
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16  (auto: fp16 on CUDA, fp32 on CPU)
    retry_failed: bool = False  # re-run jobs whose row says failed/nan
    verify: str = "hash"  # resume check of finished images: hash (sha256) | size (faster)
    progress: bool = True  # tqdm progress bar on stderr
    show_jobs: int = 5  # how many jobs a dry run lists
    deadline: str | None = None  # stop cleanly after the batch in flight: "07:00" or "6h"
    max_jobs: int = 1_000_000  # a bigger plan is refused before it is built (raise it here)


@dataclass
class ShardConfig:
    index: int = 0  # this worker's shard: batches index, index+count, index+2*count, ...
    count: int = 1  # number of shards; the union of all shards is the unsharded run


@dataclass
class OutputConfig:
    dir: str = "outputs/${name}"  # images/ and manifest/ go here; same command, same place


@dataclass
class SdbatchConfig:
    name: str = "untitled"  # recipe name: names the output folder and the manifest's recipe
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: Any = None  # a prompt or a list of prompts
    template: Any = None  # a template (or list) using {var} names from `vars`
    vars: dict[str, Any] = field(default_factory=dict)  # variable -> list of values
    negative_prompt: str = ""
    sampler: Any = "Euler a"  # A1111 sampler name(s)
    steps: Any = 20
    cfg: Any = 7.0  # classifier-free guidance scale(s); 0 and 1 turn guidance off
    size: Any = "512x512"  # WIDTHxHEIGHT, each a multiple of 8
    seeds: Any = 0  # a seed, a list, or {start: S, count: N}
    subseed: Any = None  # A1111's variation seed (used when subseed_strength > 0)
    subseed_strength: float = 0.0  # 0..1; with it every image keeps the first seed (A1111)
    rng: str = "cpu"  # noise source: cpu (same image on any device) | gpu (A1111's default)
    hires: HiresConfig = field(default_factory=HiresConfig)
    batch_size: int = 4  # images per forward pass (jobs sharing model/size/sampler/steps/cfg)
    run: RunConfig = field(default_factory=RunConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    grids: list[Any] = field(default_factory=list)  # [{x: vars.style, y: cfg}] drawn at the end


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes: the bundled library, then ``$SDBATCH_RECIPES`` entries."""
    dirs = [Path(str(resources.files("sdbatch.recipes")))]
    for entry in os.environ.get(RECIPES_ENV, "").split(os.pathsep):
        if entry.strip():
            dirs.append(Path(entry).expanduser())
    return dirs


def available_recipes() -> dict[str, Path]:
    """Recipe name -> file; a later folder overrides an earlier one of the same name."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                if RECIPE_NAME.match(path.stem):
                    found[path.stem] = path
    return found


# Recipes that failed to load or to pass the checks of sdbatch.plan.recipe_files: name -> reason.
# They are not registered, so only a run that asks for one fails (with this reason).
PROBLEMS: dict[str, str] = {}


def recipe_problem(name: str) -> str | None:
    return PROBLEMS.get(name)


def register_configs() -> None:
    """Store the schema and every recipe that is plain data in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="base_sdbatch", node=SdbatchConfig)
    cs.repo.pop("recipe", None)  # registering again (another SDBATCH_RECIPES) starts afresh
    PROBLEMS.clear()
    for name, path in available_recipes().items():
        try:
            node = load_recipe(path)
        except RecipeFileError as exc:
            PROBLEMS[name] = str(exc)
            continue
        cs.store(group="recipe", name=name, node=node, package="_global_")


def unknown_keys(cfg: Any) -> list[str]:
    """Dotted keys of a composed config that the schema does not have (``+foo=1``)."""
    schema = OmegaConf.to_container(OmegaConf.structured(SdbatchConfig), resolve=False)
    given = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    free = {"vars", "grids"}  # keys named by the user
    found: list[str] = []

    def walk(node: dict, ref: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if key not in ref:
                found.append(dotted)
            elif dotted not in free and isinstance(ref[key], dict) and isinstance(value, dict):
                walk(value, ref[key], dotted + ".")

    walk(given, schema, "")
    return found


def known_keys(parent: str = "") -> list[str]:
    """The schema's keys under ``parent`` (dotted; empty for the top level)."""
    node: Any = OmegaConf.to_container(OmegaConf.structured(SdbatchConfig), resolve=False)
    for part in filter(None, parent.split(".")):
        node = node.get(part) if isinstance(node, dict) else None
    return list(node) if isinstance(node, dict) else []


register_configs()
