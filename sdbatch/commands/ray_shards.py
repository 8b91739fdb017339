"""``sdbatch-tools ray-shards --shards N OVERRIDES...``: one sdbatch run split over a Ray cluster.

One Ray task per shard (``shard.index=i shard.count=N``), each running one ``sdbatch`` process
that loads its model once and renders all of its shard's batches into
``<output.dir>/shard-<i>-of-<N>``. Ray places the tasks (``--num-cpus``, ``--num-gpus`` per
task; Ray sets ``CUDA_VISIBLE_DEVICES``) and retries a task whose worker dies
(``--max-retries``); the retry resumes: finished batches are skipped, the batch in flight is
rendered again, so the manifests keep one row per job. The sdbatch process dies with its
worker (``PR_SET_PDEATHSIG``), so a retry never meets a stale run holding the folder.

Why not Hydra's Ray launcher: its 1.2 releases pin ``cloudpickle<3``, which holds joblib (the
``local`` launcher) back; this needs ``ray`` only (the ``ray`` extra).
"""

from __future__ import annotations

import argparse
import os
import sys

from sdbatch.errors import RecipeError, UserError

PASSED_ENV = ("SDBATCH_", "HF_", "HUGGINGFACE_")  # the driver's model folders, cache, hub mode


def register(sub) -> None:
    p = sub.add_parser(
        "ray-shards",
        help="split one sdbatch run into N shards, one Ray task each (needs the ray extra)",
        description="Run `sdbatch OVERRIDES shard.index=i shard.count=N` as N Ray tasks, each "
        "writing OUTPUT_DIR/shard-i-of-N; then `sdbatch-tools manifest merge OUTPUT_DIR`.",
    )
    p.add_argument("--shards", type=int, required=True, metavar="N", help="number of shards")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: HOST:PORT or 'auto' (a running cluster); default: start a "
        "local Ray on this machine",
    )
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs Ray reserves per shard (1)")
    p.add_argument(
        "--num-gpus", type=float, default=0, help="GPUs per shard (0; 1 on a GPU cluster)"
    )
    p.add_argument(
        "--max-retries", type=int, default=3, help="reruns of a shard whose worker dies (3)"
    )
    p.add_argument(
        "overrides",
        nargs="+",
        metavar="OVERRIDE",
        help="sdbatch's overrides, output.dir=DIR included (a folder every node can write)",
    )
    p.set_defaults(func=run)


def shard_argv(overrides: list[str], index: int, count: int) -> list[str]:
    """The overrides one shard runs with: output.dir made absolute, plus its own subfolder."""
    out = None
    rest = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "output.dir":
            out = value
        elif key.lstrip("+") in ("shard.index", "shard.count") or o in ("-m", "--multirun"):
            raise RecipeError(key, value or o, "ray-shards sets shard.index and shard.count")
        else:
            rest.append(o)
    if not out:
        raise UserError(
            "output.dir: not set; ray-shards needs output.dir=DIR, a folder every "
            "Ray node can write (each shard writes DIR/shard-I-of-N)"
        )
    folder = os.path.join(os.path.abspath(os.path.expanduser(out)), f"shard-{index}-of-{count}")
    return [*rest, f"shard.index={index}", f"shard.count={count}", f"output.dir={folder}"]


def _die_with_parent(parent: int) -> None:
    """In the sdbatch child, before exec: SIGKILL when the Ray worker that started it dies
    (Linux ``PR_SET_PDEATHSIG``); exit at once if it died already."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(137)


def render_shard(argv: list[str], env: dict[str, str]) -> int:
    """The Ray task: one sdbatch process for one shard; returns its exit code."""
    import functools
    import subprocess

    cmd = [sys.executable, "-m", "sdbatch.cli", *argv]
    guard = functools.partial(_die_with_parent, os.getpid())
    return subprocess.run(cmd, env={**os.environ, **env}, preexec_fn=guard).returncode


def run(args: argparse.Namespace) -> int:
    if args.shards < 1:
        raise RecipeError("--shards", args.shards, "a whole number, 1 or more")
    argvs = [shard_argv(args.overrides, i, args.shards) for i in range(args.shards)]
    try:
        import ray
    except ImportError as exc:
        raise UserError(f"ray-shards needs ray: pip install 'sdbatch[ray]' ({exc})") from None
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
    ray.init(address=args.address, log_to_driver=True)
    task = ray.remote(render_shard).options(
        num_cpus=args.num_cpus, num_gpus=args.num_gpus, max_retries=args.max_retries
    )
    refs = [task.remote(argv, env) for argv in argvs]
    worst = 0
    for i, (ref, argv) in enumerate(zip(refs, argvs, strict=True)):
        folder = argv[-1].split("=", 1)[1]
        try:
            code = ray.get(ref)
            print(f"shard {i} of {args.shards}: exit code {code}: {folder}", flush=True)
        except ray.exceptions.RayError as exc:
            code = 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"shard {i} of {args.shards}: failed ({first}): {folder}", flush=True)
        worst = max(worst, code)
    return worst
