"""Recipe files: found by name, loaded, and checked to be data before Hydra sees them.

A recipe can come from anyone (shipped, the user's, downloaded), so nothing in it may run
code, reach Hydra's own settings or choose where files go outside ``outputs/``. Refused, with
one line naming the file and the key:

- a ``hydra`` key (callbacks, run dir, logging handlers: each can write files or run code);
- a ``defaults`` entry that is not another recipe (``override /hydra/...``, packages ``@``);
- ``_target_`` (and Hydra's other instantiate keys) anywhere;
- a ``${resolver:...}`` interpolation (``${oc.env:HOME}`` would put the environment into the
  prompt); plain references such as ``${name}`` are fine;
- ``model.allow_pickle`` (a downloaded recipe must not switch on code execution);
- an ``output.dir`` outside ``outputs/``.

All of these stay available on the command line, which keeps Hydra's full power. A file that
does not parse, or fails a check, is not registered: it fails only the run that asks for it,
with its reason (`problem`), and every other command works.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
OUTPUT_ROOT = "outputs"
_DEFAULT_ENTRY = re.compile(r"^(?:/?recipe/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)$")


class RecipeFileError(ValueError):
    """A recipe file that is not plain data; the message is one line."""


def load_recipe(path: Path) -> Any:
    """The recipe as an OmegaConf node, or RecipeFileError naming the file, line and reason."""
    import yaml
    from omegaconf._utils import get_yaml_loader  # the loader OmegaConf.load uses

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=get_yaml_loader())
    except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError, OSError
        raise RecipeFileError(f"{path}: {_yaml_reason(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = type(data).__name__
        raise RecipeFileError(f"{path}: a recipe is a mapping of keys (found {found})")
    check_recipe(data, path)
    try:
        return OmegaConf.create(_escape_all(data))
    except Exception as exc:  # keys OmegaConf cannot hold
        raise RecipeFileError(f"{path}: {' '.join(str(exc).split())[:200]}") from None


def escape_foreign(text: str) -> str:
    """``${...}`` that is not OmegaConf's (sd-dynamic-prompts' variables, ``${c=!{red|blue}}``)
    kept as text: each ``${`` is escaped so OmegaConf leaves it to dynamicprompts."""
    if "${" not in text:
        return text
    from omegaconf import grammar_parser
    from omegaconf.errors import GrammarParseError

    try:
        grammar_parser.parse(text)
        return text
    except GrammarParseError:
        return re.sub(r"(?<!\\)\$\{", r"\\${", text)


def _escape_all(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _escape_all(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_all(v) for v in node]
    return escape_foreign(node) if isinstance(node, str) else node


def _yaml_reason(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem} (not valid YAML)"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_recipe(data: dict, path: Path | str) -> None:
    """Raise RecipeFileError for the first thing in ``data`` a recipe may not hold."""

    def refuse(key: str, why: str) -> None:
        raise RecipeFileError(f"{path}: {key}: {why}; it may only be given on the command line")

    if "hydra" in data:
        refuse("hydra", "a recipe may not change Hydra's settings")
    defaults = data.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, list):
            refuse("defaults", "must be a list of other recipe names")
        for entry in defaults:
            if entry == "_self_":
                continue
            if not isinstance(entry, str) or not _DEFAULT_ENTRY.match(entry.strip()):
                refuse(f"defaults: {entry!r}", "a recipe's defaults may only name other recipes")
    for key, value in _walk(data):
        last = key.rsplit(".", 1)[-1]
        if last in INSTANTIATE_KEYS:
            refuse(key, f"{last} would make Hydra import and call code")
        if isinstance(value, str):
            resolver = _resolver_in(value)
            if resolver:
                refuse(key, f"${{{resolver}:...}} is a resolver call; only references such as "
                       "${name} are allowed in a recipe (write \\${ for a literal ${)")  # fmt: skip
    model = data.get("model")
    if isinstance(model, dict) and model.get("allow_pickle") not in (None, False):
        refuse("model.allow_pickle", "pickle files can run code when loaded")
    output = data.get("output")
    if isinstance(output, dict) and output.get("dir") is not None:
        if not inside_outputs(str(output["dir"])):
            refuse("output.dir", f"{output['dir']!r} is outside {OUTPUT_ROOT}/")


def _walk(node: Any, prefix: str = ""):
    """(dotted key, value) for every key and leaf; keys are checked as values too."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            yield key, str(k)
            yield from _walk(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _resolver_in(text: str) -> str | None:
    """The name of the first resolver called in ``text`` (``oc.env`` in ``${oc.env:HOME}``)."""
    if "${" not in text:
        return None
    from omegaconf import grammar_parser
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as G

    try:
        tree = grammar_parser.parse(text)
    except GrammarParseError:
        return None  # not an interpolation OmegaConf can run; it fails later as text would
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, G.InterpolationResolverContext):
            return node.resolverName().getText()
        stack.extend(node.getChildren() if hasattr(node, "getChildren") else ())
    return None


def inside_outputs(folder: str) -> bool:
    """Is ``folder`` (relative to the working directory) inside ``outputs/``? ``${name}`` counts
    as one plain folder name; the resolved folder is checked again at run time."""
    text = folder.replace("${name}", "NAME")
    if os.path.isabs(text) or text.startswith("~"):
        return False
    parts = os.path.normpath(text).split(os.sep)
    return len(parts) >= 2 and parts[0] == OUTPUT_ROOT and ".." not in parts


def check_name(field: str, value: str) -> str | None:
    """Why ``value`` cannot name a folder (None when it can): no separators, no ``..``."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        return "a plain folder name (no '/', '\\' or '..')"
    if value.startswith("."):
        return "a name that does not start with '.'"
    if len(value.encode()) > 200:
        return "at most 200 bytes"
    return None


RECIPES_ENV = "SDBATCH_RECIPES"


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
