"""Seed strategies on small arrays: shapes, range, reproducibility, and the chain's rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from qdcore import Context, ImageSet, InputError, RecipeError, SeedInput
from qdcore.params import check
from qdplugins.seeds import FileImage, Prior, RandomPixels, SobelEdges, TrainingBatch

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def ctx(shape=(28, 28), seed=0) -> Context:
    return Context(tuple(shape), np.random.default_rng(seed), RECIPES, None, Path("/nonexistent-cache"))


def dataset(n=10, shape=(28, 28)) -> ImageSet:
    # Image i is filled with the value i, so a seed tells which image it came from.
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None] * 20, (n, *shape)).copy()
    return ImageSet(images, "test")


def blobs(n=4, shape=(28, 28), seed=0) -> np.ndarray:
    """Smooth random doodle-like images in [0, 1]: broad flat areas and clear edges."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((n, *shape)), sigma=(0, 2, 2))
    x = (x - x.min()) / (x.max() - x.min())
    return np.where(x > 0.55, x, 0.0).astype(np.float32)


def reference_edges(x: np.ndarray, threshold: float) -> np.ndarray:
    """Sobel magnitude per image, computed independently with scipy's own sobel."""
    return np.stack(
        [
            np.hypot(ndimage.sobel(i, axis=0, mode="constant"), ndimage.sobel(i, axis=1, mode="constant")) > threshold
            for i in x
        ]
    )


def test_every_strategy_validates_with_its_defaults():
    for cls, given in [
        (TrainingBatch, {}),
        (Prior, {}),
        (SobelEdges, {}),
        (RandomPixels, {}),
        (FileImage, {"path": "crooked-triangle.png"}),
    ]:
        params = check(cls, given, "seeds[0]", base_dir=RECIPES)
        assert "n" not in params
        cls(**params)
    assert check(FileImage, {"path": "crooked-triangle.png"}, "s", RECIPES)["path"] == RECIPES / "crooked-triangle.png"
    with pytest.raises(RecipeError):
        check(SobelEdges, {"p_one": 1.5}, "seeds[1]")
    with pytest.raises(RecipeError):
        check(TrainingBatch, {"pick": "first"}, "seeds[0]")


# --- sources ------------------------------------------------------------------------------------


def test_training_batch_random_is_reproducible_and_from_the_dataset():
    ds = dataset()
    a = TrainingBatch().apply(None, SeedInput(6, dataset=ds), ctx(seed=3))
    b = TrainingBatch().apply(None, SeedInput(6, dataset=ds), ctx(seed=3))
    c = TrainingBatch().apply(None, SeedInput(6, dataset=ds), ctx(seed=4))
    assert a.shape == (6, 28, 28) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    picked = np.round(a[:, 0, 0] * 255 / 20).astype(int)
    assert len(set(picked)) == 6  # without replacement while the dataset is big enough
    assert np.allclose(a, (picked * 20 / 255)[:, None, None])
    more = TrainingBatch().apply(None, SeedInput(25, dataset=ds), ctx())
    assert more.shape == (25, 28, 28)


def test_training_batch_last_cycles_through_the_batch():
    batch = np.stack([np.full((28, 28), v, np.float32) for v in (0.1, 0.5, 0.9)])
    out = TrainingBatch(pick="last").apply(None, SeedInput(7, last_batch=batch), ctx())
    assert out.shape == (7, 28, 28)
    assert np.allclose(out[:, 0, 0], [0.1, 0.5, 0.9, 0.1, 0.5, 0.9, 0.1])


def test_training_batch_errors():
    with pytest.raises(RecipeError, match="pick: random"):
        TrainingBatch(pick="last").apply(None, SeedInput(4, dataset=dataset()), ctx())
    with pytest.raises(RecipeError, match="dataset"):
        TrainingBatch().apply(None, SeedInput(4), ctx())
    with pytest.raises(RecipeError, match="first"):
        TrainingBatch().apply(np.zeros((4, 28, 28), np.float32), SeedInput(4, dataset=dataset()), ctx())
    with pytest.raises(InputError, match="model wants"):
        TrainingBatch().apply(None, SeedInput(2, dataset=dataset(shape=(20, 20))), ctx())


def test_file_image_is_the_committed_triangle_tiled():
    out = FileImage(path=RECIPES / "crooked-triangle.png").apply(None, SeedInput(5), ctx())
    assert out.shape == (5, 28, 28) and out.dtype == np.float32
    assert all(np.array_equal(out[0], o) for o in out[1:])
    assert out.min() >= 0 and out.max() == pytest.approx(1.0)
    # Drawn dark on white; as a seed it is ink-bright: the border is background (0).
    assert out[0, 0].max() < 0.05 and out[0, :, 0].max() < 0.05
    assert 0.03 < (out[0] > 0.5).mean() < 0.4  # a line drawing, not a filled or empty square


def test_file_image_any_mode_and_size(tmp_path):
    rgba = np.zeros((60, 90, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., :3] = 255
    rgba[20:40, 30:60, :3] = 0  # dark ink on white
    Image.fromarray(rgba).save(tmp_path / "ink.png")
    out = FileImage(path=tmp_path / "ink.png").apply(None, SeedInput(2), ctx((32, 24)))
    assert out.shape == (2, 32, 24)
    assert out[0, 16, 12] > 0.9 and out[0, 0, 0] < 0.05
    with pytest.raises(InputError, match="does not exist"):
        FileImage(path=tmp_path / "nope.png")  # at construction: before any training
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="not a readable image"):
        FileImage(path=tmp_path / "broken.png").apply(None, SeedInput(2), ctx())


