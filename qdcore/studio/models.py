"""The models the studio lists: those trained into the cache, and the model packs a
recipe's `model.from` can name (imported into the cache, or installed by a plugin).

Nothing here imports TensorFlow: the page lists models before any is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .. import limits, paths
from ..errors import QdError
from ..models import FINISHED  # qdcore.models imports no TensorFlow


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
                data = json.loads(
                    limits.read_text(folder / name, limits.MAX_JSON_FILE_BYTES, "not one of qd's records")
                )
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


def list_packs(registry) -> list[dict]:
    """The model packs, as `qd models` lists them (qdcore.packs.listing: imported ones, then
    installed ones; manifests only): name, categories, steps, source, plugin, path, status."""
    from .. import packs

    return packs.listing(paths.cache_dir(), registry.entries["models"])


def pack_for(registry, category: str, size: tuple[int, int], prefer: str) -> Optional[str]:
    """The name of a model pack that draws `category` at `size` (`prefer` first, then by
    name), as `model.from` would find it; None when no pack does."""
    from .. import packs

    installed = registry.entries["models"]
    names = sorted(
        {r["name"] for r in list_packs(registry) if r["status"] == "finished"}, key=lambda n: (n != prefer, n)
    )
    for name in names:
        try:
            pack = packs.find(paths.cache_dir(), name, installed.get(name))
        except QdError:
            continue  # a damaged pack: `qd models` says why
        if pack is not None and category in pack.categories and tuple(pack.size) == tuple(size):
            return name
    return None
