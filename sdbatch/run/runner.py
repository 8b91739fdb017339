"""Run a plan: skip what is done, render the rest batch by batch, write PNGs and manifest rows.

Steps: 1. plan (validates everything)  2. lock the output folder and scan what is done
3. per batch: render (the pipeline loads lazily, one model at a time), write images (temp file,
fsync, rename), append the batch's rows  4. compact the manifest, print a one-line summary.
A finished batch is durable before the next one starts, so a kill loses at most one batch.
Faults stay inside their batch: an out-of-memory batch is retried in halves, a NaN image is
recorded as ``nan``, any other exception is recorded per job, and the run goes on.
"""

from __future__ import annotations

import errno
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from sdbatch.errors import UserError
from sdbatch.outputs.atomic import fsync_dir, write_bytes_atomic
from sdbatch.outputs.heal import dry_run_notes, heal_output
from sdbatch.outputs.lock import OutputLock
from sdbatch.outputs.manifest import Manifest
from sdbatch.outputs.record import encode_png, infotext_for, make_row
from sdbatch.plan.hashing import sha256_bytes
from sdbatch.plan.recipe import Batch, Job, Plan, iter_preview
from sdbatch.run.control import EXIT_STOPPED
from sdbatch.run.resume import scan_manifest
from sdbatch.run.setup import Setup, load_renderer, make_salt, prepare

EXIT_OK, EXIT_FAILED, EXIT_OUTPUT = 0, 3, 6


class OutputError(UserError):
    """The output folder cannot be written (disk full, not a folder, read-only)."""

    exit_code = EXIT_OUTPUT


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why the run stopped early, if it did

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return EXIT_STOPPED
        return EXIT_FAILED if self.failed else EXIT_OK


def _short(values: list[str], limit: int = 12) -> str:
    """``5, 7, 9`` or ``1, 2, 3, ... (100 values)``."""
    if len(values) <= limit:
        return ", ".join(values)
    return ", ".join(values[: limit - 1]) + f", ... ({len(values)} values)"


def _free_accelerator_memory() -> None:
    """Return cached CUDA blocks after an out-of-memory error, before retrying smaller (only
    when the renderer brought torch in: a fake renderer runs without it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA or MPS), recognised without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def render_halving(render, jobs: tuple[Job, ...]) -> tuple[list, str | None]:
    """Render; on out-of-memory retry in halves down to one image. Returns (outputs, note)."""
    outputs, size = _render_halving(render, jobs)
    if size == len(jobs):
        return outputs, None
    return outputs, f"out of memory at batch size {len(jobs)}; rendered {size} at a time"


def _render_halving(render, jobs: tuple[Job, ...]) -> tuple[list, int]:
    try:
        return render(jobs), len(jobs)
    except Exception as exc:
        if not is_out_of_memory(exc) or len(jobs) == 1:
            raise
    _free_accelerator_memory()
    half = (len(jobs) + 1) // 2
    first, size_a = _render_halving(render, jobs[:half])
    second, size_b = _render_halving(render, jobs[half:])
    return first + second, min(size_a, size_b)


@dataclass
class Rendered:
    """One batch's render: (pixels, is_nan) by job id, or the error that failed the whole batch."""

    results: dict | None
    error: str | None
    times: dict  # started, finished, duration_s (per image), note (e.g. out-of-memory halving)


