"""``sdbatch``: the Hydra entry point. Thin: compose the config, hand the typed config on.

Exit codes: 0 every job ok; 2 bad input (one line on stderr, nothing written); 3 some jobs
failed (recorded in the manifest; re-run with run.retry_failed=true); 4 stopped early by the
deadline, SIGTERM or Ctrl-C; 5 the output folder is in use by another run; 6 the output folder
cannot be written (disk full, not a folder); 130 aborted by a second Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import sdbatch.config as config  # registers the schema and the recipes
from sdbatch import __version__
from sdbatch.errors import RecipeError, UserError, quiet_broken_pipe
from sdbatch.overrides import a1111_argv, normal_form
from sdbatch.plan.recipe_files import OUTPUT_ROOT, check_name, inside_outputs
from sdbatch.plan.run_settings import PIXEL_RUN_KEYS
from sdbatch.plan.schema import as_config
from sdbatch.run import gpus

EXIT_BAD_INPUT = 2
EXIT_ABORTED = 130  # the shell's code for Ctrl-C


def output_dir(cfg: DictConfig) -> Path:
    """``output.dir``; in a multirun each job gets a sub-folder named by its overrides."""
    out = Path(str(cfg.output.dir))
    try:
        hc = HydraConfig.get()
    except ValueError:  # not under Hydra (tests call run() directly)
        return out
    if hc.mode == RunMode.MULTIRUN:
        out = out / "multirun" / job_folder(hc.overrides.task, hc.job.num)
    return out


def job_folder(overrides: list[str], job_num: int) -> str:
    """A multirun job's folder name: its overrides, sorted like Hydra's ``override_dirname`` so
    that the order on the command line does not matter (re-running resumes). ``+recipe``,
    ``run.*`` and ``output.*`` (the folder itself) are left out; a name too long for a file
    system keeps its start and gets a hash of the whole."""
    skip = ("recipe=", "run.", "output.")
    given = [o.lstrip("+") for o in overrides if not o.startswith("~")]
    keep = sorted(o for o in given if not o.startswith(skip) or o.startswith(PIXEL_RUN_KEYS))
    name = ",".join(keep).replace("/", "_") or str(job_num)
    if len(name.encode()) > 200:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = name.encode()[:160].decode(errors="ignore") + "-" + digest
    return name


def pick_gpu(cfg: DictConfig) -> None:
    """A multirun job with ``run.device=auto`` on a machine with several visible GPUs takes one
    of them (GPU ``hydra.job.num % N``; sdbatch/run/gpus.py) before torch initialises CUDA."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.mode == RunMode.MULTIRUN and str(cfg.run.device) == "auto":
        note = gpus.pin(hc.job.num)
        if note:
            print(note, flush=True)


def run_context() -> dict:
    """Per-row facts about this Hydra job: its number in a multirun and its overrides."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return {"hydra_job": None, "overrides": None}
    job = hc.job.num if hc.mode == RunMode.MULTIRUN else None
    return {"hydra_job": job, "overrides": normal_form(list(hc.overrides.task))}


def command_line_keys() -> set[str]:
    """The keys the command line set (``output.dir=x``, ``+model.allow_pickle=true``)."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return set()
    return {o.lstrip("+~").split("=", 1)[0] for o in overrides}


def check_composed(cfg: DictConfig) -> None:
    """What the schema and the recipe checks cannot see until the config is composed: keys
    added with ``+``, a name that would climb out of ``outputs/``, an output folder that a
    recipe (not the command line) put elsewhere."""
    if cfg.get("prompt") is None and cfg.get("template") is None and not _asked_recipes():
        raise UserError(
            "recipe: none given; run a recipe with +recipe=NAME (sdbatch --help lists them) "
            "or give a prompt ('prompt=a red circle')"
        )
    extra = config.unknown_keys(cfg)
    if extra:
        parent = extra[0].rpartition(".")[0]
        known = ", ".join(config.known_keys(parent))
        where = f"{parent} keys" if parent else "top-level keys"
        raise UserError(f"{extra[0]}: not a known key; {where} are {known}")
    name = cfg.get("name")
    why = check_name("name", str(name))
    if why:
        raise RecipeError("name", name, why)
    if "output.dir" not in command_line_keys() and "output" not in command_line_keys():
        folder = str(cfg.output.dir)
        if not inside_outputs(folder):
            raise RecipeError(
                "output.dir", folder,
                f"a folder inside {OUTPUT_ROOT}/ when set by a recipe; give another folder "
                "on the command line (output.dir=...)",
            )  # fmt: skip


def draw_grids(out_dir: Path, grids: list[dict]) -> None:
    """The recipe's ``grids:``, drawn when its run ends; a grid problem is a warning, never a
    failed run."""
    from sdbatch.views.grid import draw_recipe_grids

    try:
        for path in draw_recipe_grids(out_dir, grids):
            print(f"grid: {path}")
    except (UserError, OSError) as exc:
        print(f"warning: grids not drawn: {exc}", file=sys.stderr)


