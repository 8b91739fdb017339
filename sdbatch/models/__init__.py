"""Models shipped inside sdbatch.

Pure Python on purpose (no torch import): the CLI and config layer resolve the default
model name/path without paying for torch. ``EMBEDDED_MODEL_PATH`` is a normal diffusers
folder: ``sdbatch-shapes``, a tiny SD-1.x pipeline trained on CPU to draw the shapes world
(``shapes/README.md`` is its model card; ``make train-tiny`` retrains it with
``sdbatch/shapes/train.py``), so everything runs offline and its pictures can be checked
against their prompts. Data only: the trainer and evaluator live in ``sdbatch/shapes/``.
"""

from pathlib import Path

EMBEDDED_MODEL_NAME = "sdbatch-shapes"
EMBEDDED_MODEL_PATH: Path = Path(__file__).resolve().parent / "shapes"
# Config-only diffusers folders (SD 1.5's and SDXL base's real configs, no weights)
SHIPPED_CONFIGS_DIR: Path = Path(__file__).resolve().parent / "configs"

__all__ = ["EMBEDDED_MODEL_NAME", "EMBEDDED_MODEL_PATH", "SHIPPED_CONFIGS_DIR"]
