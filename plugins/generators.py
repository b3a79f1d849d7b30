"""Built-in generation modes: finish a partial drawing, and morph one doodle into another.

A recipe names one with `mode:`; without it the model samples from its prior or
reconstructs the seed images, as always. Both speak to the model only through its public
methods (complete, encode, decode, labels, cfg), so neither imports TensorFlow; docs/
generation.md says what they do in DRAW's terms and how well completion works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np

from qdcore import Context, Drawing, Generator, InputError, ModeCheck, Range, RecipeError, hookimpl

from .datasets import Fit, Invert, load_image

# A partial drawing with no pixel at least this bright has no ink to continue.
BLANK = 0.1
_NO_PARTIAL = (
    "mode: complete continues partial drawings, and the seed chain gives none (`prior`): "
    "start `seeds:` with an image source, for example training-batch then remove-ink, or file-image"
)


class Complete(Generator):
    """Finish each seed image: DRAW's first k glimpses follow the encoder on the partial
    drawing, the other T - k come from the prior, `tries` different completions per seed."""

    def __init__(self, k: Optional[Annotated[int, Range(1, 256)]] = None, tries: Annotated[int, Range(1, 64)] = 4):
        self.k = k
        self.tries = tries

    def pictures(self, n: int) -> int:
        return n * self.tries

    def check(self, recipe: ModeCheck) -> None:
        if recipe.prior:
            raise RecipeError(_NO_PARTIAL)
        if self.k is not None and self.k > recipe.T:
            raise RecipeError(
                f"complete: k: {self.k} is beyond the model's T = {recipe.T} steps; give k from 1 to {recipe.T}"
            )
        if recipe.seeds is not None:  # a file decides the partial drawings: a blank one is found now
            check_not_blank(np.asarray(recipe.seeds, np.float32))

    def generate(self, model, seeds, n: int, seed: int, ctx: Context) -> Drawing:
        if seeds is None:
            raise RecipeError(_NO_PARTIAL)
        partial = np.asarray(seeds, np.float32)
        check_not_blank(partial)
        # A fifth of T by default: on zoo-26 the recognizer recognized more completions at k = 2
        # of T = 10 than at 5, 8 or 10 (docs/generation.md).
        k = self.k if self.k is not None else max(1, model.cfg.T // 5)
        repeated = np.repeat(partial, self.tries, axis=0)  # runs of `tries` completions of one seed
        drawn = model.complete(repeated, k, seed=seed)
        return Drawing(drawn.canvases, drawn.windows, drawn.write_n, "completion", drawn.model_shape, given=repeated)


def check_not_blank(partial: np.ndarray) -> None:
    ink = partial.reshape(len(partial), -1).max(axis=1)
    blank = [int(i) for i in np.flatnonzero(ink < BLANK)]
    if blank:
        raise InputError(
            f"complete: partial drawing {blank[0]} is blank (no pixel reaches {BLANK:g}); "
            "draw some strokes first, or give an image with ink (bright on dark, or dark on white)"
        )


def slerp(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Spherical interpolation of latent vectors along the last axis, at fractions s (F,):
    (..., d), (..., d) -> (F, ..., d). Keeps a Gaussian latent's length, which a straight
    line between two samples shrinks towards the middle (where the prior has little mass)."""
    dot = np.sum(a * b, axis=-1, keepdims=True) / np.maximum(
        np.linalg.norm(a, axis=-1, keepdims=True) * np.linalg.norm(b, axis=-1, keepdims=True), 1e-12
    )
    omega = np.arccos(np.clip(dot, -1.0, 1.0))[None]
    s = np.asarray(s, np.float64).reshape((-1,) + (1,) * a.ndim)
    sin = np.sin(omega)
    straight = sin < 1e-6  # (anti)parallel vectors: the line is as good as the arc
    wa = np.where(straight, 1 - s, np.sin((1 - s) * omega) / np.where(straight, 1, sin))
    wb = np.where(straight, s, np.sin(s * omega) / np.where(straight, 1, sin))
    return (wa * a[None] + wb * b[None]).astype(np.float32)


def eased(frames: int) -> np.ndarray:
    """Fractions 0..1 over `frames` points, slow at both ends (half a cosine), so a morph
    rests on each drawing before it turns, and forth-and-back playback has no jolt."""
    return 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, frames))


