"""Judge a shapes-world model automatically (``make eval-tiny``).

Why: "does it follow its prompt" has to be a number that a change of training recipe can
move, per sampler and per CFG scale, not an impression from a few pictures. Every
(colour, shape, background) caption of the world (45 seen in training, 9 held out) is
rendered with several seeds, at 20 steps, for every sampler in ``sdbatch.plan.samplers.SAMPLERS``
and every CFG scale asked for, through sdbatch's own ``Renderer`` (A1111 prompt encoding,
per-image generators, the sampler table), and read back by ``sdbatch.shapes.judge``::

    python -m sdbatch.shapes.evaluate --model build/sdbatch-shapes

Prints a table and writes a markdown report (plus JSON and a contact sheet) that checks the
targets: at CFG 7 with DPM++ 2M Karras colour >= 85%, shape >= 70%, background >= 95%; CFG 1
clearly below CFG 7; every sampler within 10 points of DPM++ 2M Karras.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sdbatch.plan.samplers import SAMPLERS
from sdbatch.shapes import world
from sdbatch.shapes.judge import ATTRIBUTES, accuracy, judge

REFERENCE = "DPM++ 2M Karras"
TARGETS = {"colour": 0.85, "shape": 0.70, "background": 0.95}
SAMPLER_TOLERANCE = 0.10  # every sampler's "all" within 10 points of the reference
CFG1_GAP = 0.10  # "clearly below": CFG 1's "all" at least 10 points under CFG 7's
SEED_BASE = 1000


def prompts(seeds: int, limit: int | None = None) -> list[tuple[world.Scene, int, bool]]:
    """(scene, seed, held_out) for every combination x seed; held-out combinations first.

    The scene's size and position are irrelevant (the prompt does not say them); the scene
    only carries the expected colour, shape and background.
    """
    combos = [*world.HELDOUT_COMBOS, *world.TRAIN_COMBOS]
    rows = [
        (world.Scene(shape, colour, bg), SEED_BASE + k, (colour, shape, bg) in world.HELDOUT)
        for k in range(seeds)
        for colour, shape, bg in combos
    ]
    return rows[:limit] if limit else rows


def make_jobs(model, rows, sampler: str, steps: int, cfg: float, size: int):
    from sdbatch.plan.recipe import Job

    return [
        Job(
            job_id=f"eval-{i}",
            index=i,
            model=model,
            prompt=world.caption(scene),
            negative_prompt="",
            template=None,
            vars=(),
            sampler=sampler,
            scheduler="",
            steps=steps,
            cfg=cfg,
            seed=seed,
            width=size,
            height=size,
        )
        for i, (scene, seed, _) in enumerate(rows)
    ]


def evaluate(args) -> dict:
    import torch

    from sdbatch.plan.checkpoints import resolve_model
    from sdbatch.render.pipeline import Renderer

    torch.set_num_threads(args.threads)
    model = resolve_model({"path": str(args.model)})
    renderer = Renderer.load(model, device=args.device)
    rows = prompts(args.seeds, args.limit)
    scenes = [r[0] for r in rows]
    held = np.array([r[2] for r in rows])
    results, images = [], {}
    for sampler in args.samplers:
        for cfg in args.cfg:
            t0 = time.perf_counter()
            pixels = []
            for start in range(0, len(rows), args.batch):
                part = rows[start : start + args.batch]
                jobs = make_jobs(model, part, sampler, args.steps, cfg, args.size)
                pixels += [img for img, _nan in renderer.render(jobs)]
            verdicts = [judge(p) for p in pixels]
            row = {
                "sampler": sampler,
                "cfg": cfg,
                "images": len(rows),
                "seconds": time.perf_counter() - t0,
                **accuracy(verdicts, scenes),
            }
            for name, sel in (("heldout", held), ("seen", ~held)):
                if sel.any():
                    sub = accuracy(
                        [v for v, s in zip(verdicts, sel, strict=True) if s],
                        [c for c, s in zip(scenes, sel, strict=True) if s],
                    )
                    row[f"{name}_all"] = sub["all"]
            row["confidence"] = float(np.mean([v["confidence"] for v in verdicts]))
            results.append(row)
            print(format_row(row), file=sys.stderr)
            if sampler == args.samplers[0]:
                images[cfg] = pixels
    weights = (
        emphasis(renderer, model, args.emphasis_seeds, args.steps, args.size)
        if args.emphasis_seeds
        else []
    )
    return {
        "emphasis": weights,
        "model": str(args.model),
        "model_hash": model.hash,
        "steps": args.steps,
        "seeds": args.seeds,
        "size": args.size,
        "results": results,
        "_images": images,
    }


EMPHASIS_PAIRS = [("red", "blue"), ("yellow", "cyan"), ("green", "magenta"),
                  ("blue", "yellow"), ("cyan", "red"), ("magenta", "green")]  # fmt: skip
WHITE = "on a white background"
EMPHASIS_WEIGHTS = [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4), (2.0, 0.5), (0.5, 2.0)]


def _term(colour: str, weight: float, plain: bool) -> str:
    return colour if plain else f"({colour}:{weight:g})"


def emphasis(renderer, model, seeds: int, steps: int, size: int,
             weights=EMPHASIS_WEIGHTS) -> list[dict]:  # fmt: skip
    """Do A1111 weights move colour? Two-colour captions (never seen in training) such as
    ``a (red:1.4) (blue:0.7) circle on a white background``, DPM++ 2M Karras, CFG 7: how often
    the first and the second colour is drawn, per weight pair."""
    cases = [(a, b, SEED_BASE + k) for a, b in EMPHASIS_PAIRS for k in range(seeds)]
    rows = [(world.Scene("circle", a, "white"), seed, False) for a, _, seed in cases]
    plain = make_jobs(model, rows, REFERENCE, steps, 7.0, size)
    out = []
    for wa, wb in weights:
        plain_text = (wa, wb) == (1.0, 1.0)  # the unweighted caption, no brackets
        jobs = [
            dataclasses.replace(
                job,
                prompt=f"a {_term(a, wa, plain_text)} {_term(b, wb, plain_text)} circle {WHITE}",
            )
            for job, (a, b, _) in zip(plain, cases, strict=True)
        ]
        colours = [judge(img)["colour"] for img, _nan in renderer.render(jobs)]
        first = sum(c == a for c, (a, _, _) in zip(colours, cases, strict=True))
        second = sum(c == b for c, (_, b, _) in zip(colours, cases, strict=True))
        out.append({"weights": [wa, wb], "images": len(cases), "first": first, "second": second})
        print(f"emphasis {wa:g}/{wb:g}: first colour {first}/{len(cases)}, "
              f"second {second}/{len(cases)}", file=sys.stderr)  # fmt: skip
    return out


def format_row(r: dict) -> str:
    cols = [f"{r['sampler']:<20}", f"{r['cfg']:>4g}"]
    cols += [f"{100 * r[k]:5.1f}" for k in (*ATTRIBUTES, "all")]
    cols += [f"{100 * r.get('heldout_all', float('nan')):5.1f}", f"{r['seconds']:6.1f}s"]
    return "  ".join(cols)


HEADER = "  ".join(
    [f"{'sampler':<20}", " cfg", "colour", "shape", "bg   ", "all  ", "held ", "time"]
)


def checks(results: list[dict], cfgs: list[float]) -> list[tuple[str, bool]]:
    """The issue's targets, each as (description, passed)."""
    by = {(r["sampler"], r["cfg"]): r for r in results}
    out = []
    hi, lo = max(cfgs), min(cfgs)
    ref = by.get((REFERENCE, 7.0)) or by.get((REFERENCE, hi))
    if ref:
        for k, target in TARGETS.items():
            out.append(
                (
                    f"{REFERENCE} CFG {ref['cfg']:g}: {k} {ref[k]:.0%} >= {target:.0%}",
                    ref[k] >= target,
                )
            )
        low = by.get((REFERENCE, lo))
        if low and lo < ref["cfg"]:
            gap = ref["all"] - low["all"]
            out.append(
                (
                    f"CFG {lo:g} all {low['all']:.0%} vs CFG {ref['cfg']:g} "
                    f"{ref['all']:.0%}: {100 * gap:.0f} points lower (needs >= "
                    f"{100 * CFG1_GAP:.0f})",
                    gap >= CFG1_GAP,
                )
            )
        worst = [r for r in results if r["cfg"] == ref["cfg"] and r["sampler"] != REFERENCE]
        if worst:
            far = max(worst, key=lambda r: abs(r["all"] - ref["all"]))
            d = abs(far["all"] - ref["all"])
            out.append(
                (
                    f"every sampler's all within {100 * SAMPLER_TOLERANCE:.0f} points of "
                    f"{REFERENCE} at CFG {ref['cfg']:g} (farthest: {far['sampler']}, "
                    f"{100 * d:.0f} points)",
                    d <= SAMPLER_TOLERANCE,
                )
            )
    return out


