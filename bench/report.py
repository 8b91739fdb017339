"""The benchmark's report: the machine, the table, the ratios, the scale figures, as Markdown.

The same text is printed and written to BENCHMARKS.md, so the file is exactly what the run said.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ways import label

B_OVER_C_TARGET = 1.10
PLAN_TARGET_S, PLAN_TARGET_MIB, RESUME_TARGET_S = 10.0, 2048.0, 3.0


def cpu_model() -> str:
    """The CPU model, its bf16 kernels (AMX, AVX-512 BF16 or none) and torch's kernel level,
    read at run time (sdbatch.render.loading.cpu_features)."""
    from sdbatch.render.loading import cpu_features, describe_cpu

    f = cpu_features()
    return f"{describe_cpu(f)}; flags: {' '.join(f['flags']) or 'none of ' + 'amx/avx512'}"


def load_line() -> str:
    """What ``uptime`` says about load: the 1, 5 and 15 minute averages."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(threads: int | None) -> dict:
    """What the numbers depend on; load averages show how quiet the machine was."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable; torch threads: {threads or '?'}"
        + (
            f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
            if "OMP_NUM_THREADS" in os.environ
            else ""
        ),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "versions": ", ".join(
            f"{d} {_version(d)}"
            for d in ("torch", "diffusers", "transformers", "pyarrow", "sdbatch")
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _s(value: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def summarize(results: dict[str, list], n: int) -> dict[str, dict]:
    """Per way: medians over repetitions."""
    out = {}
    for way in results:
        runs = results.get(way) or []
        if not runs:
            continue
        wall = _med([r.wall for r in runs])
        render = _med([r.wall - r.ready for r in runs if r.ready is not None])
        out[way] = {
            "wall": wall,
            "ips": n / wall,
            "ready": _med([r.ready for r in runs]),
            "first": _med([r.first for r in runs]),
            "render_ips": n / render if render else None,
            "rss": max(r.rss_mib for r in runs),
            "cpu": _med([r.cpu for r in runs]),
            "walls": [r.wall for r in runs],
        }
    return out


def table(stats: dict[str, dict]) -> list[str]:
    lines = [
        "| way | what | median wall s | images/s | start-up s (spawn to model ready) "
        "| first image s | images/s after start-up | CPU s | peak RSS MiB | every wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for way, s in stats.items():
        walls = ", ".join(f"{w:.1f}" for w in s["walls"])
        lines.append(
            f"| {way} | {label(way)} | {s['wall']:.2f} | {s['ips']:.2f} | {_s(s['ready'])} | "
            f"{_s(s['first'])} | {_s(s['render_ips'])} | {s['cpu']:.1f} | {s['rss']:.0f} | "
            f"{walls} |"
        )
    return lines


def _paired(results: dict, over: str, under: str) -> float:
    """Median over repetitions of under's wall / over's wall (run next to each other)."""
    pairs = zip(results[over], results[under], strict=False)
    return statistics.median(u.wall / o.wall for o, u in pairs)


def _ratio(stats: dict, results: dict, over: str, under: str, what: str) -> str:
    """Whole-process throughput ratio, and after start-up (images/s once the model is ready:
    what a long run, which starts once, sees)."""
    o, u = stats[over]["render_ips"], stats[under]["render_ips"]
    rest = f"; after start-up {o / u:.2f}x" if o and u else ""
    return (
        f"- **{over}/{under}** ({what}): **{stats[under]['wall'] / stats[over]['wall']:.2f}x** "
        f"(median of per-repetition ratios {_paired(results, over, under):.2f}x{rest})"
    )


def ratios(stats: dict[str, dict], results: dict[str, list]) -> list[str]:
    """Throughput ratios: b over a, a' and c at each dtype, and what bf16 changes."""
    lines = []
    for dt in ("fp32", "bf16"):
        sfx = "" if dt == "fp32" else f" {dt}"
        b = f"b{sfx}"
        if b not in stats:
            continue
        for way in ("a", "a'"):
            if f"{way}{sfx}" in stats:
                what = f"sdbatch's throughput over the {label(way + sfx)}"
                lines.append(_ratio(stats, results, b, f"{way}{sfx}", what))
        if dt != "fp32" and "a'" in stats:
            lines.append(_ratio(stats, results, b, "a'", "sdbatch in bf16 over the fp32 a'"))
        if dt != "fp32" and "b" in stats:
            lines.append(_ratio(stats, results, b, "b", "what bf16 gives sdbatch"))
        if f"c{sfx}" in stats:
            lines += _b_over_c(stats, results, b, f"c{sfx}")
    for b8 in ("b8", "b8 bf16"):  # batches spanning prompts, over the hand-batched loop
        for under in dict.fromkeys(("a'", "a'" + b8[2:], "b" + b8[2:])):
            if b8 in stats and under in stats:
                what = f"{label(b8)} over the {label(under)}"
                lines.append(_ratio(stats, results, b8, under, what))
    return lines