def test_sources_say_so():
    assert TrainingBatch.is_source and FileImage.is_source and Prior.is_source
    assert not SobelEdges.is_source and not RandomPixels.is_source


def test_prior_is_no_seed_and_stands_alone():
    assert Prior().apply(None, SeedInput(4), ctx()) is None
    with pytest.raises(RecipeError, match="prior"):
        Prior().apply(np.zeros((4, 28, 28), np.float32), SeedInput(4), ctx())


@pytest.mark.parametrize("strategy", [SobelEdges(), RandomPixels()])
def test_perturbations_need_a_source(strategy):
    with pytest.raises(RecipeError, match="needs a source first"):
        strategy.apply(None, SeedInput(4), ctx())


# --- sobel-edges --------------------------------------------------------------------------------


def test_sobel_edges_changes_only_edge_pixels():
    x = blobs()
    strategy = SobelEdges(threshold=0.5)
    out = strategy.apply(x.copy(), SeedInput(4), ctx())
    edges = reference_edges(x, 0.5)
    changed = out != x
    assert edges.any() and (~edges).any()
    assert not (changed & ~edges).any()
    assert changed[edges].mean() > 0.3  # the default rules do touch the edges
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


def test_sobel_edges_does_not_mix_images():
    x = blobs(3)
    x[1] = 0  # a blank image has no edges, whatever its neighbours hold
    out = SobelEdges(p_one=1.0, p_double=0, p_half=0, p_add=0, p_zero=0).apply(x, SeedInput(3), ctx())
    assert not out[1].any()


def test_sobel_edges_rules_are_settable():
    x = blobs()
    edges = reference_edges(x, 0.5)
    ones = SobelEdges(p_one=1.0, p_double=0, p_half=0, p_add=0, p_zero=0).apply(x, SeedInput(4), ctx())
    assert (ones[edges] == 1).all() and np.array_equal(ones[~edges], x[~edges])
    half = SobelEdges(p_one=0, p_double=0, p_half=1.0, p_add=0, p_zero=0).apply(x, SeedInput(4), ctx())
    assert np.allclose(half[edges], x[edges] / 2)
    added = SobelEdges(p_one=0, p_double=0, p_half=0, p_add=1.0, p_zero=0, add=0.1).apply(x, SeedInput(4), ctx())
    assert np.allclose(added[edges], np.minimum(x[edges] + 0.1, 1))
    none = SobelEdges(p_one=0, p_double=0, p_half=0, p_add=0, p_zero=0).apply(x, SeedInput(4), ctx())
    assert np.array_equal(none, x)
    with pytest.raises(RecipeError, match="add up to"):
        SobelEdges(p_one=0.5, p_zero=0.6)


def test_sobel_edges_is_reproducible():
    x = blobs()
    a = SobelEdges().apply(x, SeedInput(4), ctx(seed=1))
    b = SobelEdges().apply(x, SeedInput(4), ctx(seed=1))
    c = SobelEdges().apply(x, SeedInput(4), ctx(seed=2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --- random-pixels ------------------------------------------------------------------------------


def test_random_pixels_sets_one_neighbourhood():
    x = np.zeros((6, 28, 28), np.float32)
    out = RandomPixels(count=1, radius=1, p_one=1.0, p_zero=0.0).apply(x, SeedInput(6), ctx())
    for img in out:
        ys, xs = np.nonzero(img)
        assert (img[ys, xs] == 1).all()
        # One 3x3 block (smaller where it meets the border).
        assert ys.max() - ys.min() <= 2 and xs.max() - xs.min() <= 2 and 4 <= len(ys) <= 9


def test_random_pixels_zero_and_jitter():
    x = np.full((2, 16, 16), 0.5, np.float32)
    zeros = RandomPixels(count=5, radius=0, p_one=0.0, p_zero=1.0).apply(x, SeedInput(2), ctx())
    assert set(np.unique(zeros)) == {0.0, 0.5} and (zeros == 0).sum() <= 10
    jit = RandomPixels(count=5, radius=2, p_one=0.0, p_zero=0.0, jitter=0.3).apply(x, SeedInput(2), ctx())
    moved = jit != x
    assert moved.any() and np.abs(jit - x).max() <= 0.3 + 1e-6
    untouched = RandomPixels(count=0).apply(x, SeedInput(2), ctx())
    assert np.array_equal(untouched, x)


def test_random_pixels_reproducible_and_in_range():
    x = blobs()
    a = RandomPixels(count=40, radius=2).apply(x, SeedInput(4), ctx(seed=5))
    b = RandomPixels(count=40, radius=2).apply(x, SeedInput(4), ctx(seed=5))
    c = RandomPixels(count=40, radius=2).apply(x, SeedInput(4), ctx(seed=6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1 and a.shape == x.shape
    with pytest.raises(RecipeError, match="add up to"):
        RandomPixels(p_one=0.7, p_zero=0.7)
