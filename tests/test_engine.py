"""End to end on real Quick, Draw! data with a tiny model: the engine's order, the model
cache, byte-for-byte reproducibility, and atomic output."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import pytest

from qdcore import engine
from qdcore.atomic import atomic_path
from qdcore.plugin_manager import build
from qdcore.recipe import load

TINY = """
name: tiny-apple
seed: 1
dataset: {use: quickdraw, category: apple, limit: 300}
model: {T: 4, enc_size: 32, dec_size: 32, z_size: 4, read_n: 3, write_n: 3}
train: {iterations: 6, batch_size: 32, checkpoint_every: 3}
generate: {n: 5}
seeds:
  - {use: training-batch, pick: last}
  - {use: random-pixels}
filters:
  - sharpen
  - {use: upscale, size: 56}
output: {use: gif, frames: samples, duration: 0.12, hold_last: 0.5}
"""


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers")
    return build().registry


def recipe_file(tmp_path, text=TINY, name="tiny.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_run_writes_the_promised_gif_then_reuses_the_cached_model(tmp_path, registry, quickdraw_dir):
    r = load(recipe_file(tmp_path), registry)
    first = engine.run(r, out=tmp_path / "a.gif")
    frames = iio.imread(first.path, index=None)
    assert frames.shape[:3] == (5, 56, 56)  # n samples, upscaled
    durations = [iio.immeta(first.path, index=i)["duration"] for i in range(5)]
    assert durations == [120, 120, 120, 120, 500]
    assert first.trained_steps == 6
    before = snapshot(first.model_dir)
    assert before, "the trained model was not cached"

    # Same recipe + same seed: no training, the same file byte for byte.
    second = engine.run(r, out=tmp_path / "b.gif")
    assert second.model_dir == first.model_dir and snapshot(second.model_dir) == before
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()

    # Another seed changes the seeds and the noise, not the model.
    third = engine.run(r.with_overrides(seed=2), out=tmp_path / "c.gif")
    assert third.model_dir == first.model_dir
    assert (tmp_path / "c.gif").read_bytes() != (tmp_path / "a.gif").read_bytes()


def test_the_run_object_makes_each_step_once_and_its_reporter_gets_the_run_lines(tmp_path, registry, quickdraw_dir):
    r = load(recipe_file(tmp_path), registry)
    lines = []
    result = engine.run(r, out=tmp_path / "a.gif", reporter=engine.Reporter(quiet=True, lines=lines.append))
    assert len(lines) == 2 and lines[0].startswith("dataset: ") and lines[1] == f"model: step 6 in {result.model_dir}"
    # The same steps by hand through one Run: each made once, the same file.
    run = engine.Run(r)
    assert run.data() is run.data() and run.model(train=False) is run.model() and run.seeds() is run.seeds()
    assert run.model().step == 6 and run.output_path(tmp_path / "b.gif") == tmp_path / "b.gif"
    run.write(tmp_path / "b.gif")
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()


def test_prior_and_steps_gif_with_attention_boxes(tmp_path, registry, quickdraw_dir):
    text = TINY.replace("seeds:\n  - {use: training-batch, pick: last}\n  - {use: random-pixels}\n", "seeds: [prior]\n")
    text = text.replace(
        "output: {use: gif, frames: samples, duration: 0.12, hold_last: 0.5}",
        "output: {use: gif, frames: steps, attention: true, duration: 0.2, spacing: 0}",
    )
    r = load(recipe_file(tmp_path, text), registry)
    out = engine.run(r, out=tmp_path / "steps.gif").path
    frames = iio.imread(out, index=None)
    # T frames; 5 samples on a 3x2 grid of 56-pixel cells, in colour for the red boxes.
    assert frames.shape == (4, 2 * 56, 3 * 56, 3)
    red = (frames[..., 0] > 200) & (frames[..., 1] < 100)
    assert red.any()


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.gif"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a gif")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_output_location_checked_before_training(tmp_path, registry):
    (tmp_path / "file").write_text("")
    r = load(recipe_file(tmp_path), registry)
    built = engine.prepare(r)
    with pytest.raises(Exception, match="is a file, not a folder"):
        engine.output_path(r, built, tmp_path / "file" / "x.gif")
    assert engine.output_path(r, built, None) == Path(os.getcwd()) / "tiny-apple.gif"
