"""What Hydra sees: the schema (``sdbatch.plan.schema``) and the recipes, in Hydra's ConfigStore.

Hydra maps the config group ``recipe`` to a folder named ``recipe/``, so instead of renaming the
top-level ``recipes/`` folder (packaged as ``sdbatch.recipes``) every recipe file that passes
``sdbatch.plan.recipe_files``' checks is registered under the group ``recipe`` when this module
is imported: by the CLI, and by launcher worker processes, which import the task function and
compose their job's config themselves. Extra folders join through ``SDBATCH_RECIPES``.
Nothing below the CLI imports this module: the planner and runner take the schema's dataclasses.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from sdbatch.plan.recipe_files import (  # noqa: F401  (re-exported for callers of the CLI layer)
    RECIPES_ENV,
    RecipeFileError,
    available_recipes,
    load_recipe,
    recipe_dirs,
)
from sdbatch.plan.schema import (  # noqa: F401
    HiresConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    SdbatchConfig,
    ShardConfig,
)

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
