"""What a plugin implements, and the plain-numpy objects that flow between the steps.

A plugin registers *factories* (usually classes) by name. The recipe's parameters for a step
are checked against the factory's signature (see params.py) and passed as keywords; the
engine then calls the one method of the interface below. Everything crossing a step boundary
is numpy, float32 in [0, 1] with ink bright (1) on 0, shaped (N, H, W), so plugins never
need TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np


@dataclass
class ImageSet:
    """A dataset's images. `images` is (N, H, W), uint8 0..255 or float32 0..1, ink bright.

    It may be a numpy memmap: the trainer reads it in batches and never copies it whole
    into Python objects. `binarize` tells the trainer how to turn greyscale into targets:
    "none" (greyscale targets), "threshold" (x > threshold), "dynamic" (x ~ Bernoulli(x),
    resampled every time an example is seen).

    A set of several categories also gives `labels` (N,) integers indexing `classes`, the
    category names, and `mix`: how the trainer draws from them, "balanced" (each category
    equally often, small ones repeated within a cycle) or "proportional" (each drawing once
    a cycle). A plugin that sets none of them gives one unlabelled category, as before.
    `images` may then be a qdcore.ImageStack: per-category memmaps seen as one array.
    """

    images: np.ndarray
    name: str
    binarize: Literal["none", "threshold", "dynamic"] = "none"
    threshold: float = 0.5
    labels: Optional[np.ndarray] = None
    classes: Optional[list[str]] = None
    mix: Literal["balanced", "proportional"] = "balanced"

    def as_float(self, index=slice(None)) -> np.ndarray:
        """Rows `index` as float32 in [0, 1] (before binarization)."""
        x = np.asarray(self.images[index])
        if x.dtype == np.uint8:
            return x.astype(np.float32) / np.float32(255.0)
        return x.astype(np.float32, copy=False)


@dataclass
class Drawing:
    """What the model drew: every step's canvas, and where the write attention looked.

    canvases: (T, n, H, W) float32 in [0, 1], ink bright: one frame per drawing step, the
        ink laid down so far on a blank page (qdcore/ink.py). The last frame is the model's
        output sigmoid(c_T) unchanged; an earlier frame t shows that output in the share
        of its ink-ward writing steps 1..t did, so frames start blank (not the uniform grey
        sigmoid(0) = 0.5 of DRAW's empty canvas) and never lose ink from one step to the next.
    windows: (T, n, 3) float32 (gx, gy, delta) of the write window in model pixels, as
        zero-based array coordinates (column, row: pixel centres at 0..W-1), or None for the
        no-attention model. The window's box spans gx +- delta * write_n / 2.
    write_n: filter count of the write window (to draw its box).
    source: "prior" (true samples, decoder only), "reconstruction" (seeded, encoder run),
        "completion" (encoder on a partial drawing for the first steps, then the prior) or
        "morph" (each frame t is one point on a path between two latent sequences).
    given: (n, H, W) the person's partial drawing each completion continues, filtered like
        the canvases, or None: a `steps` writer shows it first and the model's ink after.
    """

    canvases: np.ndarray
    windows: Optional[np.ndarray]
    write_n: int
    source: Literal["prior", "reconstruction", "completion", "morph"]
    model_shape: tuple[int, int] = (28, 28)
    given: Optional[np.ndarray] = None

    @property
    def final(self) -> np.ndarray:
        return self.canvases[-1]


@dataclass
class Context:
    """Handed to every step. `rng` is seeded from the recipe's seed and the step's position,
    so a run is reproducible and adding a step does not change the randomness of others."""

    image_shape: tuple[int, int]
    rng: np.random.Generator
    recipe_dir: Path
    data_dir: Optional[Path]
    cache_dir: Path
    quiet: bool = False


@dataclass
class SeedInput:
    """What a seed strategy may draw on besides the previous seeds."""

    n: int
    dataset: Optional[ImageSet] = None
    last_batch: Optional[np.ndarray] = None  # (B, H, W) float32, the trainer's last batch
    extra: dict = field(default_factory=dict)


class Dataset:
    """Registered with `qd_register_datasets`. Parameters come from the recipe's `dataset:`."""

    def load(self, ctx: Context) -> ImageSet:
        """Return the images at `ctx.image_shape`. Raise qdcore.InputError for bad data."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short label for messages (`qd run` prints it), for example `quickdraw:cat`."""
        return type(self).__name__


class SeedStrategy:
    """Registered with `qd_register_seed_strategies`. Chained in recipe order.

    A *source* ignores `seeds` (or refuses a non-None one) and returns (n, H, W) images, or
    None to ask for generation from the prior. A *perturbation* needs seeds (raise
    qdcore.RecipeError if given None) and returns them changed. Values stay in [0, 1].
    A source says so with `is_source = True`: recipe validation then insists that exactly
    the first step of a `seeds:` chain is a source, before any training starts.
    """

    is_source: bool = False

    def apply(self, seeds: Optional[np.ndarray], given: SeedInput, ctx: Context) -> Optional[np.ndarray]:
        raise NotImplementedError


class Filter:
    """Registered with `qd_register_filters`. Frames in, frames out: (K, H, W) float32 in
    [0, 1] -> (K, H', W') float32 in [0, 1]; the size may change (upscale)."""

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') of frames of (height, width) after this filter, told before any frame
        exists (the memory a recipe needs is checked when it is checked). Optional: a filter
        that changes the size says so here; the default keeps it."""
        return height, width

    def apply(self, frames: np.ndarray, ctx: Context) -> np.ndarray:
        raise NotImplementedError


class Writer:
    """Registered with `qd_register_writers`. Writes a Drawing (already filtered) to `path`
    atomically (complete or absent) and returns the path written."""

    suffix = ".gif"

    def check(self, n: int) -> None:
        """Called when the recipe is checked, before any training, with the number of pictures
        the recipe draws (generate.n): raise qdcore.RecipeError for a setting that cannot fit
        them. Optional."""

    def write(self, drawing: Drawing, path: Path, ctx: Context) -> Path:
        raise NotImplementedError


@dataclass(frozen=True)
class ModeCheck:
    """What a recipe already says that a generation mode can check before any training
    (Generator.check): how many pictures, the model's steps, whether the seed chain starts
    from the prior (no seed images), the categories the model will know (None: not known
    before training, as for `category: all`; [] for a one-category model, which knows none),
    and the seed images themselves when a file decides them."""

    n: int
    T: int
    prior: bool
    categories: Optional[list[str]]
    # The seed images, when the recipe alone decides them (a `file-image` source and the
    # perturbations after it), as (n, H, W) in [0, 1]; None when they come from data or a model.
    seeds: Optional[np.ndarray] = None


class Generator:
    """Registered with `qd_register_generators`: how pictures are made from a trained model,
    beyond sampling and reconstruction. A recipe's `mode:` names one; without `mode:` a recipe
    samples from the prior, or reconstructs its seed images, as always.

    `generate` gets the trained model (qdcore.draw.Draw, or one held to a category), the seed
    chain's images (n, H, W) or None, the recipe's n and seed, and returns a Drawing. It
    speaks to the model only through its public methods (sample, reconstruct, complete,
    encode, decode, labels, cfg, classes), so a plugin never imports TensorFlow. Raise
    qdcore.InputError for input the model cannot use (a blank drawing, an unknown category).
    """

    def pictures(self, n: int) -> int:
        """How many pictures the model draws for the recipe's n (complete: n x tries; morph:
        n x frames), for the memory check. Optional: the default is n."""
        return n

    def check(self, recipe: ModeCheck) -> None:
        """Called when the recipe is checked, before any training: raise qdcore.RecipeError for
        a setting that contradicts what the recipe says (a step beyond the model's T, a category
        the model will not know, seed images where the mode needs them). Optional."""

    def generate(self, model, seeds: Optional[np.ndarray], n: int, seed: int, ctx: Context) -> Drawing:
        raise NotImplementedError
