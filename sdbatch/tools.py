"""``sdbatch-tools``: everything that is not a generation run. Starts fast: no torch import.

Each subcommand is a module in ``sdbatch/commands/`` with a ``register(subparsers)`` function
that adds its parser and sets ``func``; ``func(args)`` returns the exit code. Modules import
their heavy dependencies inside ``func``, so ``sdbatch-tools --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import sdbatch.commands
from sdbatch import __version__
from sdbatch.errors import UserError, quiet_broken_pipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdbatch-tools", description="sdbatch's companion command (not a generation run)."
    )
    parser.add_argument("--version", action="version", version=f"sdbatch-tools {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(sdbatch.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"sdbatch.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with quiet_broken_pipe():
        try:
            code = args.func(args)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = exc.exit_code
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
