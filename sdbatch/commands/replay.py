"""``sdbatch-tools replay IMAGE... [-o PATH] [--name NAME]``: a recipe per image, from its infotext.

One recipe per image: a recipe's sweep axes multiply, so several images cannot share one
recipe without making jobs nobody asked for. Like ``sdbatch`` itself, bad input writes nothing:
every image is read and checked before the first file is written.

Names that become files stay in the folder asked for: a recipe name (``--name``, the ``-o``
file's stem, or ``replay_<image stem>``) is letters, digits, ``_`` and ``-``, so it can hold
no ``/`` or ``..``; an existing file, or a symlink even to nowhere, is only replaced with
``--force``, and then the link itself is replaced, never the file it points to. Each recipe
is written whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from sdbatch.errors import UserError
from sdbatch.outputs.atomic import atomic_file

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def register(sub) -> None:
    p = sub.add_parser(
        "replay", help="write a recipe that regenerates an image from its A1111 infotext"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG files (sdbatch's or A1111's)")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="RECIPE.yaml (one image) or a folder (NAME.yaml per image); default: print",
    )
    p.add_argument(
        "--name",
        help="recipe name (several images: NAME_1, NAME_2, ...); default: replay_<image stem>",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing recipe files")
    p.add_argument(
        "--a1111", metavar="ROOT",
        help="an A1111 install whose model folders the image's Lora hashes, TI hashes, VAE and "
        "upscaler are looked up in (the recipe then names it as folders.a1111); default: "
        "SDBATCH_A1111 and the SDBATCH_<KIND> folders",
    )  # fmt: skip
    p.set_defaults(func=run)


def _names(args: argparse.Namespace, to_file: Path | None) -> list[str]:
    """One recipe name per image, unique, usable as ``+recipe=NAME``."""
    from sdbatch.views.replay import default_name

    n = len(args.images)
    if args.name:
        names = [args.name] if n == 1 else [f"{args.name}_{i}" for i in range(1, n + 1)]
    elif to_file is not None:
        names = [to_file.stem]
    else:
        names, seen = [], set()
        for image in args.images:
            name = base = default_name(image)
            k = 2
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            seen.add(name)
            names.append(name)
    for name in names:
        if not _NAME.fullmatch(name):
            raise UserError(f"--name: {name!r} is not allowed; letters, digits, '_' and '-'")
    return names


def run(args: argparse.Namespace) -> int:
    from sdbatch.views.replay import read_infotext_file, recipe_from_infotext

    out = Path(args.output).expanduser() if args.output else None
    to_file = out if out is not None and out.suffix.lower() in (".yaml", ".yml") else None
    if to_file is not None and len(args.images) > 1:
        raise UserError(f"-o: {args.output!r} is one file; give a folder for several images")
    if to_file is not None and not _NAME.fullmatch(to_file.stem):
        raise UserError(f"-o: {to_file.name!r} is not allowed; letters, digits, '_' and '-'.yaml")
    if out is not None and to_file is None and out.exists() and not out.is_dir():
        raise UserError(f"-o: {args.output!r} is not a folder; name a folder or a .yaml file")
    names = _names(args, to_file)

    root = None
    if args.a1111:
        root = Path(args.a1111).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"--a1111: {args.a1111!r} is not a folder; give an A1111 install root")
        os.environ["SDBATCH_A1111"] = str(root)  # the folders' lookups read the environment
    recipes, errors = [], []
    for image, name in zip(args.images, names, strict=True):
        try:
            text = read_infotext_file(image)
            recipes.append(recipe_from_infotext(text, name, source=Path(image).name))
            if root is not None:
                recipes[-1].values["folders"] = {"a1111": str(root)}
        except UserError as exc:
            errors.append(str(exc))
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    if errors:
        return 2

    if out is None:
        for i, (image, recipe) in enumerate(zip(args.images, recipes, strict=True)):
            _warn(image, recipe.warnings)
            print(("---\n" if i else "") + recipe.to_yaml(), end="")
        return 0

    paths = [to_file] if to_file is not None else [out / f"{r.name}.yaml" for r in recipes]
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not args.force:
        raise UserError(f"-o: {', '.join(existing)} exists; --force overwrites")
    folders = [str(p) for p in paths if p.is_dir() and not p.is_symlink()]
    if folders:
        raise UserError(f"-o: {folders[0]} is a folder; --force replaces files only")
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"-o: cannot make the folder {path.parent} ({exc.strerror})") from None
    for image, recipe, path in zip(args.images, recipes, paths, strict=True):
        _warn(image, recipe.warnings)
        try:
            with atomic_file(path, "w", encoding="utf-8") as f:  # a symlink is replaced
                f.write(recipe.to_yaml(path.stem))
        except OSError as exc:
            raise UserError(f"-o: cannot write {path} ({exc.strerror})") from None
        print(f"wrote {path}; run: SDBATCH_RECIPES={path.parent} sdbatch +recipe={path.stem}")
    return 0


def _warn(image: str, warnings: list[str]) -> None:
    """Warnings quote the image's own text: shown escaped, one line each."""
    from sdbatch.views.replay import one_line

    for warning in warnings:
        print(f"warning: {one_line(image)}: {one_line(warning)}", file=sys.stderr)
