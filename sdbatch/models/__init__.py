"""Models shipped inside sdbatch.

Pure Python on purpose (no torch import): the CLI and config layer resolve the default
model name/path without paying for torch. ``EMBEDDED_MODEL_PATH`` is a normal diffusers
folder (a tiny random-weight SD-1.x pipeline, see ``tiny/README.md``) so everything runs
offline; rebuild it with ``python -m sdbatch.models.build_tiny``.
"""

from pathlib import Path

EMBEDDED_MODEL_NAME = "sdbatch-tiny"
EMBEDDED_MODEL_PATH: Path = Path(__file__).resolve().parent / "tiny"

__all__ = ["EMBEDDED_MODEL_NAME", "EMBEDDED_MODEL_PATH"]
