"""``sdbatch-tools gallery DIR``: a static index.html to browse, filter and inspect a run."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("gallery", help="write a static HTML gallery (works from file://)")
    p.add_argument("dir", help="an output folder (every manifest/ folder under it is read)")
    p.add_argument("-o", "--out", help="the page to write (default DIR/index.html)")
    p.add_argument(
        "--thumbs",
        type=int,
        default=0,
        metavar="PX",
        help="write JPEG thumbnails of this size into the page's gallery/ folder "
        "(default 0: the page scales the images themselves)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sdbatch.views.gallery import build_gallery

    out, n = build_gallery(args.dir, args.out, args.thumbs)
    print(f"{out} ({n} images); open it in a browser: file://{out.resolve()}")
    return 0
