"""``sdbatch``: the Hydra entry point. Thin: compose the config, hand a plain dict to the runner.

Exit codes: 0 every job ok; 2 bad input (one line on stderr, nothing written); 3 some jobs
failed (recorded in the manifest; re-run with run.retry_failed=true); 4 stopped early by the
deadline, SIGTERM or Ctrl-C; 5 the output folder is in use by another run; 6 the output folder
cannot be written (disk full, not a folder); 130 aborted by a second Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import sdbatch.config as config  # registers the schema and the recipes
from sdbatch.errors import UserError

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
        keep = [o for o in hc.overrides.task if not o.lstrip("+~").startswith(("recipe=", "run."))]
        out = out / "multirun" / (",".join(keep).replace("/", "_") or str(hc.job.num))
    return out


def run_context() -> dict:
    """Per-row facts about this Hydra job: its number in a multirun and its overrides."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return {"hydra_job": None, "overrides": None}
    job = hc.job.num if hc.mode == RunMode.MULTIRUN else None
    return {"hydra_job": job, "overrides": " ".join(hc.overrides.task) or None}


def run(cfg: DictConfig) -> int:
    """Compose -> plain dict -> runner. Returns the exit code."""
    from sdbatch.runner import execute

    plain = OmegaConf.to_container(cfg, resolve=True)
    return execute(plain, output_dir(cfg), run_context()).exit_code


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


def one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; users get one."""
    if isinstance(exc, MissingConfigException) and "recipe" in str(exc):
        names = ", ".join(sorted(config.available_recipes()))
        bad = next((a.split("=", 1)[1] for a in sys.argv if a.lstrip("+").startswith("recipe=")),
                   "?")  # fmt: skip
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
    return f"{key}: {head}" if key else head


def main() -> None:
    """Console entry: turn bad-input exceptions into one line and exit code 2."""
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    try:
        _hydra_main()
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


if __name__ == "__main__":
    main()
