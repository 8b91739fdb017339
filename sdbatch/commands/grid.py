"""``sdbatch-tools grid DIR --x COL [--y COL] [--z COL]``: A1111-style labelled X/Y/Z sheets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("grid", help="draw labelled X/Y/Z contact sheets from a run's manifest")
    p.add_argument("dir", help="an output folder (every manifest/ folder under it is read)")
    p.add_argument("--x", required=True, help="column across, e.g. vars.style, cfg, sampler")
    p.add_argument("--y", help="column down")
    p.add_argument("--z", help="one sheet per value of this column")
    p.add_argument("--where", help="filter, e.g. \"seed == 1 and sampler == 'Euler a'\"")
    p.add_argument(
        "-o",
        "--out",
        help="output PNG, written as named; several --z sheets each add -<z>=<value> "
        "(default DIR/grids/grid-<x>-<y>[-where-...][-scaleN].png)",
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=200,
        help="refuse sheets larger than this (default 200, as A1111)",
    )
    p.add_argument(
        "--scale",
        type=int,
        metavar="N",
        default=1,
        help="enlarge each cell N times, nearest neighbour: crisp pixels (default 1, as A1111)",
    )
    p.add_argument("--font", metavar="PATH", help=FONT_HELP)
    p.set_defaults(func=run)


FONT_HELP = (
    "font file for the labels, tried before the built-in ones (a Korean font ships with "
    "sdbatch; characters this font lacks fall back to it, DejaVu Sans and installed fonts)"
)


def run(args: argparse.Namespace) -> int:
    from sdbatch.outputs.reading import load_rows
    from sdbatch.views.grid import check_scale, write_grids

    scale = check_scale(args.scale)
    rows = load_rows(args.dir)
    sheets = write_grids(
        rows, args.x, args.y, args.z, args.where, args.max_megapixels, Path(args.dir), args.out,
        scale, args.font,
    )  # fmt: skip
    for sheet in sheets:
        for note in sheet.notes:
            print(note, file=sys.stderr)
        print(f"{sheet.path} ({sheet.size[0]}x{sheet.size[1]})")
    return 0
