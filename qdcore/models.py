"""The cache of trained models: what `qd models` lists and what `model: {from: ...}` finds.

Each model is a folder `<cache>/models/<recipe name>-<model key>/` written by qdcore.training.train:
checkpoints/, finished.json once training completed (steps, settings, and the class names of
a conditional model) and, once `qd eval` ran on the recipe that trained it, eval.json (the
held-out bound). Reading them needs no TensorFlow, so `qd models` is fast.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Optional

from . import limits
from .atomic import atomic_path
from .errors import QdError

FINISHED = "finished.json"
CHECKPOINTS = "checkpoints"
EVALUATION = "eval.json"
RECIPE = "recipe.json"  # the recipe sections that made the model (engine writes it)
_KEY = re.compile(r"^(.*)-([0-9a-f]{16})$")


def is_finished(workdir: Path) -> bool:
    return (Path(workdir) / FINISHED).is_file()


def _json(path: Path) -> Optional[dict]:
    try:
        value = json.loads(limits.read_text(path, limits.MAX_JSON_FILE_BYTES, "not one of qd's records"))
    except (OSError, ValueError, RecursionError, QdError):
        return None
    return value if isinstance(value, dict) else None


def classes(workdir: Path) -> Optional[list[str]]:
    """The class names of a finished conditional model; None for a one-category model."""
    finished = _json(Path(workdir) / FINISHED) or {}
    return finished.get("classes")


def record_evaluation(workdir: Path, figures: dict) -> None:
    """Keep the model's held-out figures beside it, for `qd models`."""
    with atomic_path(Path(workdir) / EVALUATION) as tmp:
        tmp.write_text(json.dumps(figures))


def _checkpoint_step(workdir: Path) -> Optional[int]:
    # tf.train.CheckpointManager's index file names the newest checkpoint `ckpt-<step>`.
    try:
        text = limits.read_text(
            workdir / CHECKPOINTS / "checkpoint", limits.MAX_JSON_FILE_BYTES, "not a checkpoint record"
        )
    except (OSError, ValueError, QdError):
        return None  # a damaged record: the row says "empty" rather than losing the table
    found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(found.group(1)) if found else None


def _size(folder: Path) -> int:
    """Bytes under `folder`, never following a symlink (one could point across the disk)."""
    total = 0
    for root, _, files in os.walk(folder):  # followlinks=False
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we looked
    return total


def _number(value) -> Optional[float]:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def _names(value):
    """Categories as recorded: one name or a list of names; anything else is not shown."""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    return None


def describe(workdir: Path) -> dict:
    """One cached model: name, key, categories, steps, held-out bound, size, path, status."""
    workdir = Path(workdir)
    match = _KEY.match(workdir.name)
    finished = _json(workdir / FINISHED)
    evaluation = _json(workdir / EVALUATION) or {}
    start = (_json(workdir / RECIPE) or {}).get("start")
    # Each value is checked: a damaged record loses its own cell, never the whole table.
    step = finished.get("step") if finished else _checkpoint_step(workdir)
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    return {
        "name": match.group(1) if match else workdir.name,
        "key": match.group(2) if match else None,
        # A one-category model predates (or needs no) class names: it says what it was trained on.
        "categories": _names((finished or {}).get("classes")) or _names((finished or {}).get("dataset")),
        "steps": step,
        "status": "finished" if finished else ("partial" if step is not None else "empty"),
        "bound": _number(evaluation.get("bound")),
        "size_bytes": _size(workdir),
        "path": str(workdir),
        "source": "cache",
        # The model its training started from (`model.start`), as recipe.json records it.
        "start": start.get("from") if isinstance(start, dict) and isinstance(start.get("from"), str) else None,
    }


def listing(cache_dir: Path) -> list[dict]:
    root = Path(cache_dir) / "models"
    if not root.is_dir():
        return []
    # A symlink in the cache is not a model qd made: listing it could walk the whole disk.
    return [describe(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink()]


def table(rows: list[dict]) -> str:
    """`qd models` as a person reads it."""
    if not rows:
        return "no trained models in the cache yet (qd train RECIPE makes one)"
    lines = [f"{'NAME':<20} {'CATEGORIES':<28} {'STEPS':>7} {'BOUND':>8} {'SIZE':>9}  {'FROM':<22} PATH"]
    for r in rows:
        cats = r["categories"]
        if isinstance(cats, list):
            cats = f"{len(cats)}: {', '.join(cats[:3])}{', ...' if len(cats) > 3 else ''}"
        steps = "-" if r["steps"] is None else f"{r['steps']}" + ("" if r["status"] == "finished" else "*")
        bound = "-" if r["bound"] is None else f"{r['bound']:.1f}"
        lines.append(
            f"{r['name']:<20} {str(cats or '-'):<28.28} {steps:>7} {bound:>8} {_human(r['size_bytes']):>9}  "
            f"{_source(r):<22} {r['path']}"
        )
    if any(r["status"] not in ("finished", "damaged") for r in rows):
        lines.append("* training not finished (resume it with qd train)")
    for r in rows:
        if r["status"] == "damaged":
            lines.append(f"! {r['name']}: {r['error']}")
    return "\n".join(lines)


def _source(row: dict) -> str:
    """Where a row's model comes from: trained here, imported (qd models import), or a plugin's pack."""
    source = row.get("source", "cache")
    if source == "cache" and row.get("start"):
        return f"cache, started from {_start_name(row['start'])}"
    return (
        f"pack ({row['plugin']})"
        if source == "plugin"
        else {"cache": "cache", "imported": "pack (imported)"}.get(source, source)
    )


def _start_name(label: str) -> str:
    """'the model pack 'zoo-26' (...)' -> zoo-26: the quoted name in a source's label."""
    found = re.search(r"'([^']+)'", label)
    return found.group(1) if found else label


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
