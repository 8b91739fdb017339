"""Prompt sets: plain prompts plus templates with named variables, variants and wildcards.

Named variables are written ``{name}`` and take each value listed under ``vars:``; they multiply
like every other sweep axis and are recorded per manifest row. Everything else in a template is
sd-dynamic-prompts syntax, expanded combinatorially by the ``dynamicprompts`` library:
``{a|b|c}`` variants and ``__name__`` wildcards read from ``wildcards/NAME.txt`` in a recipe
folder. A1111 emphasis passes through untouched, so ``(__hair_styles__:1.2)`` works.

A wildcard name is a path inside ``wildcards/`` and never leaves it: letters, digits, ``-``,
``_``, ``.`` and spaces, with ``/`` between subfolders (``__colors/warm__``); a ``..`` part, a
leading ``/``, ``~`` or ``\\`` is refused. dynamicprompts' glob wildcards are supported:
``*``, ``?`` and ``[...]`` match the names of the files in ``wildcards/`` (``__colors/*__`` is
every file in ``wildcards/colors/``), so they stay inside it too. The same check covers names
that only appear once a template runs (a wildcard inside a wildcard file, or one built from a
``${variable}``), and a wildcard that matches no file is an error, not a literal ``__name__``.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import RecipeError

MAX_PROMPTS_PER_TEMPLATE = 10_000
_VAR = re.compile(r"(?<![\\$])\{([A-Za-z_][A-Za-z0-9_]*)\}")  # not ${name}: dynamicprompts
# A wildcard as dynamicprompts' parser reads one: anything but ( $ { } # between "__" and "__",
# after an optional sampling method (~ random, @ cyclical).
_WILDCARD = re.compile(r"__[~@]?([^(${}#]+?)__")
_NAME_PART = re.compile(r"[\w\-. *?\[\]!]+")
_GLOB = re.compile(r"[*?\[]")
_SAMPLING = re.compile(r"(?:__|\{)[~@]")  # where a random or cyclical sampling mark can be
ENDLESS = (
    "combinatorial syntax: sdbatch makes every combination once, and '~' (random) or '@' "
    "(cyclical) sampling picks without end; remove the ~ or @"
)
WILDCARD_NAMES = (
    "a name inside wildcards/: letters, digits, - _ . and spaces, / between subfolders (no '..' "
    "part, no leading /), or a glob (* ? [...]) over those names"
)


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One prompt of the set, with the template and variable values it came from."""

    text: str
    template: str | None = None
    vars: tuple[tuple[str, str], ...] = ()


def wildcard_files(dirs: Sequence[Path]) -> dict[str, Path]:
    """Wildcard name -> file, from ``<dir>/wildcards/**/*.txt``; later folders win."""
    found: dict[str, Path] = {}
    for d in dirs:
        root = Path(d) / "wildcards"
        if root.is_dir():
            for p in sorted(root.rglob("*.txt")):
                found[p.relative_to(root).with_suffix("").as_posix()] = p
    return found


def _root_of(name: str, path: Path) -> Path:
    """The ``wildcards/`` folder a wildcard file belongs to."""
    root = path.with_suffix("")
    for _ in name.split("/"):
        root = root.parent
    return root


def _inside(name: str) -> bool:
    """Whether a wildcard name is a relative path that stays inside ``wildcards/``."""
    return all(_NAME_PART.fullmatch(p) and p.strip() not in (".", "..") for p in name.split("/"))


def check_wildcard(name: str, field: str, wildcards: dict[str, Path]) -> None:
    """A RecipeError naming ``field`` and ``__name__`` unless the name stays inside
    ``wildcards/`` and names (or, as a glob, matches) one of its files."""
    if not _inside(name):
        raise RecipeError(field, f"__{name}__", WILDCARD_NAMES)
    known = ", ".join(sorted(wildcards)) or "none"
    if _GLOB.search(name):
        if not any(fnmatch.fnmatch(k, pat) for k in wildcards for pat in (name, f"**/{name}")):
            allowed = f"a glob matching a file in wildcards/; available: {known}"
            raise RecipeError(field, f"__{name}__", allowed)
    elif name not in wildcards:
        raise RecipeError(field, f"__{name}__", f"no wildcards/{name}.txt; available: {known}")


def _manager(roots: list[Path], wildcards: dict[str, Path], field: str):
    """dynamicprompts' WildcardManager, checking every name it is asked for (also those inside
    wildcard files and those built from variables) and refusing names that match nothing
    (dynamicprompts would repeat ``__name__`` as text forever)."""
    from dynamicprompts.wildcards import WildcardManager

    class Checked(WildcardManager):
        def get_values(self, wildcard):
            name = str(wildcard)
            if not _inside(name):
                raise RecipeError(field, f"__{name}__", WILDCARD_NAMES)
            values = super().get_values(wildcard)
            if not values:
                known = ", ".join(sorted(wildcards)) or "none"
                allowed = f"no file in wildcards/ matches it; available: {known}"
                raise RecipeError(field, f"__{name}__", allowed)
            return values

    manager = Checked(root_map={"": roots} if roots else None)
    manager.sort_wildcards = False  # keep the file's order: it is the order of the images
    return manager


