"""``sdbatch-tools export DIR... --format imagefolder -o OUT``: images + metadata for ``datasets``.

The logic lives in ``sdbatch.outputs.export`` (pyarrow only), imported when the command runs.
"""

from __future__ import annotations

import argparse

from sdbatch.commands.manifest import DIR_HELP


def register(sub) -> None:
    p = sub.add_parser("export", help="write the ok images as a dataset (Hugging Face imagefolder)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help=DIR_HELP)
    p.add_argument(
        "--format",
        choices=["imagefolder"],
        default="imagefolder",
        help="imagefolder: metadata.jsonl + images/, for load_dataset('imagefolder', data_dir=OUT)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="dataset folder to write")
    p.add_argument(
        "--copy", action="store_true", help="copy the images (default: hard-link when possible)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sdbatch.outputs.export import export_imagefolder
    from sdbatch.outputs.manifest_tools import all_sources

    result = export_imagefolder(all_sources(args.dirs), args.output, link=not args.copy)
    how = ", ".join(
        f"{n} {word}" for n, word in ((result.linked, "linked"), (result.copied, "copied")) if n
    )
    print(f"exported {result.images} images ({how}) and {result.metadata}")
    print(f"load with: datasets.load_dataset('imagefolder', data_dir={str(args.output)!r})")
    return 0
