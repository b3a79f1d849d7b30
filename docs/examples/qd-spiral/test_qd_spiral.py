"""The example plugin's own tests: call the class directly, no training needed."""

from pathlib import Path

import numpy as np

from qdcore import Context, SeedInput
from qd_spiral import Spiral


def ctx(seed=0):
    return Context(
        image_shape=(28, 28), rng=np.random.default_rng(seed), recipe_dir=Path("."), data_dir=None, cache_dir=Path(".")
    )


def test_spiral_is_ink_on_black_and_reproducible():
    a = Spiral(jitter=1).apply(None, SeedInput(n=3), ctx())
    b = Spiral(jitter=1).apply(None, SeedInput(n=3), ctx())
    assert a.shape == (3, 28, 28) and 0 <= a.min() and a.max() <= 1
    assert a[:, 0, 0].max() < 0.05 < a.max()  # a dark corner, bright ink somewhere
    assert np.array_equal(a, b)
    assert not np.array_equal(a, Spiral(jitter=1).apply(None, SeedInput(n=3), ctx(1)))
