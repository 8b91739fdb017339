"""``sdbatch-tools manifest summary|merge|verify|repair DIR...``: one table from many manifests.

DIR is an output folder, a manifest folder, or a folder above many (a multirun sweep). The logic
lives in ``sdbatch.outputs.manifest_tools`` (pyarrow only), imported when a subcommand runs.
``repair`` does what a run does first (``sdbatch.outputs.heal``), for folders whose recipe is not
at hand.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime

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

    r = cmds.add_parser(
        "repair",
        help="move damaged manifest files aside (never deleted) and recover their rows from the "
        "images; finish interrupted compactions; remove temporary files of killed runs",
    )
    r.add_argument("dirs", nargs="+", metavar="DIR", help=DIR_HELP)
    r.set_defaults(func=run_repair)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return str(v)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s"
    h, rem = divmod(s, 3600)
    return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def format_summary(s) -> str:
    """A ``manifest_tools.ManifestSummary`` as plain aligned text."""
    from sdbatch.outputs.manifest_tools import rate

    where = s.manifests[0] if len(s.manifests) == 1 else f"{len(s.manifests)} output folders"
    counts = ", ".join(f"{k} {v}" for k, v in s.status.items())
    lines = [f"{where}: {s.jobs} jobs" + (f"; {counts}" if counts else "")]
    lines.append(f"images: {s.images}")
    if s.started is not None and s.finished is not None:
        span_rate, busy_rate = rate(s.images, s.span_s), rate(s.images, s.busy_s)
        lines.append(f"span: {_fmt(s.started)} to {_fmt(s.finished)} ({_duration(s.span_s)})")
        speed = f"rate: {span_rate:.3g} images/s over the span" if span_rate else "rate: -"
        if busy_rate:
            speed += f", {busy_rate:.3g} images/s while generating ({_duration(s.busy_s)})"
        lines.append(speed)
    if s.groups:
        header = list(s.groups[0])
        cells = [[_fmt(g[h]) for h in header] for g in s.groups]
        width = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
        numeric = [all(isinstance(g[h], int | float) for g in s.groups) for h in header]

        def line(row):
            parts = [c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, width, numeric,
                                                                       strict=True)]  # fmt: skip
            return "  ".join(parts).rstrip()

        lines += ["", line(header), *(line(r) for r in cells)]
    return "\n".join(lines)


def run_summary(args: argparse.Namespace) -> int:
    from sdbatch.outputs.manifest_tools import all_sources, summarize

    summary = summarize(all_sources(args.dirs), args.by)
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=1))
    else:
        print(format_summary(summary))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from sdbatch.outputs.manifest_tools import all_sources, merge

    result = merge(all_sources(args.dirs), args.output)
    dropped = f", {result.dropped} duplicate jobs dropped" if result.dropped else ""
    print(
        f"wrote {args.output}: {result.rows} rows from {result.manifests} "
        f"manifest{'s' if result.manifests != 1 else ''}{dropped}"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from sdbatch.outputs.manifest_tools import all_sources, verify

    result = verify(all_sources(args.dirs), args.workers)
    for line in result.problems:
        print(line)
    bad = len(result.problems)
    print(
        f"{result.checked} images checked: {result.checked - bad} intact, {bad} "
        f"problem{'s' if bad != 1 else ''}"
    )
    return 1 if bad else 0


def run_repair(args: argparse.Namespace) -> int:
    """What a run does before it starts, without a recipe: images with no row get one from
    their PNG infotext. Takes each output folder's lock (exit code 5 while a run holds it)."""
    from sdbatch.outputs.heal import heal_output
    from sdbatch.outputs.lock import OutputLock
    from sdbatch.outputs.manifest import Manifest
    from sdbatch.outputs.manifest_tools import all_sources

    for s in all_sources(args.dirs):
        with OutputLock(s.out_dir):
            lines = heal_output(s.out_dir, Manifest(s.manifest_dir), [], None)
        for line in lines or ["nothing to repair"]:
            print(f"{s.out_dir}: {line}")
    return 0
