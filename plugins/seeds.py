"""Built-in seed strategies: where DRAW's seed images come from and how they are disturbed.

A recipe's `seeds:` list runs in order: one *source* (training-batch, file-image, or prior,
which means "no seed image: sample from the prior"), then any *perturbations* (sobel-edges,
random-pixels). Everything is vectorised numpy driven by `ctx.rng`, so the same recipe seed
gives the same seeds, and values stay in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np

from qdcore import Context, InputError, Range, RecipeError, SeedInput, SeedStrategy, hookimpl, open_image, reading

from .datasets import Fit, Invert, load_image

Probability = Annotated[float, Range(0.0, 1.0)]


def _refuse_previous(seeds: Optional[np.ndarray], name: str) -> None:
    if seeds is not None:
        raise RecipeError(f"seeds: {name} is a source and replaces any seed images before it; put it first in `seeds:`")


def _need_seeds(seeds: Optional[np.ndarray], name: str) -> np.ndarray:
    if seeds is None:
        raise RecipeError(
            f"seeds: {name} perturbs seed images and needs a source first "
            "(for example `- {use: training-batch}` or `- {use: file-image, path: ...}`); "
            "`prior` gives no images to perturb"
        )
    seeds = np.asarray(seeds, dtype=np.float32)
    if seeds.ndim != 3:
        raise InputError(f"seeds: {name} expects seeds shaped (n, H, W), got {seeds.shape}")
    return seeds


def _check_probabilities(name: str, **probs: float) -> None:
    total = sum(probs.values())
    if total > 1.0 + 1e-9:
        listed = ", ".join(f"{k}={v:g}" for k, v in probs.items())
        raise RecipeError(f"{name}: the probabilities {listed} add up to {total:g}; they must add up to at most 1")


def _fit_shape(images: np.ndarray, ctx: Context, what: str) -> np.ndarray:
    if tuple(images.shape[1:]) != tuple(ctx.image_shape):
        raise InputError(f"{what} images are {images.shape[1:]}, the model wants {tuple(ctx.image_shape)}")
    return np.clip(images, 0.0, 1.0).astype(np.float32, copy=False)


class TrainingBatch(SeedStrategy):
    """Seeds from the training data: random drawings, or the trainer's last batch (the blog)."""

    is_source = True

    def __init__(self, pick: Literal["random", "last"] = "random"):
        self.pick = pick

    def apply(self, seeds, given: SeedInput, ctx: Context):
        _refuse_previous(seeds, "training-batch")
        if self.pick == "last":
            if given.last_batch is None or len(given.last_batch) == 0:
                raise RecipeError(
                    "seeds: training-batch with `pick: last` needs the trainer's last batch, and this "
                    "model has none (trained for 0 iterations, or saved without it); use `pick: random`"
                )
            batch = np.asarray(given.last_batch, dtype=np.float32)
            # Fewer images than wanted: cycle through the batch in order.
            out = batch[np.arange(given.n) % len(batch)]
        else:
            if given.dataset is None or len(given.dataset.images) == 0:
                raise RecipeError("seeds: training-batch with `pick: random` needs a dataset, and there is none")
            size = len(given.dataset.images)
            index = ctx.rng.choice(size, size=given.n, replace=size < given.n)
            out = given.dataset.as_float(index)
        return _fit_shape(out, ctx, "training-batch")


class FileImage(SeedStrategy):
    """One image file, tiled to n seeds (the blog's crooked triangle)."""

    is_source = True

    def __init__(self, path: Path, invert: Invert = "auto", fit: Fit = "pad", normalize: bool = True):
        # Checked here, when the recipe is built, so a typo fails before any training.
        if not Path(path).is_file():
            raise InputError(f"seeds: file-image: {path} does not exist; give a PNG or JPEG file")
        # Its header too (format, size limit): a file that cannot be opened fails `qd validate`.
        with open_image(path), reading(str(path)):
            pass
        self.path = path
        self.invert = invert
        self.fit = fit
        self.normalize = normalize

    def apply(self, seeds, given: SeedInput, ctx: Context):
        _refuse_previous(seeds, "file-image")
        image = load_image(Path(self.path), tuple(ctx.image_shape), self.invert, self.fit, self.normalize)
        return np.repeat(image[None], given.n, axis=0)


class Prior(SeedStrategy):
    """No seed image: the model samples from its prior (decoder only). Returns None."""

    is_source = True

    def __init__(self):
        pass

    def apply(self, seeds, given: SeedInput, ctx: Context):
        if seeds is not None:
            raise RecipeError(
                "seeds: prior means no seed images (samples from the prior); it cannot follow a source. "
                "Use `prior` alone, or leave `seeds:` out"
            )
        return None


