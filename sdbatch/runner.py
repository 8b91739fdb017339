"""Run a plan: skip what is done, render the rest batch by batch, write PNGs and manifest rows.

Steps: 1. plan  2. resume scan  3. load the pipeline  4. per batch: render, write images
(temp file, fsync, rename), append the batch's rows  5. compact the manifest, print a summary.
A finished batch is durable before the next one starts, so a kill loses at most one batch.
"""

from __future__ import annotations

import io
import os
import sys
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sdbatch import __version__
from sdbatch.hashing import sha256_bytes, sha256_file
from sdbatch.infotext import format_infotext, png_info
from sdbatch.manifest import Manifest
from sdbatch.recipe import Batch, Job, Plan, build_plan, iter_preview

EXIT_OK, EXIT_FAILED = 0, 3


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK


def infotext_for(job: Job) -> str:
    """A1111's infotext for a job, in A1111's key order."""
    params = {
        "Steps": job.steps,
        "Sampler": job.sampler,
        "CFG scale": job.cfg,
        "Seed": job.seed,
        "Size": f"{job.width}x{job.height}",
        **job.model.infotext(),
        "Version": f"sdbatch {__version__}",
    }
    return format_infotext(job.prompt, job.negative_prompt, params)


def done_jobs(plan: Plan, out_dir: Path, manifest: Manifest, verify: str = "hash") -> set[str]:
    """Job ids of the plan whose row says ok and whose image is on disk, unchanged."""
    wanted = {j.job_id for j in plan.jobs}
    table = manifest.read(columns=["job_id", "status", "image", "image_sha256"])
    rows = [
        r for r in table.to_pylist() if r["status"] == "ok" and r["job_id"] in wanted and r["image"]
    ]

    def intact(row: dict) -> bool:
        path = out_dir / row["image"]
        try:
            if verify == "size":
                return path.stat().st_size > 0
            return sha256_file(path) == row["image_sha256"]
        except OSError:
            return False

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        flags = list(pool.map(intact, rows))
    return {r["job_id"] for r, ok in zip(rows, flags, strict=True) if ok}


def write_file_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_png(pixels, infotext: str) -> bytes:
    """uint8 (H, W, 3) array -> PNG bytes carrying A1111's `parameters` chunk."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=png_info(infotext))
    return buf.getvalue()


def _row(job: Job, plan: Plan, batch: Batch, env: dict, **fields) -> dict:
    row = {
        "job_id": job.job_id,
        "recipe": plan.name,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "template": job.template,
        "vars": list(job.vars),
        "sampler": job.sampler,
        "scheduler": job.scheduler,
        "steps": job.steps,
        "cfg": job.cfg,
        "seed": job.seed,
        "width": job.width,
        "height": job.height,
        "model": job.model.name,
        "model_hash": job.model.hash,
        "batch": batch.index,
        "image": None,
        "image_sha256": None,
        "error": None,
        "infotext": infotext_for(job),
        **env,
    }
    row.update(fields)
    return row


def run_batch(renderer, batch: Batch, todo: list[Job], plan: Plan, out_dir: Path, env: dict):
    """Render a whole batch (its composition fixes the pixels), keep the jobs still to do."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    try:
        outputs = renderer.render(batch.jobs)
        results, error = dict(zip([j.job_id for j in batch.jobs], outputs, strict=True)), None
    except Exception as exc:  # recorded per job; the run goes on
        results, error = None, f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    finished = datetime.now(timezone.utc)
    per_image = (time.perf_counter() - t0) / len(batch.jobs)
    times = {"started": started, "finished": finished, "duration_s": per_image}
    rows = []
    for job in todo:
        if results is None:
            rows.append(_row(job, plan, batch, env, status="failed", error=error, **times))
            continue
        pixels, is_nan = results[job.job_id]
        if is_nan:
            rows.append(
                _row(job, plan, batch, env, status="nan", error="NaN in the image", **times)
            )
            continue
        data = encode_png(pixels, infotext_for(job))
        rel = f"images/{job.image_name}"
        write_file_atomic(out_dir / rel, data)
        rows.append(
            _row(
                job,
                plan,
                batch,
                env,
                status="ok",
                image=rel,
                image_sha256=sha256_bytes(data),
                **times,
            )  # fmt: skip
        )
    return rows


def execute(cfg: dict, out_dir: Path, context: dict | None = None) -> Summary:
    """The whole run for one composed recipe (plain dict) writing into ``out_dir``.

    ``context`` holds per-row facts from the caller (Hydra job number, overrides).
    """
    run_cfg = cfg.get("run") or {}
    t_start = time.perf_counter()
    # 1. plan (validates everything before anything is written)
    plan = build_plan(cfg)
    # 2. resume scan
    manifest = Manifest(out_dir / "manifest")
    done = done_jobs(plan, out_dir, manifest, run_cfg.get("verify", "hash"))
    if not run_cfg.get("retry_failed", False):
        previous = manifest.read(columns=["job_id", "status"]).to_pylist()
        wanted = {j.job_id for j in plan.jobs}
        failed_before = {r["job_id"] for r in previous if r["status"] != "ok"} & wanted
    else:
        failed_before = set()
    print(
        f"{plan.name}: {plan.describe()}; {len(done)} done; batch size {plan.batch_size}",
        flush=True,
    )
    if run_cfg.get("dry_run", False):
        for line in iter_preview(plan, int(run_cfg.get("show_jobs", 5))):
            print(line)
        if len(plan.jobs) > int(run_cfg.get("show_jobs", 5)):
            print(f"  ... ({len(plan.jobs)} jobs in {len(plan.batches)} batches; dry run)")
        return Summary(skipped=len(done))

    skip = done | failed_before
    pending = [(b, [j for j in b.jobs if j.job_id not in skip]) for b in plan.batches]
    pending = [(b, todo) for b, todo in pending if todo]
    summary = Summary(skipped=len(done))
    if failed_before:
        print(f"{len(failed_before)} jobs failed before; run.retry_failed=true retries them")
        summary.failed += len(failed_before)
    if pending:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        # 3. the pipeline is loaded lazily, per model (models are the outermost axis)
        from tqdm import tqdm

        from sdbatch.pipeline import Renderer

        device, dtype = run_cfg.get("device", "auto"), run_cfg.get("dtype", "auto")
        renderer = env = None
        total = sum(len(todo) for _, todo in pending)
        bar = tqdm(total=total, unit="img", disable=not run_cfg.get("progress", True),
                   dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        try:
            for batch, todo in pending:
                if renderer is None or renderer.model != batch.jobs[0].model:
                    renderer = None  # free the previous model first
                    renderer = Renderer.load(batch.jobs[0].model, device, dtype)
                    env = {**renderer.environment(), **(context or {})}
                    bar.write(f"model: {renderer.describe()}")
                rows = run_batch(renderer, batch, todo, plan, out_dir, env)
                manifest.append(rows)
                manifest.maybe_compact()
                summary.written += sum(r["status"] == "ok" for r in rows)
                summary.failed += sum(r["status"] != "ok" for r in rows)
                bar.update(len(todo))
        finally:
            bar.close()
            manifest.compact()
    summary.seconds = time.perf_counter() - t_start
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    print(
        f"done: {summary.written} written, {summary.skipped} skipped, {summary.failed} failed "
        f"in {summary.seconds:.1f}s ({rate:.2f} images/s); outputs: {out_dir}",
        flush=True,
    )
    return summary