def _b_over_c(stats: dict, results: dict, b_way: str, c_way: str) -> list[str]:
    b, c = stats[b_way], stats[c_way]
    ratio = b["wall"] / c["wall"]
    verdict = "meets" if ratio <= B_OVER_C_TARGET else "misses"
    paired = ", ".join(
        f"{rb.wall / rc.wall:.3f}" for rb, rc in zip(results[b_way], results[c_way], strict=False)
    )
    lines = [
        f"- **{b_way}/{c_way}** (sdbatch wall / compute-alone wall): **{ratio:.3f}** "
        f"({verdict} the <= {B_OVER_C_TARGET:.2f} target; per repetition: {paired})",
        f"- {b_way}/{c_way} by CPU seconds (steadier than wall on a busy machine): "
        f"{b['cpu'] / c['cpu']:.3f}",
    ]
    if b["ready"] is not None and c["ready"] is not None:
        startup = b["ready"] - c["ready"]
        rest = (b["wall"] - b["ready"]) - (c["wall"] - c["ready"])
        lines.append(
            f"- where {b_way}'s extra {b['wall'] - c['wall']:+.2f}s goes (medians): "
            f"start-up {startup:+.2f}s (Hydra, sdbatch imports, plan, model hash, "
            f"lock, resume scan), after start-up {rest:+.2f}s (PNG encode + "
            "infotext + sha256 + fsync per image, one manifest part per batch, "
            "compaction at the end)"
        )
    return lines


def scale_lines(res: dict) -> list[str]:
    if not res:
        return ["(skipped: --skip-scale)"]
    plan, rs = res["plan"], res["resume"]
    ap, cp = res["append"], res["compact"]

    def ok(cond: bool) -> str:
        return "meets target" if cond else "**misses target**"

    plan_ok = plan["seconds"] < PLAN_TARGET_S and plan["rss_mib"] < PLAN_TARGET_MIB
    return [
        "| figure | value | target |",
        "|---|---|---|",
        f"| (i) `build_plan`, {plan['jobs']:,} jobs (100 x 10 template values x 1000 seeds) "
        f"-> {plan['batches']:,} batches | {plan['seconds']:.2f} s, peak RSS "
        f"{plan['rss_mib']:.0f} MiB (process; {plan['rss_before_mib']:.0f} MiB before) "
        f"| < {PLAN_TARGET_S:.0f} s, < 2 GB: {ok(plan_ok)} |",
        f'| (ii) resume scan: `resume.scan_manifest(verify="size")` (one read '
        f"{rs['read']:.2f} s, Arrow filtering, one stat per image; all 1M images on disk, "
        "as hard links) "
        f"| {rs['total']:.2f} s, peak RSS {rs['rss_mib']:.0f} MiB | < {RESUME_TARGET_S:.0f} s: "
        f"{ok(rs['total'] < RESUME_TARGET_S)} |",
        f"| (iii) `Manifest.append` of 4 rows: empty manifest vs 1M rows (median of 9) "
        f"| {ap['empty'] * 1e3:.1f} ms vs {ap['full'] * 1e3:.1f} ms "
        f"(ratio {ap['full'] / ap['empty']:.2f}) | O(batch) |",
        f"| (iii) `maybe_compact()` after a batch (below 64 parts) "
        f"| {ap['maybe_compact'] * 1e3:.2f} ms | |",
        f"| (iii) `Manifest.compact()` of 2 new parts beside 1M rows (what the runner does) "
        f"| {cp['parts_seconds'] * 1e3:.1f} ms | O(batch) |",
        f"| (iii) `Manifest.compact(full=True)` at 1M rows (only past 16 segments) "
        f"| {cp['seconds']:.2f} s, peak RSS {cp['rss_mib']:.0f} MiB | |",
    ]


