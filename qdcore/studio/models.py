"""The cached models, as the studio lists them.

Kept to one small function so a shared `qd models` list (the cond branch's) can replace it.
"""
from __future__ import annotations

import json

from pathlib import Path

from .. import paths

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
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        row = {"folder": folder.name, "finished": False, "step": None, "recipe": None}
        for name, key in ((FINISHED, "finished"), ("recipe.json", "recipe")):
            try:
                data = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                continue
            if key == "finished":
                row["finished"], row["step"] = True, data.get("step")
            else:
                row["recipe"] = data
        rows.append(row)
    return rows
