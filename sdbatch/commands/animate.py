"""``sdbatch-tools animate DIR --axis COL``: one sweep axis as an animated WebP or GIF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdbatch.commands.grid import FONT_HELP


def register(sub) -> None:
    p = sub.add_parser("animate", help="animate one sweep axis (WebP or GIF)")
    p.add_argument("dir", help="an output folder (every manifest/ folder under it is read)")
    p.add_argument("--axis", required=True, help="column the frames step through, e.g. cfg")
    p.add_argument("--where", help="pin the other columns, e.g. 'seed == 1'")
    p.add_argument("--duration", type=int, default=500, help="milliseconds per frame (500)")
    p.add_argument("--caption", action="store_true", help="write the axis value under each frame")
    p.add_argument(
        "--scale",
        type=int,
        metavar="N",
        default=1,
        help="enlarge each frame N times, nearest neighbour: crisp pixels (default 1)",
    )
    p.add_argument("--font", metavar="PATH", help=FONT_HELP)
    p.add_argument(
        "-o",
        "--out",
        help="output .webp or .gif (default DIR/animations/<axis>[-where-...][-scaleN].webp)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sdbatch.outputs.reading import load_rows
    from sdbatch.views.animate import animate, default_path
    from sdbatch.views.grid import check_scale

    scale = check_scale(args.scale)
    out = Path(args.out) if args.out else default_path(args.dir, args.axis, args.where, scale)
    rows = load_rows(args.dir)
    notes = animate(rows, args.axis, out, args.where, args.duration, args.caption, scale, args.font)
    for note in notes:
        print(note, file=sys.stderr)
    print(out)
    return 0
