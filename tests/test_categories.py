"""Many categories as one dataset (real Quick, Draw! files): labels and class names, balanced
and proportional mixing, the per-category held-out split, and memmaps that stay on disk."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from qdcore import Context, ImageSet, ImageStack, RecipeError
from qdcore.config import TrainConfig
from qdplugins.datasets import QuickDraw, QuickDrawStrokes, categories


def ctx(data_dir: Path, tmp_path: Path) -> Context:
    return Context((28, 28), np.random.default_rng(0), tmp_path, data_dir, tmp_path / "cache", quiet=True)


def raw(data_dir: Path, cat: str) -> np.ndarray:
    return np.load(data_dir / "numpy_bitmap" / f"{cat}.npy", mmap_mode="r").reshape(-1, 28, 28)


def test_several_categories_give_labels_names_and_rows_from_each_file(quickdraw_dir, tmp_path):
    s = QuickDraw(category=["cat", "apple", "fish"], limit=40).load(ctx(quickdraw_dir, tmp_path))
    assert s.classes == ["cat", "apple", "fish"] and s.name == "cat+apple+fish"
    assert s.images.shape == (120, 28, 28) and s.images.dtype == np.uint8
    assert isinstance(s.images, ImageStack) and all(isinstance(p, np.memmap) for p in s.images.parts)
    assert np.array_equal(np.bincount(s.labels), [40, 40, 40])
    rows = np.array([0, 39, 40, 79, 80, 119, 41])
    expect = np.stack(
        [
            raw(quickdraw_dir, c)[i]
            for c, i in [("cat", 0), ("cat", 39), ("apple", 0), ("apple", 39), ("fish", 0), ("fish", 39), ("apple", 1)]
        ]
    )
    assert np.array_equal(s.images[rows], expect)
    assert np.array_equal(s.images[40:42], raw(quickdraw_dir, "apple")[:2])
    assert s.images[80, 14, 14] == raw(quickdraw_dir, "fish")[0, 14, 14]
    assert np.array_equal(s.as_float(rows), expect / np.float32(255))


def test_one_category_is_still_a_plain_memmap_with_one_class(quickdraw_dir, tmp_path):
    s = QuickDraw(category="cat", limit=5).load(ctx(quickdraw_dir, tmp_path))
    assert isinstance(s.images, np.memmap) and s.classes == ["cat"] and not s.labels.any()


def test_a_plugin_that_sets_no_labels_still_trains_as_one_category():
    s = ImageSet(np.zeros((3, 28, 28), np.uint8), "plain")
    assert s.labels is None and s.classes is None
    from qdcore.training.train import Batches, split

    train_idx, _ = split(3, TrainConfig(holdout=0.0))
    b = Batches(s, train_idx, 2, 0)
    assert np.array_equal(b.labels_of(0), [0, 0])


def test_all_names_every_category_and_strokes_keep_one_raster_file_each(quickdraw_dir, tmp_path):
    assert QuickDraw(category="all").categories == categories() and len(categories()) == 345
    s = QuickDrawStrokes(category="all", limit=1).load(ctx(quickdraw_dir, tmp_path))
    assert s.name == "all" and len(s.classes) == 345 and s.images.shape == (345, 28, 28)
    assert np.array_equal(s.labels, np.arange(345))
    assert all(isinstance(p, np.memmap) for p in s.images.parts)
    with pytest.raises(RecipeError):
        QuickDraw(category=[])


def test_loading_26_categories_reads_no_images_into_memory(quickdraw_dir, tmp_path):
    names = sorted(p.stem for p in (quickdraw_dir / "numpy_bitmap").glob("*.npy"))
    assert len(names) == 26
    tracemalloc.start()
    s = QuickDraw(category=names).load(ctx(quickdraw_dir, tmp_path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = len(s.images) * 28 * 28
    assert size > 50_000_000  # 64,420 drawings
    # Labels (2 bytes a drawing) and offsets only: the old np.concatenate copied all 50 MB.
    assert peak < 0.01 * size + 3 * len(s.images), peak


def _set(counts: list[int], mix: str) -> ImageSet:
    labels = np.repeat(np.arange(len(counts), dtype=np.int16), counts)
    return ImageSet(
        np.zeros((sum(counts), 2, 2), np.uint8),
        "x",
        labels=labels,
        classes=[f"c{i}" for i in range(len(counts))],
        mix=mix,
    )


def test_balanced_mixing_shows_each_category_equally_often_and_every_drawing(quickdraw_dir):
    from qdcore.training.train import Batches

    data = _set([300, 30, 90], "balanced")
    idx = np.arange(420)
    b = Batches(data, idx, 50, seed=3)
    assert b.cycle_len == 900
    cycle = np.concatenate([b.indices(k) for k in range(18)])  # 18 x 50 = one cycle
    assert np.array_equal(np.bincount(data.labels[cycle]), [300, 300, 300])
    assert set(cycle) == set(idx)  # every drawing at least once a cycle
    small = np.bincount(cycle, minlength=420)[300:330]
    assert small.min() == small.max() == 10  # 30 drawings fill 300 places: each 10 times
    assert np.array_equal(b.labels_of(4), data.labels[b.indices(4)])
    _, x, y = next(iter(b.dataset(4, 5)))
    assert np.array_equal(y.numpy(), data.labels[b.indices(4)])


def test_proportional_mixing_shows_each_drawing_once_a_cycle():
    from qdcore.training.train import Batches

    data = _set([300, 30, 90], "proportional")
    b = Batches(data, np.arange(420), 42, seed=3)
    cycle = np.concatenate([b.indices(k) for k in range(10)])
    assert b.cycle_len == 420 and np.array_equal(np.sort(cycle), np.arange(420))


def test_held_out_split_is_per_category_and_matches_a_one_category_set(quickdraw_dir, tmp_path):
    from qdcore.training.train import split

    cfg = TrainConfig(holdout=0.1, seed=5)
    s = QuickDraw(category=["apple", "cat", "snowflake"]).load(ctx(quickdraw_dir, tmp_path))
    train_idx, held = split(len(s.images), cfg, s.labels)
    assert len(np.intersect1d(train_idx, held)) == 0 and len(train_idx) + len(held) == len(s.images)
    counts = np.bincount(s.labels)
    assert np.array_equal(np.bincount(s.labels[held]), np.round(counts * 0.1).astype(int))
    # The cats held out are the ones a cat-only model holds out: bounds of the two compare.
    _, cat_held = split(counts[1], cfg)
    assert np.array_equal(held[s.labels[held] == 1] - counts[0], cat_held)


def test_split_of_interleaved_labels_is_still_per_category():
    from qdcore.training.train import split

    labels = np.repeat(np.arange(3, dtype=np.int16), [50, 20, 30])
    perm = np.random.default_rng(1).permutation(100)
    cfg = TrainConfig(holdout=0.2, seed=2)
    train_idx, held = split(100, cfg, labels[perm])
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(held) > 0)
    assert np.array_equal(np.bincount(labels[perm][held]), [10, 4, 6])
    # Class 1's held-out rows are those a one-class set of its 20 rows (in order) holds out.
    rows_of_1 = np.flatnonzero(labels[perm] == 1)
    assert np.array_equal(np.searchsorted(rows_of_1, held[labels[perm][held] == 1]), split(20, cfg)[1])


def test_bench_data_prints_the_memory_of_a_many_category_set(tmp_path, quickdraw_dir):
    import json
    import os
    import subprocess
    import sys

    recipe = tmp_path / "three.yaml"
    recipe.write_text("dataset: {use: quickdraw, category: [cat, apple, fish], limit: 200}\ntrain: {batch_size: 50}\n")
    qd = str(Path(sys.executable).parent / "qd")
    r = subprocess.run(
        [qd, "bench", "data", str(recipe), "--batches", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QD_DATA_DIR": str(quickdraw_dir), "QD_LOAD_PLUGINS": "datasets,seeds,filters,writers"},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["categories"] == 3 and out["drawings"] == 600 and out["image_bytes"] == 600 * 784
    assert out["cycle_length"] == 3 * 180 and out["rss_peak_mb"] >= out["rss_after_load_mb"] > 0