def render_batch(render, batch: Batch) -> Rendered:
    """Render a whole batch (its composition fixes the pixels); exceptions become its error."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    note = None
    try:
        outputs, note = render_halving(render, batch.jobs)
        results, error = dict(zip([j.job_id for j in batch.jobs], outputs, strict=True)), None
    except Exception as exc:  # recorded per job; the run goes on
        results, error = None, f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    times = {
        "started": started,
        "finished": datetime.now(timezone.utc),
        "duration_s": (time.perf_counter() - t0) / len(batch.jobs),
        "note": note,
    }
    return Rendered(results, error, times)


def write_batch(rendered: Rendered, batch: Batch, todo: list[Job], plan: Plan, out_dir: Path,
                env: dict) -> list[dict]:  # fmt: skip
    """Write the PNGs of the jobs still to do (atomic renames, then one directory fsync)."""
    results, error, times = rendered.results, rendered.error, rendered.times
    rows = []
    for job in todo:
        if results is None:
            rows.append(make_row(job, plan.name, batch.index, env, status="failed", error=error,
                                 **times))  # fmt: skip
            continue
        pixels, is_nan = results[job.job_id]
        if is_nan:
            rows.append(make_row(job, plan.name, batch.index, env, status="nan",
                                 error="NaN in the image", **times))  # fmt: skip
            continue
        data = encode_png(pixels, infotext_for(job))
        rel = f"images/{job.image_name}"
        write_bytes_atomic(out_dir / rel, data, sync_dir=False)
        rows.append(make_row(job, plan.name, batch.index, env, status="ok", image=rel,
                             image_sha256=sha256_bytes(data), **times))  # fmt: skip
    if any(r["status"] == "ok" for r in rows):
        fsync_dir(out_dir / "images")  # the renames are durable before the rows are written
    return rows


def _output_error(out_dir: Path, exc: OSError, done: int, total: int) -> OutputError:
    where = exc.filename or out_dir
    reason = exc.strerror or str(exc)
    hint = "free some space" if exc.errno == errno.ENOSPC else "fix the folder"
    return OutputError(
        f"output.dir: cannot write {str(where)!r} ({reason}); {done} of {total} done and "
        f"recorded; {hint} and run the same command to continue"
    )


def execute(
    cfg: dict,
    out_dir: Path,
    context: dict | None = None,
    salt_dir: Path | None = None,
    load: Callable | None = None,
) -> Summary:
    """The whole run for one composed recipe writing into ``out_dir``.

    ``context`` holds per-row facts from the caller (Hydra job number, overrides);
    ``salt_dir`` the folder whose salt draws -1 seeds (default ``out_dir``); ``load(model,
    device, dtype)`` makes the renderer of a model (default: the diffusers pipeline; tests pass
    a fake one). Order: validate and plan; see what is done (read only); load the first model
    needed; only then lock the folder (creating it) and write.
    """
    run = Run(prepare(cfg, salt_dir or out_dir), Path(out_dir), context or {},
              load or load_renderer, time.perf_counter())  # fmt: skip
    setup, settings = run.setup, run.setup.settings
    if settings.dry_run:
        return run.dry_run()
    # read only, so a bad model fails before anything exists; damaged files are healed later
    scan = scan_manifest(setup.jobs, run.out_dir, run.manifest, settings.verify, skip_damaged=True)
    first = _first_pending(setup, scan, settings.retry_failed)
    stop = setup.stop.install()  # from here on a first Ctrl-C or SIGTERM is a clean stop
    try:
        if first is not None and not run.manifest.damaged:  # else: after healing, if needed
            print(f"loading model {first.model.name} ...", flush=True)
            run.renderer = run.load_model(first.model)
        if first is not None and stop.should_stop():  # while loading: stop, nothing written
            return run.finish(Summary(skipped=len(scan[0]), stopped=stop.reason))
        try:
            lock = OutputLock(run.out_dir).acquire()
        except OSError as exc:
            if first is None:  # nothing to write: a read-only folder of finished work is fine
                _print_plan(setup, len(scan[0]))
                return run.finish(Summary(skipped=len(scan[0]), failed=len(scan[1] - scan[0])))
            raise _output_error(run.out_dir, exc, len(scan[0]), len(setup.jobs)) from None
        try:
            if setup.plan.seeds_provisional:  # the first real run draws the folder's -1 seeds
                make_salt(salt_dir or out_dir)
                run.setup = replace(prepare(cfg, salt_dir or out_dir), stop=setup.stop)
            return run.locked()
        finally:
            lock.release()
    finally:
        stop.restore()


@dataclass
class Run:
    """One run of a plan into an output folder: what every step of it needs."""

    setup: Setup
    out_dir: Path
    context: dict  # per-row facts from the caller (Hydra job, overrides)
    load: Callable  # (model, device, dtype) -> renderer
    t_start: float
    renderer: object = None
    manifest: Manifest = field(init=False)
    _batch_of: dict | None = None

    def __post_init__(self) -> None:
        self.manifest = Manifest(self.out_dir / "manifest")

    def load_model(self, model):
        extra = {"compile": True} if self.setup.compile else {}  # test loaders take three
        return self.load(model, self.setup.device, self.setup.dtype, **extra)

    def finish(self, summary: Summary) -> Summary:
        summary.seconds = time.perf_counter() - self.t_start
        _print_summary(summary, self.out_dir, len(self.setup.jobs))
        return summary

    def dry_run(self) -> Summary:
        setup, jobs, show = self.setup, self.setup.jobs, self.setup.settings.show_jobs
        done, _, _ = scan_manifest(jobs, self.out_dir, self.manifest, setup.settings.verify,
                                   skip_damaged=True)  # fmt: skip
        _print_plan(setup, len(done))
        for note in dry_run_notes(self.manifest):
            print(note)
        random = setup.plan.random_seeds if setup.plan.seeds_provisional else frozenset()
        for line in iter_preview(jobs, show, random):
            print(line)
        if len(jobs) > show:
            print(f"  ... ({len(jobs)} jobs in {len(setup.batches)} batches; dry run, "
                  "nothing written)")  # fmt: skip
        return Summary(skipped=len(done))

    def locked(self) -> Summary:
        """Holding the output lock: heal the folder, see what is done, render the rest."""
        setup, settings = self.setup, self.setup.settings
        for message in heal_output(self.out_dir, self.manifest, setup.plan.jobs,
                                   self.recovered_row):  # fmt: skip
            print(message, flush=True)
        done, failed, seen = scan_manifest(setup.jobs, self.out_dir, self.manifest,
                                           settings.verify)  # fmt: skip
        failed_before = set() if settings.retry_failed else failed - done
        _print_plan(setup, len(done))
        skip = done | failed_before
        pending = [(b, [j for j in b.jobs if j.job_id not in skip]) for b in setup.batches]
        pending = [(b, todo) for b, todo in pending if todo]
        summary = Summary(skipped=len(done), failed=len(failed_before))
        if failed_before:
            print(f"{len(failed_before)} jobs failed before; run.retry_failed=true retries them")
        if pending:
            # jobs that already have a row (retries, lost images) leave superseded rows behind;
            # then the run ends with a full compaction so plain Parquet readers see one row a job
            rewrite = any(j.job_id in seen for _, todo in pending for j in todo)
            self.render_all(pending, summary, len(done), rewrite)
        return self.finish(summary)

    def recovered_row(self, job: Job, image: str, sha256: str) -> dict:
        """The row of a finished image whose row was lost with a damaged manifest file: what the
        plan knows (everything that decides the pixels, the batch); timings and device unknown."""
        if self._batch_of is None:
            self._batch_of = {j.job_id: b.index for b in self.setup.plan.batches for j in b.jobs}
        batch = self._batch_of[job.job_id]
        return make_row(job, self.setup.plan.name, batch, {}, status="ok", image=image,
                        image_sha256=sha256)  # fmt: skip

    def render_all(self, pending, summary: Summary, n_done: int, full_compact: bool) -> None:
        from tqdm import tqdm

        setup, out_dir, manifest = self.setup, self.out_dir, self.manifest
        plan, stop, n_jobs = setup.plan, setup.stop, len(setup.jobs)
        try:
            (out_dir / "images").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _output_error(out_dir, exc, n_done, n_jobs) from None
        env, env_model = {}, None
        total = sum(len(todo) for _, todo in pending)
        bar = tqdm(total=total, unit="img", disable=not setup.settings.progress,
                   dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        try:
            for batch, todo in pending:
                if stop.should_stop():
                    summary.stopped = stop.reason
                    break
                model = batch.jobs[0].model
                if self.renderer is None or self.renderer.model != model:
                    self.renderer = None  # free the previous model first
                    bar.write(f"loading model {model.name} ...", file=sys.stdout)
                    self.renderer = self.load_model(model)
                if env_model is not self.renderer.model:
                    env_model = self.renderer.model
                    env = {**self.renderer.environment(), **self.context}
                    bar.write(f"model: {self.renderer.describe()}", file=sys.stdout)
                rendered = render_batch(self.renderer.render, batch)
                try:
                    with stop.deferred():  # a second Ctrl-C waits until the rows match the images
                        rows = write_batch(rendered, batch, todo, plan, out_dir, env)
                        manifest.append(rows)
                except OSError as exc:
                    raise _output_error(out_dir, exc, n_done + summary.written, n_jobs) from None
                manifest.maybe_compact()
                summary.written += sum(r["status"] == "ok" for r in rows)
                summary.failed += sum(r["status"] != "ok" for r in rows)
                bar.update(len(todo))
        finally:
            bar.close()
            try:
                manifest.compact(full=full_compact)
            except OSError:
                pass  # parts stay readable; the next run compacts


def _first_pending(setup: Setup, scan, retry_failed: bool) -> Job | None:
    done, failed, _ = scan
    skip = done if retry_failed else done | failed
    return next((j for j in setup.jobs if j.job_id not in skip), None)


def _print_plan(setup: Setup, n_done: int) -> None:
    plan = setup.plan
    for warning in setup.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{plan.name}: {plan.describe()}; {n_done} done; batch size {plan.batch_size}"
          f"{setup.shard_note}", flush=True)  # fmt: skip
    for axis, shown in plan.values.items():
        print(f"  {axis}: {_short(shown)}")


def _print_summary(summary: Summary, out_dir: Path, n_jobs: int) -> None:
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    if summary.stopped:
        n_done = summary.skipped + summary.written
        print(f"stopped ({summary.stopped}): {n_done} of {n_jobs} done; "
              f"run the same command to continue", flush=True)  # fmt: skip
    else:
        print(
            f"done: {summary.written} written, {summary.skipped} skipped, {summary.failed} "
            f"failed in {summary.seconds:.1f}s ({rate:.2f} images/s); outputs: {out_dir}",
            flush=True,
        )
