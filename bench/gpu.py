"""`make bench-gpu`: SD 1.5 on one CUDA GPU: the plain diffusers loop, sdbatch's CLI, bare compute.

It builds an SD 1.5-architecture pipeline with random weights from the shipped config folder
(sdbatch/models/configs/sd15; nothing is downloaded), in fp16, and measures at 512x512, 20 steps,
Euler a, CFG 7:

  (a) the plain diffusers loop in this process (model loaded, one warm-up call untimed): one
      pipe() call per image, PNG saved with Pillow;
  (b) sdbatch's CLI on the same jobs, timed as a process (start-up, model hash and load count),
      on a diffusers folder saved from the random pipeline; plus its rendering span (the
      manifest's first batch started to last batch finished);
  (c) the pipeline compute alone (prompt embeddings ready, images returned as arrays, no I/O):
      default attention (SDPA) at batch sizes 1, 4, 8, 16; the classic attention processor at
      1 and 8; channels_last at 8; torch.compile of the UNet at 8 (a fresh compile cache: the
      compile time is its own figure and the cold-cache row counts it);
  SDXL base (random weights, sdbatch/models/configs/sdxl) at 1024x1024, batch 4, with --sdxl and
  when the budget has time left.

Every row is printed, as a Markdown table row, as soon as it is measured; the ratios (b)/(c at
batch 8) and (b)/(a) come last. Random weights run the same kernels as trained ones, so speed
and memory are SD 1.5's; the pictures are noise. Run it from a repository checkout with sdbatch
installed (`pip install -e .`) and a CUDA build of torch:

    python bench/gpu.py                       # meant to end inside 8 minutes (--budget-s)
    python bench/gpu.py --sdxl --out gpu.md   # SDXL too; the report also goes to gpu.md
    make bench-gpu ARGS='--sdxl'              # the same through make
    python bench/gpu.py --device cpu --tiny   # the embedded tiny model on the CPU, in seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from report import command_line  # noqa: E402
from workloads import NEGATIVE, PROMPTS, SEED0  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
SAMPLER = "Euler a"
CFG = 7.0
RECIPE = "sdbatch_bench_gpu"
COMPUTE = "(c) pipeline compute"
INSTALL_HINT = (
    "bench/gpu.py runs from a sdbatch checkout with sdbatch installed: in the repository root "
    "run `pip install -e .` (into the environment of the python that runs this script), "
    "then run it again."
)
TABLE_HEAD = (
    "| way | variant | batch | images | seconds | images/s | it/s | peak GPU GiB | notes |",
    "|---|---|--:|--:|--:|--:|--:|--:|---|",
)
# Rough cost of a row relative to an SDPA row of the same batch, for the budget's estimates
SLOWER = {"classic attention": 2.0}
COMPILE_GUESS_S = {"cuda": 150.0, "cpu": 90.0}  # first torch.compile of the UNet, fresh cache
SDXL_SIZE, SDXL_BATCH = 1024, 4
SDXL_PER_IMAGE = 8.0  # SDXL 1024x1024 image vs an SD 1.5 512x512 one, about


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/gpu.py",
        description=__doc__.split("\n\n")[0].replace("`", ""),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--device",
        default="cuda",
        help="where to run: cuda (default), cuda:N, or cpu (with --tiny for a smoke run)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="the embedded tiny model instead of SD 1.5: its native 32x32, 2 steps, 2 images, "
        "batch sizes 1 and 2, fp32, no torch.compile unless --compile, 1 timed call a row; "
        "with --device cpu one CPU thread (what the test suite runs)",
    )
    ap.add_argument(
        "--sdxl",
        action="store_true",
        help="last, if the budget has time left: SDXL base with random weights at 1024x1024, "
        "batch 4, compute alone (c)",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        metavar="S",
        help="time budget in seconds from the start (default 420): a row that would end past it "
        "is not started; the rows measured so far and the ratios are still printed",
    )
    ap.add_argument(
        "--reps",
        type=int,
        metavar="N",
        help="timed calls per (c) row after a short warm-up call, median taken (default 3; "
        "1 with --tiny)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="images rendered by (a) and by (b), the same jobs (default 16: 4 prompts x 4 "
        "seeds; 2 with --tiny)",
    )
    ap.add_argument(
        "--batch-sizes",
        metavar="LIST",
        help="comma-separated batch sizes of the SDPA rows of (c) (default 1,4,8,16; 1,2 with "
        "--tiny)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="sdbatch's batch_size in (b), and the batch of the classic-attention, channels_last "
        "and compile rows and of the ratio (b)/(c) (default 8; 2 with --tiny)",
    )
    ap.add_argument(
        "--steps", type=int, metavar="N", help="sampling steps (default 20; 2 with --tiny)"
    )
    ap.add_argument(
        "--size",
        type=int,
        metavar="PX",
        help="image width = height in pixels, a multiple of 8 (default: the model's native "
        "size, 512 for SD 1.5, 32 for --tiny; SDXL always runs at 1024)",
    )
    ap.add_argument(
        "--dtype",
        choices=["fp16", "bf16", "fp32"],
        help="weights and compute dtype (default fp16 on CUDA, fp32 on the CPU and with --tiny)",
    )
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the torch.compile rows (default: on with CUDA, off on the CPU and with --tiny)",
    )
    ap.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode for the UNet (default: default; max-autotune takes minutes)",
    )
    ap.add_argument(
        "--out", type=Path, metavar="FILE", help="also write the report (Markdown) to FILE"
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (saved model, images, sdbatch's output) and say where",
    )
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the defaults that depend on --tiny and --device filled in."""
    ap = build_parser()
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.reps = args.reps or (1 if tiny else 3)
    args.jobs = args.jobs or (2 if tiny else 16)
    args.batch = args.batch or (2 if tiny else 8)
    args.steps = args.steps or (2 if tiny else 20)
    try:
        sizes = args.batch_sizes or ("1,2" if tiny else "1,4,8,16")
        args.batch_sizes = sorted({int(b) for b in sizes.split(",") if b.strip()})
    except ValueError:
        ap.error(f"--batch-sizes: a comma-separated list of integers, not {args.batch_sizes!r}")
    cpu = args.device == "cpu"
    args.dtype = args.dtype or ("fp32" if cpu or tiny else "fp16")
    if args.compile is None:
        args.compile = not (cpu or tiny)
    for name in ("reps", "jobs", "batch", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        ap.error("--batch-sizes must be positive integers")
    if args.size is not None and (args.size < 8 or args.size % 8):
        ap.error("--size must be a multiple of 8")
    return args


def need_imports():
    """torch, diffusers and sdbatch, or a message saying how to get them."""
    try:
        import diffusers  # noqa: F401
        import torch

        import sdbatch  # noqa: F401
        from sdbatch.render.schedulers import build_scheduler  # noqa: F401
    except ImportError as exc:
        sys.exit(f"{INSTALL_HINT}\n(import failed: {exc})")
    return torch


def sdbatch_executable() -> str:
    beside = Path(sys.executable).parent / "sdbatch"
    found = str(beside) if beside.is_file() else shutil.which("sdbatch")
    if not found:
        sys.exit(f"no `sdbatch` command found. {INSTALL_HINT}")
    return found


def check_device(torch, device: str):
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda}). "
            "On a CUDA machine install a CUDA build of torch (on Linux, plain `pip install "
            "torch` from PyPI is one; for make, a fresh .venv with `make bench-gpu "
            "TORCH_PIN=torch`); for a smoke run without a GPU: --device cpu --tiny"
        )
    if dev.type not in ("cuda", "cpu"):
        sys.exit(f"--device: cuda, cuda:N or cpu, not {device!r}")
    return dev


