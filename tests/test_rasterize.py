"""The rasteriser reproduces Google's numpy_bitmap from the simplified strokes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qdplugins.rasterize import rasterize, rasterize_many


def _pairs(quickdraw_dir, category):
    bitmaps = np.load(quickdraw_dir / "numpy_bitmap" / f"{category}.npy", mmap_mode="r")
    with open(quickdraw_dir / "simplified" / f"{category}.ndjson", encoding="utf-8") as f:
        drawings = [json.loads(line)["drawing"] for line in f if line.strip()]
    n = min(len(drawings), len(bitmaps))
    return drawings[:n], np.asarray(bitmaps[:n]).reshape(n, 28, 28).astype(np.float64)


def _categories_with_both(quickdraw_dir):
    names = sorted(p.stem for p in (quickdraw_dir / "numpy_bitmap").glob("*.npy"))
    return [c for c in names if (quickdraw_dir / "simplified" / f"{c}.ndjson").is_file()]


@pytest.mark.realdata
def test_matches_google_bitmaps_in_every_local_category(quickdraw_dir):
    """Mean |diff| per category within 5/255 (DESIGN reports about 3/255 achievable)."""
    categories = _categories_with_both(quickdraw_dir)
    assert len(categories) >= 20, categories
    means = {}
    for cat in categories:
        drawings, bitmaps = _pairs(quickdraw_dir, cat)
        ours = rasterize_many(drawings, (28, 28), supersample=8, count=len(drawings)).astype(np.float64)
        means[cat] = float(np.abs(ours - bitmaps).mean())
    worst = max(means, key=means.get)
    assert means[worst] <= 5.0, f"{worst}: mean |diff| {means[worst]:.2f}/255; all: {means}"
    assert np.mean(list(means.values())) <= 3.5, means


@pytest.mark.realdata
def test_more_supersampling_gets_closer(quickdraw_dir):
    drawings, bitmaps = _pairs(quickdraw_dir, "apple")
    at8 = np.abs(rasterize_many(drawings, (28, 28), 8).astype(float) - bitmaps).mean()
    at16 = np.abs(rasterize_many(drawings, (28, 28), 16).astype(float) - bitmaps).mean()
    assert at16 < at8 <= 5.0


@pytest.mark.realdata
def test_a_drawing_is_closest_to_its_own_row(quickdraw_dir):
    """Rows correspond: each drawing matches its own bitmap better than the other rows."""
    drawings, bitmaps = _pairs(quickdraw_dir, "cat")
    ours = rasterize_many(drawings).astype(float)
    cost = np.abs(ours[:, None] - bitmaps[None]).mean(axis=(2, 3))
    assert (cost.argmin(axis=1) == np.arange(len(drawings))).all()


def test_output_type_shape_and_blank_drawing():
    img = rasterize([[[0, 255], [0, 255]]])
    assert img.dtype == np.uint8 and img.shape == (28, 28)
    assert img.max() == 255 and img.min() == 0
    assert not rasterize([]).any()
    assert rasterize([[[10], [20]]]).max() > 0  # a single point is a dot, not nothing


def _centroid(img, axis):
    weights = img.astype(float).sum(axis=axis)
    return float((np.arange(len(weights)) * weights).sum() / weights.sum())


def test_centred():
    # A vertical bar drawn anywhere in the frame lands in the middle of the canvas: the
    # bounding box is centred. (PIL's pixel grid puts it within a quarter pixel of 13.5.)
    for x in (0, 100, 255):
        img = rasterize([[[x, x], [0, 255]]])
        assert abs(_centroid(img, 0) - 13.5) <= 0.25
        assert abs(_centroid(img, 1) - 13.5) <= 0.25


def test_margin_leaves_the_border_empty():
    # The frame is inset by 24/304 of the canvas on each side: a full diagonal stays off the edge.
    img = rasterize([[[0, 255], [0, 255]]], (28, 28))
    assert img[0].max() == 0 and img[:, 0].max() == 0 and img[-1].max() == 0


def test_other_sizes_and_non_square():
    square = rasterize([[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]], (64, 64))
    assert square.shape == (64, 64)
    wide = rasterize([[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]], (32, 64))
    assert wide.shape == (32, 64)
    # The square frame sits centred on the wide canvas: the outer columns stay blank.
    assert wide[:, :14].max() == 0 and wide[:, -14:].max() == 0
    assert abs(_centroid(wide, 0) - 31.5) <= 0.25


def test_bad_stroke_is_rejected():
    with pytest.raises(ValueError):
        rasterize([[[1, 2, 3]]])
