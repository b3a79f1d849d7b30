"""qd-spiral: a seed strategy that hands DRAW a spiral to redraw.

A *source* seed strategy: it makes the seed images itself (the first step of a `seeds:` chain).
Use it in a recipe as:

    seeds:
      - use: spiral
        turns: 3
      - use: random-pixels     # built-in perturbations can follow
"""

from typing import Annotated

import numpy as np

from qdcore import Range, SeedStrategy, hookimpl


class Spiral(SeedStrategy):
    is_source = True

    def __init__(
        self,
        turns: Annotated[float, Range(0.5, 10)] = 2.5,
        thickness: Annotated[float, Range(0.5, 5)] = 1.2,
        jitter: Annotated[float, Range(0, 1)] = 0.0,
    ):
        self.turns, self.thickness, self.jitter = turns, thickness, jitter

    def apply(self, seeds, given, ctx):
        h, w = ctx.image_shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        out = np.empty((given.n, h, w), np.float32)
        for k in range(given.n):  # n is small; each image is vectorised
            # An Archimedean spiral r = a * theta, sampled densely and splatted with a Gaussian pen.
            theta = np.linspace(0, 2 * np.pi * self.turns, 400, dtype=np.float32)
            theta += ctx.rng.uniform(0, 2 * np.pi) * self.jitter
            a = 0.45 * min(h, w) / (2 * np.pi * self.turns)
            px = w / 2 + a * (theta - theta[0]) * np.cos(theta)
            py = h / 2 + a * (theta - theta[0]) * np.sin(theta)
            d2 = (xx[..., None] - px) ** 2 + (yy[..., None] - py) ** 2
            out[k] = np.exp(-d2 / (2 * self.thickness**2)).max(axis=-1)
        return np.clip(out, 0.0, 1.0)


@hookimpl
def qd_register_seed_strategies(register):
    register("spiral", Spiral, description="An Archimedean spiral as every seed image (a source).")
