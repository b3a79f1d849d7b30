"""The warm start (`model.start`): a new model's first weights are another trained model's.

Fine-tuning from a pack is transfer learning: the 26-category pack gives 25 windmills it never
saw a better held-out bound than any model trained on 20 of them from random weights, and
reaches their reconstruction error in a fraction of the steps (docs/finetune.md). The start
must be the same model (qdcore/sources.py checks every ModelConfig field before any work), so
every weight is copied as it is, except for the class conditioning, which follows the
categories (qdcore/conditioning.py: a class's row is added to the LSTM gate biases):

  start       new model      what happens
  one-class   one-class      every weight copied
  one-class   conditional    weights copied; the class rows start as a fresh model's do
  conditional one-class      the new category's row is folded into the gate biases, so the
                             one-class model is exactly the start steered to that row
  conditional conditional    a category the start knows keeps its row (by name)

A category the start does not know gets the row of the category it is closest to: the row
under which the new category's training drawings get the best bound (config.WARM_START_ROWS;
"mean", the mean of all rows, was measured against it in docs/finetune.md). Only a fresh run
is started this way; a resumed one restores its own checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config import WARM_START_ROWS
from ..interfaces import ImageSet

# Drawings of one category scored under each of the start's rows to find the closest: a
# forward pass each, so a few seconds at 26 rows, and plenty to rank the rows.
SCORE_IMAGES = 200


@dataclass
class Start:
    """The model a run starts from, as the pipeline found it (qdcore/sources.py): its label,
    the identity its cache key holds, and how to load it (only a fresh run does)."""

    label: str
    identity: dict
    load: Callable[[], object]  # -> the start's Draw model, holding its weights
    rows: str = WARM_START_ROWS  # how a category the start does not know gets its row
    legs: list = field(default_factory=list)  # the training legs that made its weights (packs.legs)


def initialize(model, source: Start, data: ImageSet, train_idx: np.ndarray) -> dict:
    """Copy the start's weights into `model` (fresh, the same configuration); returns what
    was done, for the plan line and the model's records: {"from", "identity", "rows": {category: row}}."""
    start = source.load()
    theirs = {_name(v): v for v in start.weights}
    for v in model.weights:
        if _name(v) in theirs and not _is_table(v):
            v.assign(theirs[_name(v)])
    chosen: dict[str, str] = {}
    if start.conditioning is not None:
        tables = start.conditioning.enc_table.numpy(), start.conditioning.dec_table.numpy()
        wanted = list(model.classes) if model.classes else _one_category(data)
        for i, category in enumerate(wanted):
            if category in start.classes:
                row, chosen[category] = start.classes.index(category), category
            else:
                own = _images_of(data, train_idx, category if model.classes else None)
                row, chosen[category] = _new_row(start, tables, own, source.rows)
            enc, dec = (tables[0][row], tables[1][row]) if isinstance(row, int) else row
            if model.conditioning is not None:
                model.conditioning.enc_table[i].assign(enc)
                model.conditioning.dec_table[i].assign(dec)
            else:  # one category: its row becomes part of the biases
                model.enc_bias.assign_add(enc)
                model.dec_bias.assign_add(dec)
    return {"from": source.label, "identity": source.identity, "rows": chosen, "legs": source.legs}


def describe(done: dict) -> str:
    """One line for the plan: where the weights come from, and each new category's row."""
    new = {c: r for c, r in done["rows"].items() if c != r}
    rows = "; ".join(f"{c!r} takes the {r!r} row" for c, r in list(new.items())[:3])
    more = f" (and {len(new) - 3} more)" if len(new) > 3 else ""
    return f"start: the weights of {done['from']}" + (f"; {rows}{more}" if rows else "")


def _name(v) -> str:
    return v.name.split(":")[0]


def _is_table(v) -> bool:
    return _name(v) in ("enc_table", "dec_table")


def _one_category(data: ImageSet) -> list[str]:
    return [data.classes[0] if data.classes else data.name]


def _images_of(data: ImageSet, train_idx: np.ndarray, category) -> np.ndarray:
    """Up to SCORE_IMAGES training drawings (of `category` in a labelled set), greyscale in [0, 1]
    (a binarized set's rows rank the same: only which row fits best is asked)."""
    idx = train_idx
    if category is not None and data.labels is not None:
        idx = train_idx[data.labels[train_idx] == data.classes.index(category)]
    return data.as_float(np.sort(idx[:SCORE_IMAGES]))


def _new_row(start, tables, images: np.ndarray, rows: str):
    """(row index or (enc, dec) arrays, its name) for a category the start does not know."""
    if rows == "mean" or len(images) == 0:
        return (tables[0].mean(0), tables[1].mean(0)), "mean of rows"
    scores = []
    for c in range(len(start.classes)):
        lx, lz = start.loss(images, training=False, seed=0, labels=np.full(len(images), c, np.int32))
        scores.append(float(np.mean(lx.numpy() + lz.numpy())))
    best = int(np.argmin(scores))
    return best, start.classes[best]