def run(cfg: DictConfig) -> int:
    """Compose -> the typed config (``SdbatchConfig``) -> runner. Returns the exit code."""
    from sdbatch.run.runner import execute

    check_composed(cfg)
    pick_gpu(cfg)
    typed = as_config(cfg)  # OmegaConf.to_object: the schema's dataclasses, resolved
    out = output_dir(cfg)
    grids = list(typed.grids or [])
    if grids:
        from sdbatch.views.grid import validate_grid_specs

        validate_grid_specs(grids)  # before anything is written
    summary = execute(typed, out, run_context(), salt_dir=Path(typed.output.dir))
    if grids and not summary.stopped and not typed.run.dry_run:
        draw_grids(out, grids)
    code = summary.exit_code
    if run_context()["hydra_job"] is not None and not typed.run.dry_run and (out.is_dir() or code):
        # read by MultirunExitCode in the parent; a job that stopped before its first image
        # has no folder yet, and its exit code must still reach the sweep's
        out.mkdir(parents=True, exist_ok=True)
        (out / EXIT_FILE).write_text(f"{code}\n")
    return code


EXIT_FILE = ".sdbatch-exit"
_multirun_exit = 0


class MultirunExitCode(Callback):
    """Hydra's launchers swallow job return values; the sweep's exit code is the worst of its
    jobs' codes, read back from each job folder (launchers may run jobs in other processes)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time() - 1

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global _multirun_exit
        sweep = Path(str(config.hydra.sweep.dir))
        for path in sweep.glob(f"*/{EXIT_FILE}"):
            try:
                if path.stat().st_mtime >= getattr(self, "started", 0):
                    _multirun_exit = max(_multirun_exit, int(path.read_text().strip() or 0))
            except (OSError, ValueError):
                continue


@hydra.main(version_base="1.3", config_path="conf", config_name="sdbatch")
def _hydra_main(cfg: DictConfig) -> int:
    try:
        code = run(cfg)
    except UserError as exc:  # here, before Hydra's "Error executing job" banner
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if code and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(code)
    return code


def _asked_recipes() -> list[str]:
    return [
        name
        for a in sys.argv[1:]
        if a.lstrip("+").startswith("recipe=")
        for name in a.split("=", 1)[1].split(",")
    ]


def one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; users get one."""
    text = str(exc)
    if "Could not override 'recipe'" in text:
        return "recipe: a recipe is added to the config: write +recipe=NAME (with the +)"
    if type(exc).__name__ == "OverrideParseException":
        bad = text.split("'", 2)[1] if text.count("'") >= 2 else "?"
        key, _, value = bad.partition("=")
        return (
            f"{key}: Hydra cannot read {value!r}; quote the value for Hydra inside the shell's "
            f"quotes: '{key}=\"{value}\"'"
        )
    if isinstance(exc, MissingConfigException) and "recipe" in text:
        asked = _asked_recipes()
        for name in asked:
            if config.recipe_problem(name):
                return f"recipe: {config.recipe_problem(name)}"
        missing = str(exc).split("'")
        for name in missing:  # a recipe named in another recipe's defaults
            if config.recipe_problem(name.rsplit("/", 1)[-1]):
                return f"recipe: {config.recipe_problem(name.rsplit('/', 1)[-1])}"
        names = ", ".join(sorted(n for n in config.available_recipes() if n not in config.PROBLEMS))
        bad = asked[0] if asked else "?"
        return f"recipe: {bad!r} is not a known recipe; available: {names}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    head = lines[0] if lines else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        cause_line = str(cause).strip().splitlines()[0]
        key = key or next(
            (ln.split(":", 1)[1].strip() for ln in str(cause).splitlines() if "full_key:" in ln),
            None,
        )
        if cause_line not in head:
            head = f"{head} ({cause_line})"
    if key and key.startswith("controlnet[") and "list index out of range" in head:
        return (
            f"{key}: the recipe has no such ControlNet unit (they count from 0); "
            "controlnet=[{model: NAME, image: PATH}] sets the whole list"
        )
    return f"{key}: {head}" if key else head


def main() -> None:
    """Console entry: turn bad-input exceptions into one line and exit code 2."""
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    try:
        _main(user_full_error == "1")
    finally:  # restored for callers that run main() in-process more than once
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_full_error


def _main(user_full_error: bool) -> None:
    global _multirun_exit
    _multirun_exit = 0
    args = sys.argv[1:]
    if "--version" in args or "-V" in args:
        print(f"sdbatch {__version__}")
        sys.exit(0)
    multirun = "-m" in args or "--multirun" in args
    sys.argv[1:] = a1111_argv(args, multirun)
    dry_sweep = None
    if multirun and any(a.lstrip("+").lower() == "run.dry_run=true" for a in args):
        # a dry run writes nothing: Hydra's multirun.yaml and the jobs' working folders go to a
        # temporary sweep folder, removed at the end, instead of the real sweep's
        dry_sweep = tempfile.mkdtemp(prefix="sdbatch-dry-run-")
        sys.argv.append(f"hydra.sweep.dir={dry_sweep}")
    try:
        with quiet_broken_pipe():
            _hydra_main()
            sys.stdout.flush()
        if _multirun_exit:
            sys.exit(_multirun_exit)
    except KeyboardInterrupt:  # a second Ctrl-C: the first one asked for a clean stop
        print("aborted: finished batches are saved; run the same command to continue",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_ABORTED)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (HydraException, OmegaConfBaseException) as exc:
        if user_full_error:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    finally:
        if dry_sweep:
            shutil.rmtree(dry_sweep, ignore_errors=True)


if __name__ == "__main__":
    main()
