"""The cached models, as the studio lists them.

Kept to one small function so a shared `qd models` list (the cond branch's) can replace it.
"""
from __future__ import annotations

import json

from pathlib import Path

from .. import limits, paths
from ..errors import QdError

# train.FINISHED, named here too so that listing models never imports TensorFlow
# (tests/test_studio_api.py checks they agree).
FINISHED = "finished.json"


def is_trained(workdir: Path) -> bool:
    return (Path(workdir) / FINISHED).exists()


def list_models() -> list[dict]:
    """One row per folder under paths.cache_dir()/models: name, whether training finished,
    its step, and the recipe sections that made it (recipe.json, when qd wrote one)."""
    root = paths.cache_dir() / "models"
    rows = []
    if not root.is_dir():
        return rows
    # A symlink in the cache is not a model qd made (the same rule as `qd models`).
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        row = {"folder": folder.name, "finished": False, "step": None, "recipe": None}
        for name, key in ((FINISHED, "finished"), ("recipe.json", "recipe")):
            try:
                data = json.loads(limits.read_text(folder / name, limits.MAX_JSON_FILE_BYTES, "not one of qd's records"))
            except (OSError, ValueError, RecursionError, QdError):
                continue
            if not isinstance(data, dict):
                continue  # damaged: the row shows what is known
            if key == "finished":
                row["finished"], row["step"] = True, data.get("step")
            else:
                row["recipe"] = data
        rows.append(row)
    return rows
