"""``sdbatch-tools infotext IMAGE...``: the A1111 infotext of PNGs, field by field.

Every key is shown in the order the image holds it, unknown ones included, because the point
is to see what A1111 (or sdbatch) recorded, not what sdbatch understands.
"""

from __future__ import annotations

import argparse
import json
import sys

from sdbatch.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("infotext", help="show the A1111 infotext (prompt and parameters) of PNGs")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG files")
    p.add_argument(
        "--json",
        action="store_true",
        help="print {file, prompt, negative_prompt, params} per image (a list for several)",
    )
    p.set_defaults(func=run)


def _text(file: str, info, header: bool) -> str:
    from sdbatch.views.replay import one_line

    def block(label: str, value: str) -> str:
        # continuation lines indented; escape sequences from the image shown, never acted on
        return f"{one_line(label)}: " + "\n  ".join(one_line(v) for v in value.split("\n"))

    lines = [f"== {one_line(file)} =="] if header else []
    lines.append(block("prompt", info.prompt))
    lines.append(block("negative prompt", info.negative_prompt))
    lines.extend(block(key, value) for key, value in info.params.items())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Prints every readable image; a file without infotext is one error line, exit code 2."""
    from sdbatch.outputs.infotext import parse_infotext
    from sdbatch.views.replay import read_infotext_file

    several = len(args.images) > 1
    found, failed = [], 0
    for file in args.images:
        try:
            info = parse_infotext(read_infotext_file(file))
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            found.append(
                {
                    "file": file,
                    "prompt": info.prompt,
                    "negative_prompt": info.negative_prompt,
                    "params": info.params,
                }
            )
        else:
            print(("\n" if found else "") + _text(file, info, several))
            found.append(file)
    if args.json and found:
        print(json.dumps(found if several else found[0], ensure_ascii=False, indent=2))
    return 2 if failed else 0