def _count(command) -> int | None:
    """How many prompts a parsed template makes combinatorially (None if not countable)."""
    from dynamicprompts.commands import (
        LiteralCommand,
        SequenceCommand,
        VariantCommand,
        WildcardCommand,
    )

    if isinstance(command, LiteralCommand):
        return 1
    if isinstance(command, SequenceCommand):
        counts = [_count(c) for c in command.tokens]
        return None if None in counts else math.prod(counts)
    if isinstance(command, VariantCommand):
        if (command.min_bound, command.max_bound) != (1, 1):
            return None
        counts = [_count(v) for v in command.values]
        return None if None in counts else sum(counts)
    if isinstance(command, WildcardCommand):
        return None
    return None


def _endless(command) -> bool:
    """Whether a parsed template uses random (``~``) or cyclical (``@``) sampling anywhere:
    those never run out, so a combinatorial expansion of them never ends."""
    method = getattr(command, "sampling_method", None)
    if method is not None and method.is_nonfinite():
        return True
    children = [
        *(getattr(command, "tokens", None) or ()),
        *(getattr(command, "values", None) or ()),
    ]
    inner = getattr(command, "wildcard", None)
    if inner is not None and not isinstance(inner, str):
        children.append(inner)
    return any(_endless(c) for c in children)


def _expand_dynamic(text: str, wildcards: dict[str, Path], field: str, cap: int) -> list[str]:
    """Every combination of ``{a|b}`` variants and ``__name__`` wildcards in ``text``."""
    if "{" not in text and "__" not in text:
        return [text]
    for name in _WILDCARD.findall(text):
        check_wildcard(name, field, wildcards)
    from dynamicprompts.generators import CombinatorialPromptGenerator
    from dynamicprompts.parser.parse import parse

    if _SAMPLING.search(text):
        try:
            endless = _endless(parse(text))
        except Exception:
            endless = False  # the generator below names the parse error
        if endless:
            raise RecipeError(field, text, ENDLESS)
    roots = list(dict.fromkeys(_root_of(name, p) for name, p in wildcards.items()))
    generator = CombinatorialPromptGenerator(_manager(roots, wildcards, field))
    try:
        prompts = [str(p) for p in generator.generate(text, max_prompts=cap + 1)]
    except RecipeError:
        raise
    except Exception as exc:  # pyparsing's ParseException and friends
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecipeError(field, text, f"a valid template ({msg})") from None
    if len(prompts) > cap:
        try:
            n = _count(parse(text))
        except Exception:
            n = None
        many = f"{n:,}" if n else f"more than {cap:,}"
        raise RecipeError(field, text, f"at most {cap:,} prompts per template; it makes {many}")
    return prompts


def _var_values(vars: dict, field: str) -> dict[str, list[str]]:
    out = {}
    for name, values in vars.items():
        vals = list(values) if isinstance(values, list | tuple) else [values]
        if not vals:
            raise RecipeError(f"vars.{name}", [], "a non-empty list of values")
        out[str(name)] = [str(v) for v in vals]
    return out


def expand_template(
    template: str,
    vars: dict,
    wildcards: dict[str, Path],
    cap: int = MAX_PROMPTS_PER_TEMPLATE,
    field: str = "template",
) -> list[PromptItem]:
    """One template -> its prompts: the product of its variables, then its variants."""
    values = _var_values(vars, field)
    used = list(dict.fromkeys(_VAR.findall(template)))
    for name in used:
        if name not in values:
            known = ", ".join(values) or "none (add a `vars:` mapping)"
            raise RecipeError(field, f"{{{name}}}", f"template variables defined: {known}")
    items: list[PromptItem] = []
    for combo in itertools.product(*(values[n] for n in used)):
        chosen = dict(zip(used, combo, strict=True))
        text = _VAR.sub(lambda m, c=chosen: c[m.group(1)], template)
        for prompt in _expand_dynamic(text, wildcards, field, cap):
            items.append(PromptItem(prompt, template, tuple(chosen.items())))
            if len(items) > cap:
                raise RecipeError(
                    field, template, f"at most {cap:,} prompts per template; it makes more"
                )
    return items


def prompt_set(
    prompts: Iterable[str],
    templates: Iterable[str],
    vars: dict,
    wildcards: dict[str, Path],
    cap: int = MAX_PROMPTS_PER_TEMPLATE,
) -> list[PromptItem]:
    """Plain prompts (variants expanded too), then every template's expansion, in order."""
    items: list[PromptItem] = []
    for i, p in enumerate(prompts):
        field = f"prompt[{i}]"
        items.extend(PromptItem(t) for t in _expand_dynamic(p, wildcards, field, cap))
    for i, t in enumerate(templates):
        items.extend(expand_template(t, vars, wildcards, cap, field=f"template[{i}]"))
    return items