class Morph(Generator):
    """Turn one doodle into another: encode the two ends (seed images, or prior samples),
    interpolate their latent sequences z_1..z_T (and, with a many-category model, the
    category vector: `start: cat`, `end: dog`), decode each point as a frame."""

    def __init__(
        self,
        frames: Annotated[int, Range(2, 256)] = 16,
        start: Optional[str] = None,
        end: Optional[str] = None,
        to: Optional[Path] = None,
        invert: Invert = "auto",
        fit: Fit = "pad",
        forth_and_back: bool = True,
    ):
        if to is not None and not Path(to).is_file():
            raise InputError(f"mode: morph: {to} does not exist; give a PNG or JPEG file for the end drawing")
        self.frames, self.start, self.end, self.to = frames, start, end, to
        self.invert, self.fit, self.forth_and_back = invert, fit, forth_and_back

    def pictures(self, n: int) -> int:
        return n * self.frames

    def check(self, recipe: ModeCheck) -> None:
        named = [c for c in (self.start, self.end) if c is not None]
        if not named or recipe.categories is None:
            return
        if not recipe.categories:
            raise RecipeError(
                f"morph: start/end name categories ({', '.join(map(repr, named))}), and this recipe's model "
                "learns one category, so it knows none by name: train on several (`category: [cat, dog]`) "
                "or draw from a model that knows them (`model.from: zoo-26`)"
            )
        unknown = [c for c in named if c not in recipe.categories]
        if unknown:
            raise RecipeError(
                f"morph: {unknown[0]!r} is not a category this recipe's model knows "
                f"(its {len(recipe.categories)}: {', '.join(recipe.categories[:30])})"
            )

    def generate(self, model, seeds, n: int, seed: int, ctx: Context) -> Drawing:
        start = self.start
        end = self.end if self.end is not None else start
        if seeds is None:
            # Two prior samples per morph, each end in its own category.
            shape = tuple(model.noise_shape(n))
            z_a = ctx.rng.standard_normal(shape).astype(np.float32)
            z_b = ctx.rng.standard_normal(shape).astype(np.float32)
            model.labels(n, start), model.labels(n, end)  # an unknown category fails before any decoding
        else:
            a = np.asarray(seeds, np.float32)
            if self.to is not None:
                b = np.repeat(
                    load_image(Path(self.to), tuple(ctx.image_shape), self.invert, self.fit, True)[None], len(a), 0
                )
            else:
                b = np.roll(a, -1, axis=0)  # each seed turns into the next one
            z_a, z_b = self.encode_ends(model, a, b, start, end)
        return self.between(model, z_a, z_b, start, end)

    @staticmethod
    def encode_ends(model, a: np.ndarray, b: np.ndarray, start=None, end=None):
        if a.shape != b.shape:
            raise InputError(
                f"morph: the two ends differ in size, {a.shape[1:]} and {b.shape[1:]} (or in count, "
                f"{len(a)} and {len(b)}): give drawings of the model's size, as many at each end"
            )
        return model.encode(a, category=start), model.encode(b, category=end)

    def between(self, model, z_a: np.ndarray, z_b: np.ndarray, start=None, end=None) -> Drawing:
        """Decode `frames` points between latent sequences z_a and z_b (T, n, z)."""
        if z_a.shape != z_b.shape:
            raise InputError(f"morph: the two ends' latents differ in shape, {z_a.shape} and {z_b.shape}")
        T, n, size = z_a.shape
        s = eased(self.frames)
        path = slerp(z_a, z_b, s)  # (F, T, n, z)
        z = path.transpose(1, 0, 2, 3).reshape(T, self.frames * n, size)  # frame-major rows
        amount = np.repeat(s, n).astype(np.float32)
        drawn = model.decode(
            z, category=start, towards=end if end != start else None, amount=amount if end != start else None
        )
        finals = drawn.canvases[-1].reshape((self.frames, n) + drawn.canvases.shape[2:])
        if self.forth_and_back:  # back again without repeating either end
            finals = np.concatenate([finals, finals[-2:0:-1]])
        return Drawing(finals, None, drawn.write_n, "morph", drawn.model_shape)


@hookimpl
def qd_register_generators(register):
    register(
        "complete",
        Complete,
        description="finish partial drawings: the encoder for the first k glimpses, the prior for the rest",
    )
    register(
        "morph",
        Morph,
        description="turn one drawing (or prior sample, or category) into another through the latent space",
    )