# ------------------------------------------------------------------------------------ report


class Report:
    """Lines printed as they come (flushed) and kept for --out."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


@dataclass
class Row:
    way: str
    variant: str
    batch: int | str
    images: int
    seconds: float
    iters: int  # denoising steps of the forward passes (A1111's it/s counts those)
    peak_gib: float | None = None
    note: str = ""

    @property
    def per_image(self) -> float:
        return self.seconds / self.images

    def line(self) -> str:
        ips = self.images / self.seconds
        its = self.iters / self.seconds
        peak = "—" if self.peak_gib is None else f"{self.peak_gib:.2f}"
        return (
            f"| {self.way} | {self.variant} | {self.batch} | {self.images} | {self.seconds:.3f} "
            f"| {ips:.3f} | {its:.2f} | {peak} | {self.note} |"
        )


def failed_line(way: str, variant: str, batch, exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:160].replace("|", "/")
    return f"| {way} | {variant} | {batch} | — | — | — | — | — | failed: {text} |"


class Clock:
    """The --budget-s: a row starts only if its estimate ends inside the budget."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget_s
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, what: str, estimate_s: float) -> bool:
        if self.elapsed() + estimate_s <= self.budget:
            return True
        self.skipped.append(f"{what} (~{estimate_s:.0f}s)")
        return False