def markdown(
    *,
    command: str,
    info: dict,
    workload: str,
    reps: int,
    stats: dict,
    results: dict,
    checks: list[str],
    scale: dict,
    load: tuple,
    judged: tuple = ([], {}),
    settings: tuple = ([], {}),
    compiled: list | None = None,
    scaled: bool = True,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Is sdbatch faster than the loop you would write? Measured side by side in one run by "
        "`bench/run.py` (`make bench`); every way is a whole process (Python start, imports and "
        f"model load count), run alternately {', '.join(stats)}, {next(iter(stats))}, ... and "
        "reported as medians.",
        "",
        f"Command: `{command}`",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} "
        f"(uptime at the end: {load_line()})",
        "",
        f"## Images: {workload}, embedded sdbatch-shapes model, CPU, {reps} repetition(s)",
        "",
        *table(stats),
        "",
        *ratios(stats, results),
        "",
        "b/a above 1 means sdbatch is faster than the plain loop. CPU s is the process's user + "
        "system time. On a busy machine torch's OpenMP threads spin while another job holds a "
        "core, which inflates wall and CPU time alike (a 4-image batch went from 2.5 s to 80 s "
        "while this was written): trust a run whose load averages stayed below the core count.",
        "",
        "Ways: (a) `StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL_PATH, "
        "local_files_only=True, safety_checker=None)`, per job `build_scheduler(...)`, "
        "`pipe(prompt, negative_prompt=..., generator=Generator('cpu').manual_seed(seed))`, "
        "`image.save(path)` (bench/plain_loop.py); (a') the same with one call per "
        "(prompt, sampler, cfg) and one generator per seed; (b) the CLI, fresh output folder; "
        "(c) sdbatch's forward passes alone: same batches, per-image generators, prompts "
        "encoded once, `output_type='np'`, no PNG, no files, no manifest (bench/compute_only.py).",
        "",
        "## Same images?",
        "",
        *[f"- {c}" for c in checks],
        "",
        *_judged_lines(judged),
        *_settings_lines(settings),
        *_compiled_lines(compiled),
    ]
    if scaled:
        lines += ["## Scale (pure Python, no model)", "", *scale_lines(scale), ""]
    else:  # a section of BENCHMARKS.md: one level down
        lines[0] = "## CPU speed: fp32 and bf16 side by side, torch.compile (`make bench-cpu`)"
        lines = [("#" + x) if x.startswith("## ") and i else x for i, x in enumerate(lines)]
    return "\n".join(lines)


def _judged_lines(judged: tuple) -> list[str]:
    lines, data = judged
    if not data:
        return []
    return [
        f"## bf16 on the shapes-demo prompts, judged ({data['images']} images: "
        f"recipes/shapes_demo.yaml with {data['seeds']} seeds; bench/dtype_check.py)",
        "",
        "The pixel judge (sdbatch.shapes.judge) reads colour, shape and background of every "
        "picture; autocast is fp32 weights under `torch.autocast('cpu', torch.bfloat16)`, "
        "bf16 is what `run.dtype=bf16` loads (weights in bf16). Speed: median of per-batch "
        "render-time ratios against fp32, batches in turn.",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]


def _settings_lines(settings: tuple) -> list[str]:
    lines, data = settings
    if not data:
        return []
    return [
        "## CPU settings on the compute alone, in one process (bench/cpu_settings.py)",
        "",
        "One pipeline per setting, batches in turn, so machine load hits all alike; speed is "
        "the median of the per-round time ratios to fp32 (above 1: faster).",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]


def _compiled_lines(compiled: list | None) -> list[str]:
    if not compiled:
        return []
    return ["## torch.compile", "", *[f"- {line}" for line in compiled], ""]


BEGIN, END = "<!-- bench:{} -->", "<!-- /bench:{} -->"


def write(out: Path, text: str, section: str | None) -> None:
    """The whole report into ``out``, keeping the sections other commands wrote there; or,
    with ``section``, ``text`` as that section (replacing its earlier version)."""
    old = out.read_text() if out.exists() else ""
    kept = _sections(old)
    if section:
        kept[section] = text
        text = _strip_sections(old).rstrip("\n") + "\n"
    for name, body in kept.items():
        text = (
            text.rstrip("\n") + f"\n\n{BEGIN.format(name)}\n{body.rstrip()}\n{END.format(name)}\n"
        )
    out.write_text(text.lstrip("\n"))


def _sections(text: str) -> dict[str, str]:
    import re

    found = re.findall(r"<!-- bench:(\w[\w-]*) -->\n(.*?)\n<!-- /bench:\1 -->", text, re.S)
    return dict(found)


def _strip_sections(text: str) -> str:
    import re

    return re.sub(
        r"\n*<!-- bench:(\w[\w-]*) -->\n.*?\n<!-- /bench:\1 -->\n?", "\n", text, flags=re.S
    )


def command_line(make_target: str) -> str:
    """The exact command, as typed (and ``make TARGET`` when make ran it)."""
    root = Path(__file__).resolve().parents[1]
    python = sys.executable
    if python.startswith(str(root)):
        python = os.path.relpath(python, root)
    script = os.path.relpath(os.path.abspath(sys.argv[0]), root)
    cmd = shlex.join([python, script, *sys.argv[1:]])
    return f"make {make_target}  # = {cmd}" if os.environ.get("MAKELEVEL") else cmd
