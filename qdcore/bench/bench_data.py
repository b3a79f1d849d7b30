"""`qd bench data`: what a recipe's dataset costs in memory and time before any training.

Loads the dataset (TensorFlow not yet imported, so the figure is the data's own), then makes
the trainer's held-out split and draws batches exactly as training would. Peak RSS comes from
getrusage, so run it in a fresh process (the CLI does). docs/categories.md has the figures for
26 real and 345 made-up categories.
"""

from __future__ import annotations

import resource
import sys
import time


def _peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB on Linux


def bench_data(pipeline, batches: int) -> dict:
    """`pipeline`: the recipe's engine.Run, whose dataset is measured."""
    recipe = pipeline.recipe
    start_mb = _peak_mb()
    t0 = time.perf_counter()
    data = pipeline.data()
    load_s = time.perf_counter() - t0
    load_mb = _peak_mb()
    from ..training.mixing import split, stream_labels
    from ..training.train import Batches  # imports TensorFlow

    tf_mb = _peak_mb()
    t0 = time.perf_counter()
    train_idx, held = split(len(data.images), recipe.train, stream_labels(data))
    stream = Batches(data, train_idx, recipe.train.batch_size, recipe.train.seed)
    for k in range(batches):
        stream(k), stream.labels_of(k)
    return {
        "dataset": pipeline.built.dataset.describe(),
        "categories": len(data.classes or [data.name]),
        "drawings": len(data.images),
        "image_bytes": int(len(data.images) * data.images[0].nbytes),
        "rss_start_mb": round(start_mb),
        "rss_after_load_mb": round(load_mb),
        "load_s": round(load_s, 2),
        "rss_after_tensorflow_mb": round(tf_mb),
        "rss_peak_mb": round(_peak_mb()),
        "split_and_batches_s": round(time.perf_counter() - t0, 1),
        "batches": batches,
        "cycle_length": int(stream.cycle_len),
    }