class SobelEdges(SeedStrategy):
    """Disturbs pixels on the drawing's edges: for each pixel whose Sobel gradient magnitude
    exceeds `threshold`, one rule is drawn: set to 1 (p_one), double (p_double), halve
    (p_half), add `add` (p_add), set to 0 (p_zero), or left alone (the remaining probability).
    Pixels off the edges are never changed."""

    def __init__(
        self,
        threshold: Annotated[float, Range(0.0, None)] = 0.5,
        p_one: Probability = 0.15,
        p_double: Probability = 0.15,
        p_half: Probability = 0.15,
        p_add: Probability = 0.15,
        p_zero: Probability = 0.15,
        add: Annotated[float, Range(-1.0, 1.0)] = 0.25,
    ):
        _check_probabilities("sobel-edges", p_one=p_one, p_double=p_double, p_half=p_half, p_add=p_add, p_zero=p_zero)
        self.threshold = threshold
        self.probs = np.array([p_one, p_double, p_half, p_add, p_zero])
        self.add = add

    def edges(self, seeds: np.ndarray) -> np.ndarray:
        """(n, H, W) bool: where the Sobel magnitude (per image, outside counted as 0) > threshold."""
        # Imported here: scipy.ndimage costs ~0.2 s, and `qd plugins` loads this module.
        from scipy import ndimage

        # One image at a time: ndimage.sobel on the (n, H, W) stack would also smooth across
        # axis 0 and mix neighbouring images.
        magnitude = [
            np.hypot(ndimage.sobel(im, axis=0, mode="constant"), ndimage.sobel(im, axis=1, mode="constant"))
            for im in seeds
        ]
        return np.stack(magnitude) > self.threshold

    def apply(self, seeds, given: SeedInput, ctx: Context):
        x = _need_seeds(seeds, "sobel-edges")
        edge = self.edges(x)
        # One uniform draw per pixel picks the rule; index 5 means "leave it".
        rule = np.searchsorted(np.cumsum(self.probs), ctx.rng.random(x.shape), side="right")
        candidates = np.stack([np.ones_like(x), x * 2, x / 2, x + np.float32(self.add), np.zeros_like(x), x])
        changed = np.take_along_axis(candidates, rule[None], axis=0)[0]
        out = np.where(edge, changed, x)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


class RandomPixels(SeedStrategy):
    """Picks `count` random pixels per seed and changes the (2*radius+1)^2 neighbourhood of
    each: set to 1 (p_one), set to 0 (p_zero), or jittered by uniform noise in
    [-jitter, +jitter] (the remaining probability). Where neighbourhoods overlap, set-to-1
    wins over set-to-0, which wins over jitter, so the result does not depend on order."""

    def __init__(
        self,
        count: Annotated[int, Range(0, 100_000)] = 12,
        radius: Annotated[int, Range(0, 16)] = 1,
        p_one: Probability = 0.4,
        p_zero: Probability = 0.3,
        jitter: Annotated[float, Range(0.0, 1.0)] = 0.5,
    ):
        _check_probabilities("random-pixels", p_one=p_one, p_zero=p_zero)
        self.count = count
        self.radius = radius
        self.p_one = p_one
        self.p_zero = p_zero
        self.jitter = jitter

    def apply(self, seeds, given: SeedInput, ctx: Context):
        x = _need_seeds(seeds, "random-pixels")
        n, h, w = x.shape
        rng = ctx.rng
        ys = rng.integers(0, h, size=(n, self.count))
        xs = rng.integers(0, w, size=(n, self.count))
        action = np.searchsorted(np.cumsum([self.p_one, self.p_zero]), rng.random((n, self.count)), side="right")
        noise = rng.uniform(-self.jitter, self.jitter, size=x.shape).astype(np.float32)

        r = np.arange(-self.radius, self.radius + 1)
        dy, dx = np.meshgrid(r, r, indexing="ij")
        py = ys[..., None] + dy.ravel()  # (n, count, k)
        px = xs[..., None] + dx.ravel()
        inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        img = np.broadcast_to(np.arange(n)[:, None, None], py.shape)
        act = np.broadcast_to(action[..., None], py.shape)

        masks = np.zeros((3, n, h, w), bool)  # 0: set to 1, 1: set to 0, 2: jitter
        masks[act[inside], img[inside], py[inside], px[inside]] = True
        out = np.where(masks[2], x + noise, x)
        out = np.where(masks[1], 0.0, out)
        out = np.where(masks[0], 1.0, out)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


class RemoveInk(SeedStrategy):
    """Keeps one part of each drawing and blanks the rest: the half of its ink on one side
    (`keep: top` keeps the rows above the middle of the ink's extent), for a `complete` mode
    to finish. The cut sits at the middle of each drawing's own ink, not of the page."""

    def __init__(
        self, keep: Literal["top", "bottom", "left", "right"] = "top", ink: Annotated[float, Range(0.0, 1.0)] = 0.1
    ):
        self.keep = keep
        self.ink = ink

    def apply(self, seeds, given: SeedInput, ctx: Context):
        x = _need_seeds(seeds, "remove-ink").copy()
        rows = self.keep in ("top", "bottom")
        for image in x:
            page = image if rows else image.T  # a view: blanking its rows blanks the image's columns
            lines = np.flatnonzero((page >= self.ink).any(axis=1))
            if len(lines) == 0:
                continue  # a blank drawing stays blank; `complete` names it
            middle = (lines[0] + lines[-1] + 1) // 2
            if self.keep in ("top", "left"):
                page[middle:] = 0.0
            else:
                page[:middle] = 0.0
        return x


@hookimpl
def qd_register_seed_strategies(register):
    register(
        "training-batch",
        TrainingBatch,
        description="source: drawings from the dataset (pick: random) or the trainer's last batch (pick: last)",
    )
    register("file-image", FileImage, description="source: one image file of any size, tiled to n seeds")
    register("prior", Prior, description="source: no seed image, sample from the model's prior")
    register("sobel-edges", SobelEdges, description="perturbation: random rules on pixels along Sobel edges")
    register("random-pixels", RandomPixels, description="perturbation: set or jitter small random neighbourhoods")
    register(
        "remove-ink", RemoveInk, description="perturbation: blank one half of each drawing's ink, for `mode: complete`"
    )
