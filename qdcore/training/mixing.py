"""How a labelled (many-category) set becomes a training stream: the per-category held-out
split, the order of one cycle (`balanced` or `proportional`), and each category's last
training images. Plain numpy; qdcore.training.train's Batches calls these.

`balanced` gives every class the same share of a cycle: each class fills as many places as
the largest has training drawings, its own drawings repeated in a fresh random order, so a
small class is seen more often and every drawing at least once. `proportional` (and any
unlabelled or one-class set) is one fresh permutation of the training rows per cycle.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import numpy as np

from ..conditioning import conditional_classes
from ..config import TrainConfig
from ..interfaces import ImageSet


def split(n: int, train_cfg: TrainConfig, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) index arrays, sorted, deterministic from train_cfg.seed.

    With labels the split is per class: each class's rows, in order, are split exactly as a
    set of that class alone would be, so a one-category model and a many-category model hold
    out the same drawings of that category, and their bounds compare.
    """
    if labels is None:
        return _split_positions(n, train_cfg)
    order, grouped = _by_class(labels)
    counts = np.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 0)
    train_parts, held_parts = [], []
    for start, count in zip(np.cumsum(counts) - counts, counts):
        tr, held = _split_positions(int(count), train_cfg)
        train_parts.append(order[start + tr])
        held_parts.append(order[start + held])
    empty = np.zeros(0, np.int64)
    train_idx, held_idx = np.concatenate(train_parts or [empty]), np.concatenate(held_parts or [empty])
    return (train_idx, held_idx) if grouped else (np.sort(train_idx), np.sort(held_idx))


def _split_positions(n: int, train_cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([train_cfg.seed, 0x5B11]).permutation(n)
    n_held = int(round(n * train_cfg.holdout))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _by_class(labels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Row numbers grouped by class, in order within each, and whether the labels already were
    (a dataset's categories one after another): then no sort is needed, which at 50M rows
    saves most of the time (docs/categories.md)."""
    if len(labels) < 2 or bool(np.all(labels[1:] >= labels[:-1])):
        return np.arange(len(labels), dtype=np.int64), True
    return np.argsort(labels, kind="stable"), False


def fit_batch(train_cfg: TrainConfig, data: ImageSet) -> TrainConfig:
    """`train.batch_size` is the most a batch holds: a training set smaller than that is one
    batch. A bigger one holds each drawing several times over: the same gradient, up to the
    latent noise, at several times a step's cost. 23 windmills trained at batch 400 took 6.5x
    the time per step for what batch 23 teaches in the same steps (docs/performance.md).
    Only where the run picks its own devices: a `mirrored` or `multi-worker` batch must split
    evenly over its replicas, so those keep theirs."""
    if train_cfg.distribute not in ("auto", "none"):
        return train_cfg
    n_train = len(split(len(data.images), train_cfg, stream_labels(data))[0])
    return replace(train_cfg, batch_size=n_train) if 0 < n_train < train_cfg.batch_size else train_cfg


def stream_labels(data: ImageSet) -> Optional[np.ndarray]:
    """The labels a training stream carries: None for an unlabelled or one-class set."""
    return data.labels if conditional_classes(data.classes) else None


def balanced_groups(data: ImageSet, train_idx: np.ndarray) -> Optional[list[np.ndarray]]:
    """Each class's training rows, for a labelled set mixed `balanced`; None otherwise."""
    labels = stream_labels(data)
    if labels is None or data.mix != "balanced":
        return None
    # Grouped by one stable sort (or none): a mask per class would cost N x C at 345 classes.
    train_labels = labels[train_idx]
    counts = np.bincount(train_labels, minlength=len(data.classes))
    grouped = np.split(train_idx[_by_class(train_labels)[0]], np.cumsum(counts)[:-1])
    return [g for g in grouped if len(g)] or None


def cycle_length(groups: Optional[list[np.ndarray]], train_idx: np.ndarray) -> int:
    return len(groups) * max(map(len, groups)) if groups else len(train_idx)


def cycle_order(groups: Optional[list[np.ndarray]], train_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The training rows of one cycle, in the order they are seen."""
    if groups is None:
        return rng.permutation(train_idx)
    m = max(map(len, groups))
    return rng.permutation(np.concatenate([g[rng.permutation(m) % len(g)] for g in groups]))


def last_by_class(
    indices: Callable[[int], np.ndarray],
    labels: np.ndarray,
    n_classes: int,
    last_k: int,
    batch_size: int,
    cycle_len: int,
    keep: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the last `keep` training rows of each class up to batch last_k (walking
    back at most one cycle), oldest first, and their labels: what `training-batch pick: last`
    shows of one category of a shared model."""
    found: list[list[int]] = [[] for _ in range(n_classes)]
    need, steps = n_classes * keep, 0
    for k in range(last_k, -1, -1):
        idx = indices(k)[::-1]
        for i, c in zip(idx, labels[idx]):
            if len(found[c]) < keep:
                found[c].append(int(i))
                need -= 1
        steps += 1
        if need == 0 or steps * batch_size >= cycle_len:
            break
    rows = np.array([i for f in found for i in reversed(f)], np.int64)
    return rows, np.array([c for c, f in enumerate(found) for _ in f], np.int32)
