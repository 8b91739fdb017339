"""Command-line overrides: A1111's forms read as typed, and one normal form for the record.

A1111 users type sweep values the way its X/Y/Z plot taught them (``steps=10-30 (+10)``,
``cfg=5-9 [3]``, ``sampler=Euler a, DDIM``) and prompts with emphasis and templates
(``prompt=black hair, (__hair_styles__:1.2)``, ``template=black hair, {style}``). Hydra's
override grammar reads parentheses, braces and commas as its own syntax, so such a value fails
to parse, or (outside ``-m``) becomes a sweep. `a1111_argv` quotes the value for Hydra in
exactly those cases, for the keys whose values are text or sweep strings; anything Hydra reads
fine is left alone, and under ``-m`` a comma list stays Hydra's sweep.

An axis may be written as a scalar, a list or a ``{start, count}`` mapping; Hydra cannot merge
a list onto a mapping (``seeds=[7,8]`` over a recipe's ``seeds: {start: 1, count: 2}``), so a
list or mapping value for an axis replaces the recipe's value (``~seeds +seeds=[7,8]``).

A ControlNet unit's key (``controlnet.0.control_mode=...``) is set whether or not the
recipe's unit has it (``++``), as a top-level key the recipe left out is.

A whole value in brackets that is A1111 syntax (``prompt=[red:blue:0.5]``, ``prompt=[cat|dog]``)
would be a one-element list to Hydra and silently become the prompt ``red:blue:0.5``; it is
taken as the text typed instead.
"""

from __future__ import annotations

import re

from sdbatch.plan.recipe_files import escape_foreign

TEXT_KEYS = ("prompt", "negative_prompt", "template", "name")
AXIS_KEYS = ("sampler", "steps", "cfg", "size", "seeds")  # subseed is one value, not an axis
# Overrides that do not decide a job's images: left out of the recorded normal form
COSMETIC = ("run.", "output.", "hydra.", "hydra/")
_KEY = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[A-Za-z_][\w.\-/@]*)=(?P<value>.*)$", re.S)


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def hydra_quote(value: str) -> str:
    """``value`` as one Hydra quoted string (backslashes before a quote and quotes escaped)."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
    return f"'{escaped}'"


def _quotable(key: str) -> bool:
    return key in TEXT_KEYS or key in AXIS_KEYS or key.startswith("vars.")


def _unit_key(key: str) -> bool:
    """``controlnet.0.control_mode``: a ControlNet unit's key, which the recipe's unit may not
    set yet (Hydra would need ``++`` to add it); the plan checks the unit's keys, so a
    misspelt one is its one-line error listing the keys."""
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "controlnet" and parts[1].isdigit()


def a1111_argv(args: list[str], multirun: bool) -> list[str]:
    """``args`` with A1111-style values quoted for Hydra (see the module docstring)."""
    parser = _parser()
    out: list[str] = []
    for arg in args:
        m = _KEY.match(arg)
        if m and not m["prefix"] and _unit_key(m["key"]):
            arg = "++" + arg  # set or add: a unit's key the recipe left at its default
        if not m or arg.startswith("-") or not _quotable(m["key"]):
            out.append(arg)
            continue
        prefix, key, value = m["prefix"] or "", m["key"], m["value"]
        if escape_foreign(value) != value:  # sd-dynamic-prompts' ${var=...}: text, not Hydra's
            out.append(f"{prefix}{key}={hydra_quote(escape_foreign(value))}")
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra's grammar cannot read it: take the value as typed
            out.append(f"{prefix}{key}={hydra_quote(value)}")
            continue
        if override.is_sweep_override() and not multirun:
            out.append(f"{prefix}{key}={hydra_quote(value)}")
        elif key in TEXT_KEYS and _a1111_brackets(override.value()):
            # prompt=[red:blue:0.5] or [cat|dog]: Hydra reads a one-element list, A1111 means
            # prompt editing or alternation; take the value as the text typed
            out.append(f"{prefix}{key}={hydra_quote(value)}")
        elif (
            key in AXIS_KEYS
            and prefix == ""
            and not override.is_sweep_override()
            and (isinstance(override.value(), list | dict))
        ):
            out += [f"~{key}", f"+{key}={value}"]
        else:
            out.append(arg)
    return out


def _a1111_brackets(value: object) -> bool:
    """A Hydra list that is A1111's ``[from:to:when]`` / ``[a|b]`` read as a list: one element
    holding ``:`` or ``|`` (a list of several prompts is left a list)."""
    return (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], str)
        and (":" in value[0] or "|" in value[0])
    )


def normal_form(overrides: list[str]) -> str | None:
    """The overrides that decide the job, in one order and spelling: ``+`` prefixes dropped,
    ``~key`` replaced by the value given after it, cosmetic keys (``run.*`` except the ones that
    decide pixels, ``output.*``, Hydra's own) left out, sorted. None when nothing is left."""
    from sdbatch.plan.run_settings import PIXEL_RUN_KEYS

    values: dict[str, str] = {}
    for item in overrides:
        if item.startswith("~"):
            values.pop(item[1:].split("=", 1)[0], None)
            continue
        key, _, value = item.lstrip("+").partition("=")
        if key.startswith(COSMETIC) and not key.startswith(PIXEL_RUN_KEYS):
            continue
        values[key] = value
    return " ".join(f"{k}={v}" for k, v in sorted(values.items())) or None
