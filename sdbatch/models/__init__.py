"""Models shipped inside sdbatch.

Pure Python on purpose (no torch import): the CLI and config layer resolve the default
model name/path without paying for torch. ``EMBEDDED_MODEL_PATH`` is a normal diffusers
folder: ``sdbatch-shapes``, a tiny SD-1.x pipeline trained on CPU to draw the shapes world
(``shapes/README.md`` is its model card; ``make train-tiny`` retrains it), so everything runs
offline and its pictures can be checked against their prompts.
"""

from pathlib import Path

EMBEDDED_MODEL_NAME = "sdbatch-shapes"
EMBEDDED_MODEL_PATH: Path = Path(__file__).resolve().parent / "shapes"

__all__ = ["EMBEDDED_MODEL_NAME", "EMBEDDED_MODEL_PATH"]