# --------------------------------------------------------------------------------- pipelines


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    dlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    tlogging.set_verbosity_error()


def random_pipeline(torch, config_dir: Path, device, dtype):
    """The pipeline of ``config_dir/model_index.json`` with random weights, built on
    ``device`` (fast random init on a GPU) one component at a time, then cast to ``dtype``."""
    import diffusers
    import transformers

    from sdbatch.render.loading import load_tokenizer

    index = json.loads((config_dir / "model_index.json").read_text())
    torch.manual_seed(0)
    parts: dict = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        library, cls_name = spec
        folder = config_dir / name
        if name.startswith("tokenizer"):
            parts[name] = load_tokenizer(folder)
        elif name == "scheduler":
            cls = getattr(diffusers, cls_name)
            parts[name] = cls.from_config(cls.load_config(folder))
        elif library == "diffusers":
            cls = getattr(diffusers, cls_name)
            with torch.device(device):
                parts[name] = cls.from_config(cls.load_config(folder)).to(dtype).eval()
        else:
            cls = getattr(transformers, cls_name)
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            with torch.device(device):
                parts[name] = cls(config).to(dtype).eval()
    pipe_cls = getattr(diffusers, index["_class_name"])
    if pipe_cls is diffusers.StableDiffusionPipeline:
        extra = {"safety_checker": None, "feature_extractor": None}
        extra["requires_safety_checker"] = False
    else:
        extra = {"add_watermarker": False}
    pipe = pipe_cls(**parts, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def loaded_pipeline(folder: Path, device, dtype):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, dtype=dtype, local_files_only=True, safety_checker=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def native_size(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# ------------------------------------------------------------------------------ measurements


@dataclass(frozen=True)
class Job:
    i: int
    prompt: str
    seed: int


def make_jobs(n: int) -> tuple[tuple[str, ...], tuple[int, ...], list[Job]]:
    """n jobs = P prompts x S seeds (P the largest divisor of n up to 4), in sdbatch's plan
    order (prompt, then seed)."""
    p = max(k for k in range(1, len(PROMPTS) + 1) if n % k == 0)
    prompts, seeds = PROMPTS[:p], tuple(range(SEED0, SEED0 + n // p))
    jobs = [Job(i, pr, s) for i, (pr, s) in enumerate((pr, s) for pr in prompts for s in seeds)]
    return prompts, seeds, jobs


class Bench:
    def __init__(self, torch, args, device, dtype, report: Report, clock: Clock, tmp: Path):
        self.torch, self.args, self.device, self.dtype = torch, args, device, dtype
        self.report, self.clock, self.tmp = report, clock, tmp
        self.cuda = device.type == "cuda"
        self.rows: dict[str, Row] = {}
        self.rate: float | None = None  # seconds per (image x step), the latest estimate
        self.compile_s: float | None = None

    # -- helpers

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> float | None:
        if not self.cuda:
            return None
        return self.torch.cuda.max_memory_allocated(self.device) / 2**30

    def emit(self, key: str, row: Row) -> None:
        self.rows[key] = row
        self.report.say(row.line())

    def estimate(self, images: int, steps: int, factor: float = 1.0) -> float:
        return (self.rate or 0.0) * images * steps * factor

    def scheduler(self, pipe, base_config, seeds: list[int]):
        from sdbatch.render.schedulers import build_scheduler

        pipe.scheduler = build_scheduler(SAMPLER, base_config, seeds=seeds)

    # -- (a) the plain loop

    def plain_loop(self, pipe, jobs: list[Job], size: int) -> None:
        torch, steps = self.torch, self.args.steps
        base = dict(pipe.scheduler.config)
        out = self.tmp / "a_loop"
        out.mkdir(parents=True, exist_ok=True)

        def one(job: Job, n_steps: int):
            self.scheduler(pipe, base, [job.seed])
            image = pipe(
                job.prompt,
                negative_prompt=NEGATIVE,
                num_inference_steps=n_steps,
                guidance_scale=CFG,
                width=size,
                height=size,
                generator=torch.Generator("cpu").manual_seed(job.seed),
            ).images[0]
            image.save(out / f"{job.i:04d}.png")

        self.reset_peak()
        t = time.perf_counter()
        one(jobs[0], steps)  # warm-up, untimed: kernels chosen, caches filled
        self.sync()
        self.rate = (time.perf_counter() - t) / steps
        if not self.clock.allows("(a) plain loop", self.estimate(len(jobs), steps)):
            return
        t = time.perf_counter()
        for job in jobs:
            one(job, steps)
        self.sync()
        wall = time.perf_counter() - t
        self.rate = wall / (len(jobs) * steps)
        note = "in process, model loaded, 1 warm-up call untimed; PNG saved"
        self.emit("a", Row("(a) plain diffusers loop", "SDPA", 1, len(jobs), wall,
                           len(jobs) * steps, self.peak(), note))  # fmt: skip

    # -- (b) sdbatch's CLI

    def sdbatch_cli(self, model_path: Path, jobs: list[Job], prompts, seeds, size: int) -> None:
        args = self.args
        recipes = self.tmp / "recipes"
        recipes.mkdir(parents=True, exist_ok=True)
        values = {
            "name": RECIPE,
            "model": {"path": str(model_path)},
            "prompt": list(prompts),
            "negative_prompt": NEGATIVE,
            "sampler": SAMPLER,
            "steps": args.steps,
            "cfg": CFG,
            "size": f"{size}x{size}",
            "seeds": list(seeds),
            "batch_size": args.batch,
        }
        lines = [f"{k}: {json.dumps(v)}" for k, v in values.items()]
        (recipes / f"{RECIPE}.yaml").write_text("# written by bench/gpu.py\n" + "\n".join(lines))
        env = {
            **os.environ,
            "SDBATCH_RECIPES": str(recipes),
            "SDBATCH_CACHE": str(self.tmp / "sdbatch-cache"),
            "HF_HUB_OFFLINE": "1",
        }
        device = str(self.device) if self.device.index is not None else self.device.type
        base = [sdbatch_executable(), f"+recipe={RECIPE}", "run.progress=false"]
        base += [f"run.device={device}", f"run.dtype={args.dtype}"]
        # Untimed: a dry run hashes the model folder (2 GiB) once into the hash cache, as a
        # user's earlier runs would have; the timed run then pays start-up, plan, load, render.
        # The tiny model's 12 MiB hash in milliseconds: --tiny skips it (a second process).
        if not args.tiny:
            dry = subprocess.run([*base, f"output.dir={self.tmp / 'b_dry'}", "run.dry_run=true"],
                                 env=env, cwd=self.tmp, capture_output=True, text=True)  # fmt: skip
            if dry.returncode:
                raise RuntimeError(f"sdbatch dry run exited {dry.returncode}: {tail(dry.stderr)}")
        n_batches = math.ceil(len(jobs) / args.batch)
        estimate = 20.0 + self.estimate(len(jobs), args.steps, 0.7)
        if not self.clock.allows("(b) sdbatch CLI", estimate):
            return
        out = self.tmp / "b_sdbatch"
        self.sync()
        t = time.perf_counter()
        proc = subprocess.run([*base, f"output.dir={out}"], env=env, cwd=self.tmp,
                              capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - t
        if proc.returncode not in (0, 3):  # 3: some jobs failed (NaN counts), still timed
            raise RuntimeError(f"sdbatch exited {proc.returncode}: {tail(proc.stderr)}")
        import pyarrow.parquet as pq

        table = pq.read_table(out / "manifest", columns=["status", "started", "finished"])
        rows = table.to_pylist()
        ok = sum(r["status"] == "ok" for r in rows)
        bad = len(rows) - ok
        span = (max(r["finished"] for r in rows) - min(r["started"] for r in rows)).total_seconds()
        extra = f"; {bad} not ok (NaN or failed)" if bad else ""
        exit_note = f"; exit {proc.returncode}" if proc.returncode else ""
        variant, iters = f"SDPA, batch_size={args.batch}", n_batches * args.steps
        note = "spawn to exit: start-up, plan, load, render, PNG+manifest; model hash "
        note += "in the run" if args.tiny else "cached by an untimed dry run"
        note += extra + exit_note
        self.emit("b", Row("(b) sdbatch CLI, process", variant, args.batch, len(rows), wall,
                           iters, None, note))  # fmt: skip
        if span > 0:
            note = "manifest: first batch started to last finished"
            self.emit("b_render", Row("(b) sdbatch CLI, rendering", variant, args.batch,
                                      len(rows), span, iters, None, note))  # fmt: skip

    # -- (c) the compute alone

    def embeddings(self, pipe):
        with self.torch.inference_mode():
            out = pipe.encode_prompt(
                prompt=PROMPTS[0],
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt=NEGATIVE,
            )
        return [t for t in out if t is not None]

    def compute_call(self, pipe, base, embeds, batch: int, steps: int, size: int) -> int:
        """One batch's forward passes; returns how many images hold NaN."""
        import numpy as np

        torch = self.torch
        names = ["prompt_embeds", "negative_prompt_embeds"]
        names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        tensors = {n: torch.cat([t] * batch) for n, t in zip(names, embeds, strict=False)}
        seeds = list(range(SEED0, SEED0 + batch))
        self.scheduler(pipe, base, seeds)
        with torch.inference_mode():
            images = pipe(
                **tensors,
                num_inference_steps=steps,
                guidance_scale=CFG,
                width=size,
                height=size,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type="np",
            ).images
        return int(np.isnan(np.asarray(images)).reshape(batch, -1).any(axis=1).sum())

    def compute_row(self, key: str, pipe, base, embeds, batch: int, variant: str, size: int,
                    way: str = COMPUTE, factor: float = 1.0,
                    reps: int | None = None, first_full: bool = False,
                    extra: str = "", show: bool = True) -> list[float] | None:  # fmt: skip
        """Warm-up (a 2-step call, or with ``first_full`` a full one whose time is returned
        first), then ``reps`` timed calls; the row is the median call (printed unless not
        ``show``: the caller adds to it first)."""
        steps = self.args.steps
        reps = reps or self.args.reps
        warm_steps = steps if first_full else min(2, steps)
        est = self.estimate(batch, steps * reps + warm_steps, factor)
        if not self.clock.allows(f"{way} {variant} batch {batch}", est):
            return None
        self.reset_peak()
        self.sync()
        t = time.perf_counter()
        nan = self.compute_call(pipe, base, embeds, batch, warm_steps, size)
        self.sync()
        first = time.perf_counter() - t
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            nan = max(nan, self.compute_call(pipe, base, embeds, batch, steps, size))
            self.sync()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        if factor == 1.0 and way.startswith("(c)") and not first_full:
            self.rate = med / (batch * steps)
        note = f"median of {reps} call{'s' * (reps > 1)}"
        if nan:
            note += f"; {nan} image(s) with NaN (random weights)"
        note += extra
        row = Row(way, variant, batch, batch, med, steps, self.peak(), note)
        if show:
            self.emit(key, row)
        else:
            self.rows[key] = row
        return [first, *times]

    def compute_rows(self, pipe, size: int) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        args, torch = self.args, self.torch
        base = dict(pipe.scheduler.config)
        embeds = self.embeddings(pipe)
        ref = args.batch
        for b in args.batch_sizes:
            self.guard(COMPUTE, "SDPA", b, self.compute_row,
                       f"c_sdpa_{b}", pipe, base, embeds, b, "SDPA", size)  # fmt: skip

        saved = {"unet": pipe.unet.attn_processors, "vae": pipe.vae.attn_processors}
        try:
            pipe.unet.set_attn_processor(AttnProcessor())
            pipe.vae.set_attn_processor(AttnProcessor())
            for b in sorted({1, ref}):
                self.guard(COMPUTE, "classic attention", b, self.compute_row,
                           f"c_classic_{b}", pipe, base, embeds, b, "classic attention", size,
                           factor=SLOWER["classic attention"])  # fmt: skip
        finally:
            pipe.unet.set_attn_processor(saved["unet"])
            pipe.vae.set_attn_processor(saved["vae"])
            self.reset_peak()

        unet = pipe.unet
        try:
            unet.to(memory_format=torch.channels_last)
            self.guard(COMPUTE, "SDPA + channels_last", ref, self.compute_row,
                       "c_cl", pipe, base, embeds, ref, "SDPA + channels_last", size)  # fmt: skip
            if args.compile:
                self.guard(COMPUTE, "SDPA + channels_last + compile", ref,
                           self.compile_rows, pipe, base, embeds, size)  # fmt: skip
        finally:
            pipe.unet = unet
            unet.to(memory_format=torch.contiguous_format)
            self.reset_peak()

    def compile_rows(self, pipe, base, embeds, size: int) -> None:
        torch, args = self.torch, self.args
        ref, steps = args.batch, args.steps
        variant = f"SDPA + channels_last + compile ({args.compile_mode})"
        guess = COMPILE_GUESS_S[self.device.type]
        est = guess + self.estimate(ref, steps * (args.reps + 1))
        if not self.clock.allows(f"(c) {variant} batch {ref}", est):
            return
        unet = pipe.unet
        pipe.unet = torch.compile(unet, mode=args.compile_mode, fullgraph=True)
        times = self.compute_row("c_compile", pipe, base, embeds, ref, variant, size,
                                 first_full=True, factor=0.0, show=False)  # fmt: skip
        if not times:
            return
        first, steady = times[0], statistics.median(times[1:])
        compile_s = max(first - steady, 0.0)
        self.compile_s = compile_s
        row = self.rows["c_compile"]
        row.note += f"; compile {compile_s:.1f}s (fresh cache) not in this row"
        self.emit("c_compile", row)
        note = f"first call: compile {compile_s:.1f}s + one batch"
        self.emit("c_compile_cold", Row(COMPUTE, f"{variant}, cold cache", ref, ref, first, steps,
                                        row.peak_gib, note))  # fmt: skip

    def guard(self, way: str, variant: str, batch, fn, /, *a, **kw):
        """Run a row; a failure (out of memory, a compile error) is a row saying so."""
        try:
            return fn(*a, **kw)
        except Exception as exc:  # the table goes on
            self.report.say(failed_line(way, variant, batch, exc))
            if self.cuda:
                self.torch.cuda.empty_cache()
            return None

    # -- SDXL

    def sdxl(self, config_dir: Path) -> None:
        reps = min(self.args.reps, 2)
        batch, size, steps = SDXL_BATCH, SDXL_SIZE, self.args.steps
        sd_rate = self.rate
        est = 30.0 + self.estimate(batch, steps * reps + 2, SDXL_PER_IMAGE)
        if not self.clock.allows("SDXL 1024x1024 batch 4", est):
            return
        t = time.perf_counter()
        pipe = random_pipeline(self.torch, config_dir, self.device, self.dtype)
        build = time.perf_counter() - t
        base = dict(pipe.scheduler.config)
        embeds = self.embeddings(pipe)
        self.rate = sd_rate * SDXL_PER_IMAGE if sd_rate else None
        way = "(c) SDXL compute"
        extra = f"; {size}x{size}, UNet {params_m(pipe.unet):.0f}M parameters, random weights"
        self.guard(way, "SDPA", batch, self.compute_row, "sdxl", pipe, base, embeds, batch,
                   "SDPA", size, way=way, reps=reps, factor=0.0,
                   extra=f"{extra} built in {build:.0f}s")  # fmt: skip
        del pipe


def tail(text: str, n: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# ----------------------------------------------------------------------------------- header


def nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return "nvidia-smi not found"
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        res = subprocess.run([exe, query, "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed ({type(exc).__name__})"
    gpus = [" ".join(line.split()) for line in res.stdout.strip().splitlines()]
    return "; ".join(gpus) if res.returncode == 0 and gpus else "nvidia-smi gave nothing"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(torch, device) -> list[str]:
    import diffusers
    import transformers

    import sdbatch

    lines = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"- GPU: {torch.cuda.get_device_name(device)}, {props.total_memory / 2**30:.0f} GiB, "
            f"compute capability {props.major}.{props.minor}"
        )
        lines.append(f"- nvidia-smi (name, driver, memory): {nvidia_smi()}")
    else:
        lines.append(
            f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores, "
            f"torch threads {torch.get_num_threads()}"
        )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines.append(
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {cudnn}), diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}, sdbatch "
        f"{sdbatch.__version__}, Python {platform.python_version()}"
    )
    return lines


def ratios(bench: Bench, report: Report) -> None:
    rows, ref = bench.rows, bench.args.batch
    report.say()
    report.say("Ratios of the time per image (above 1: (b) takes longer per image):")
    c = rows.get(f"c_sdpa_{ref}")
    for label, other in ((f"(c at batch {ref})", c), ("(a)", rows.get("a"))):
        for key, what in (("b", "process wall"), ("b_render", "rendering span")):
            b = rows.get(key)
            if b and other:
                value = f"{b.per_image / other.per_image:.2f}"
            else:
                value = "not measured"
            report.say(f"- (b)/{label}, {what}: {value}")
    compile_s = bench.compile_s
    cl, comp = rows.get("c_cl"), rows.get("c_compile")
    if compile_s is not None and cl and comp:
        saved = cl.seconds - comp.seconds
        pays = f"after {math.ceil(compile_s / saved)} batches" if saved > 0 else "never here"
        report.say(
            f"- torch.compile: {compile_s:.1f}s to compile; "
            f"{cl.seconds / comp.seconds:.2f}x the channels_last speed; pays off {pays}"
        )


# -------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    tmp = Path(tempfile.mkdtemp(prefix="sdbatch-bench-gpu-"))
    # A fresh compile cache, so the compile figure is a cold-cache one.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor-cache")
    os.environ["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
    torch = need_imports()
    device = check_device(torch, args.device)
    if args.tiny and device.type == "cpu":
        # A smoke run on a shared CPU: one thread, here and in sdbatch's process, does not
        # spin against other work; the tiny model is no faster on more.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    quiet_libraries()
    from sdbatch.models import EMBEDDED_MODEL_PATH, SHIPPED_CONFIGS_DIR

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    report = Report()
    bench = Bench(torch, args, device, dtype, report, clock, tmp)
    try:
        t = time.perf_counter()
        if args.tiny:
            pipe = loaded_pipeline(EMBEDDED_MODEL_PATH, device, dtype)
            model_path, what = EMBEDDED_MODEL_PATH, "the embedded tiny model (sdbatch-shapes)"
        else:
            pipe = random_pipeline(torch, SHIPPED_CONFIGS_DIR / "sd15", device, dtype)
            model_path, what = tmp / "sd15-random", "SD 1.5 architecture, random weights"
        size = args.size or native_size(pipe)
        built = time.perf_counter() - t
        report.say("# sdbatch GPU benchmark")
        report.say()
        for line in header(torch, device):
            report.say(line)
        report.say(
            f"- model: {what} (UNet {params_m(pipe.unet):.0f}M parameters, built in {built:.0f}s),"
            f" {args.dtype}; {size}x{size}, {args.steps} steps, {SAMPLER}, CFG {CFG:g}"
        )
        report.say(f"- command: `{command_line('bench-gpu')}`")
        report.say(
            "- it/s: denoising steps per second of a batch's forward passes (A1111's it/s; "
            "VAE decode in the time); peak GPU: torch.cuda.max_memory_allocated, weights included"
        )
        report.say()
        if not args.tiny:
            pipe.save_pretrained(model_path, safe_serialization=True)
        prompts, seeds, jobs = make_jobs(args.jobs)
        for line in TABLE_HEAD:
            report.say(line)
        try:
            bench.plain_loop(pipe, jobs, size)
        except Exception as exc:
            report.say(failed_line("(a) plain diffusers loop", "SDPA", 1, exc))
        if bench.cuda:
            torch.cuda.empty_cache()  # room for sdbatch's own process
        try:
            bench.sdbatch_cli(model_path, jobs, prompts, seeds, size)
        except Exception as exc:
            report.say(failed_line("(b) sdbatch CLI, process", "SDPA", args.batch, exc))
        bench.compute_rows(pipe, size)
        if args.sdxl:
            del pipe  # SD 1.5's weights and compiled graphs go before SDXL's come
            if args.compile:
                torch._dynamo.reset()
            gc.collect()
            if bench.cuda:
                torch.cuda.empty_cache()
            try:
                bench.sdxl(SHIPPED_CONFIGS_DIR / "sdxl")
            except Exception as exc:
                report.say(failed_line("(c) SDXL compute", "SDPA", 4, exc))
        ratios(bench, report)
        if clock.skipped:
            report.say(
                f"- --budget-s {args.budget_s:g} reached: not measured: {', '.join(clock.skipped)}"
            )
        report.say(f"- total time: {clock.elapsed():.0f}s")
        if args.out:
            args.out.write_text("\n".join(report.lines) + "\n")
            print(f"report written to {args.out}", flush=True)
    finally:
        if args.keep:
            print(f"kept: {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