def write_report(report: dict, out: Path, cfgs: list[float]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    images = report.pop("_images")
    sheet = out.with_suffix(".png")
    if images:
        contact_sheet(images, sheet)
    lines = [
        f"# Evaluation of `{report['model']}` (hash {report['model_hash']})",
        "",
        f"Every caption of the shapes world ({len(world.ALL_COMBOS)} combinations, "
        f"{len(world.HELDOUT_COMBOS)} held out from training) x {report['seeds']} seeds, "
        f"{report['size']}x{report['size']}, {report['steps']} steps, empty negative "
        "prompt; judged from pixels by `sdbatch.shapes.judge`. `held-out all` is the "
        "all-three-correct rate on the held-out combinations only.",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks(report["results"], cfgs)]
    lines += [
        "",
        "## Results",
        "",
        "| sampler | CFG | colour | shape | background | all | held-out all | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        cells = [f"{100 * r[k]:.1f}" for k in (*ATTRIBUTES, "all")]
        cells.append(f"{100 * r.get('heldout_all', float('nan')):.1f}")
        lines.append(
            f"| {r['sampler']} | {r['cfg']:g} | {' | '.join(cells)} | {r['seconds']:.1f} |"
        )
    if report.get("emphasis"):
        lines += [
            "",
            "## Emphasis",
            "",
            "Two-colour captions `a (A:wa) (B:wb) circle on a white background` "
            f"({len(EMPHASIS_PAIRS)} colour pairs x "
            f"{report['emphasis'][0]['images'] // len(EMPHASIS_PAIRS)} seeds, {REFERENCE}, "
            "CFG 7): how often the picture is the first / the second colour.",
            "",
            "| weights A / B | first colour | second colour |",
            "|---|---|---|",
        ]
        for e in report["emphasis"]:
            wa, wb = e["weights"]
            lines.append(f"| {wa:g} / {wb:g} | {e['first']}/{e['images']} | "
                         f"{e['second']}/{e['images']} |")  # fmt: skip
    if images:
        lines += ["", f"Contact sheet (first sampler; one row block per CFG): `{sheet.name}`"]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def contact_sheet(images: dict[float, list[np.ndarray]], path: Path, per_row: int = 27) -> None:
    """All images of the first sampler, one block of rows per CFG scale, 2x upscaled."""
    blocks = []
    for pixels in images.values():
        n = len(pixels)
        rows = -(-n // per_row)
        pad = [np.full_like(pixels[0], 255)] * (rows * per_row - n)
        tiles = np.stack(pixels + pad).reshape(rows, per_row, *pixels[0].shape)
        block = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * pixels[0].shape[0], -1, 3)
        blocks += [block, np.full((4, block.shape[1], 3), 255, np.uint8)]
    sheet = np.concatenate(blocks)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), 0).save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("build/sdbatch-shapes"))
    p.add_argument("--out", type=Path, default=Path("build/eval-tiny/report.md"))
    p.add_argument("--seeds", type=int, default=6, help="seeds per caption (default 6)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts (smoke)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, nargs="+", default=[7.0, 1.0])
    p.add_argument(
        "--samplers", nargs="+", default=None, help=f"A1111 names (default: all, {REFERENCE} first)"
    )
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--emphasis-seeds", type=int, default=12,
                   help="seeds per colour pair for the emphasis table (0: skip)")  # fmt: skip
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: safe on a shared machine)"
    )
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.samplers is None:
        args.samplers = [REFERENCE] + [s for s in SAMPLERS if s != REFERENCE]
    unknown = [s for s in args.samplers if s not in SAMPLERS]
    if unknown:
        p.error(f"unknown sampler(s) {unknown}; known: {', '.join(SAMPLERS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(HEADER, file=sys.stderr)
    report = evaluate(args)
    out = write_report(report, args.out, args.cfg)
    for text, ok in checks(report["results"], args.cfg):
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
