"""``sdbatch-tools manifest summary|merge|verify DIR...``: one table from many manifests.

DIR is an output folder, a manifest folder, or a folder above many (a multirun sweep). The logic
lives in ``sdbatch.manifest_tools`` (pyarrow only), imported when a subcommand runs.
"""

from __future__ import annotations

import argparse
import json

DIR_HELP = "output folder, manifest folder, or a folder above several (a multirun sweep)"


def register(sub) -> None:
    p = sub.add_parser("manifest", help="summarise, merge or verify manifests (also sweeps)")
    cmds = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")

    s = cmds.add_parser("summary", help="counts by status or any column, time span, images/s")
    s.add_argument("dirs", nargs="+", metavar="DIR", help=DIR_HELP)
    s.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="group by a column (repeatable): sampler, cfg, output, vars.NAME, ...",
    )
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=run_summary)

    m = cmds.add_parser("merge", help="all rows of all manifests in one Parquet file")
    m.add_argument("dirs", nargs="+", metavar="DIR", help=DIR_HELP)
    m.add_argument("-o", "--output", required=True, metavar="OUT.parquet", help="file to write")
    m.set_defaults(func=run_merge)

    v = cmds.add_parser("verify", help="check every ok image against its recorded sha256")
    v.add_argument("dirs", nargs="+", metavar="DIR", help=DIR_HELP)
    v.add_argument("--workers", type=int, default=None, help="hashing threads (default: 4/CPU)")
    v.set_defaults(func=run_verify)


def run_summary(args: argparse.Namespace) -> int:
    from sdbatch.manifest_tools import all_sources, format_summary, summarize

    summary = summarize(all_sources(args.dirs), args.by)
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=1))
    else:
        print(format_summary(summary))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from sdbatch.manifest_tools import all_sources, merge

    result = merge(all_sources(args.dirs), args.output)
    dropped = f", {result.dropped} duplicate jobs dropped" if result.dropped else ""
    print(
        f"wrote {args.output}: {result.rows} rows from {result.manifests} "
        f"manifest{'s' if result.manifests != 1 else ''}{dropped}"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from sdbatch.manifest_tools import all_sources, verify

    result = verify(all_sources(args.dirs), args.workers)
    for line in result.problems:
        print(line)
    bad = len(result.problems)
    print(
        f"{result.checked} images checked: {result.checked - bad} intact, {bad} "
        f"problem{'s' if bad != 1 else ''}"
    )
    return 1 if bad else 0
