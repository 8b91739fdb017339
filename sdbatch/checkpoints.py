"""Which model a recipe means, and its A1111-style identity. Pure: no torch.

`Model` is everything about the weights that decides the pixels; `Model.key` goes into every
job id, and `Model.infotext()` gives the infotext fields A1111 writes for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sdbatch.errors import RecipeError


@dataclass(frozen=True, slots=True)
class Model:
    name: str  # A1111's "Model:" (file stem or folder name)
    path: str  # checkpoint file or diffusers folder
    hash: str  # A1111-style 10 hex chars (see sdbatch.hashing)

    @property
    def key(self) -> str:
        """What of the model goes into job ids (hashes of everything that changes pixels)."""
        return self.hash

    def infotext(self) -> dict[str, object]:
        """A1111's infotext fields for this model, in A1111's order."""
        return {"Model hash": self.hash, "Model": self.name}


def resolve_model(model: dict) -> Model:
    """The model a recipe names: ``model.path`` or the embedded tiny model."""
    from sdbatch.hashing import model_hash
    from sdbatch.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PATH

    path = model.get("path")
    if path in (None, ""):
        name = model.get("name") or EMBEDDED_MODEL_NAME
        return Model(name, str(EMBEDDED_MODEL_PATH), model_hash(EMBEDDED_MODEL_PATH))
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise RecipeError("model.path", str(path), "an existing diffusers folder")
    if p.is_dir() and not (p / "model_index.json").is_file():
        raise RecipeError("model.path", str(path), "a diffusers folder with model_index.json")
    name = model.get("name") or (p.name if p.is_dir() else p.stem)
    return Model(str(name), str(p), model_hash(p))


def resolve_models(model: dict) -> list[Model]:
    """The model axis of a recipe (one model for now)."""
    return [resolve_model(model)]
