"""The recognizer: a classifier of 28x28 doodles that says whether a drawing looks like its
category, and the figures qd draws from it.

A plugin registers a `Recognizer` with `qd_register_recognizers`; a recipe's `recognizer:`
step names one (default `cnn`, the built-in). `load(ctx)` trains it, or reuses a cached
copy, and returns a `Classifier`: class names, probabilities and penultimate features for
(N, 28, 28) images, and the real drawings of a category it did and did not train on.

From those this file computes what `qd eval` reports and what `generate.best_of` keeps:
- the recognized fraction (argmax is the category),
- the Frechet distance between two sets in the classifier's feature space (as FID does
  with Inception features), and its real-vs-real floor at the same n,
- the n most confident of K x n candidates.

numpy only at import: scipy is imported where the distance is computed, TensorFlow never.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, QdError
from .interfaces import Context

SIZE = 28  # a recognizer reads Quick, Draw!'s 28x28 bitmaps: ink bright (1) on 0
DEFAULT = "cnn"


class Classifier:
    """A trained recognizer. `classes` are Quick, Draw! category names."""

    classes: list[str] = []

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 28, 28) float32 in [0, 1], ink bright -> (probabilities (N, C) summing to 1
        over `classes`, penultimate features (N, D))."""
        raise NotImplementedError

    def drawings(self, category: str) -> tuple[np.ndarray, np.ndarray]:
        """Real drawings of `category` as (N, 28, 28) uint8 or float32: those this
        classifier never trained on, and those it did. The two never share a drawing."""
        raise NotImplementedError


class Recognizer:
    """Registered with `qd_register_recognizers`. Parameters come from the recipe's
    `recognizer:` step."""

    def categories(self, ctx: Context) -> list[str]:
        """The categories `load` would learn, found without training (so a recipe whose
        category it cannot know fails before any training)."""
        raise NotImplementedError

    def load(self, ctx: Context) -> Classifier:
        """Train, or reuse a cached training, and return the classifier."""
        raise NotImplementedError


def categories_of(dataset_params: dict) -> list[str]:
    """The category names a dataset step's `category:` parameter gives ([] for none)."""
    value = dataset_params.get("category")
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


def check_known(classes: Sequence[str], categories: Sequence[str], who: str) -> list[int]:
    """Column indices of `categories` in `classes`, or InputError naming the missing ones."""
    missing = [c for c in categories if c not in classes]
    if missing:
        raise InputError(
            f"recognizer {who!r} knows no category {', '.join(repr(m) for m in missing)}: it learns "
            f"{', '.join(classes)}. Fix: put numpy_bitmap/<category>.npy in $QD_DATA_DIR (or run a "
            "`quickdraw` recipe of that category once, which downloads it into the cache)"
        )
    return [list(classes).index(c) for c in categories]


def to_bitmaps(frames: np.ndarray) -> np.ndarray:
    """Frames after a recipe's filters -> (N, 28, 28) float32 ink bright, what a recognizer reads.

    Scaled back by area averaging (how Google box-averaged its bitmaps), and inverted when
    the frames are dark ink on light paper (an `invert` filter): the median border pixel of
    the whole set says which is paper.
    """
    frames = np.asarray(frames, np.float32)
    if frames.ndim != 3:
        raise QdError(f"expected frames shaped (N, H, W), got {frames.shape}")
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    if float(np.median(border)) > 0.5:
        frames = 1.0 - frames
    if frames.shape[1:] != (SIZE, SIZE):
        from PIL import Image

        frames = np.stack([np.asarray(Image.fromarray(f).resize((SIZE, SIZE), Image.BOX)) for f in frames])
    return np.clip(frames, 0.0, 1.0).astype(np.float32)


def as_float(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def confidence(probabilities: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """How sure the classifier is that each image is one of `columns`' categories."""
    return np.asarray(probabilities)[:, list(columns)].sum(axis=1)


def recognized(probabilities: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """True where the classifier's top class is one of `columns`."""
    return np.isin(np.argmax(probabilities, axis=1), list(columns))


def best_of(scores: np.ndarray, n: int, group: Optional[int] = None) -> np.ndarray:
    """Indices of the candidates to keep, in candidate order.

    group=None: the n highest scores of all candidates (prior samples are interchangeable).
    group=K: candidates come in n runs of K (K tries at the same seed image); keep the best
    of each run, so every seed image is still drawn once. Ties go to the earlier candidate.
    """
    scores = np.asarray(scores, np.float64)
    if group is None:
        if n > len(scores):
            raise QdError(f"cannot keep {n} of {len(scores)} candidates")
        return np.sort(np.argsort(-scores, kind="stable")[:n])
    if len(scores) != n * group:
        raise QdError(f"expected {n} runs of {group} candidates, got {len(scores)}")
    return np.arange(n) * group + np.argmax(scores.reshape(n, group), axis=1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two sets of feature rows."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise QdError("the Frechet distance needs at least 2 rows in each set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # Features that are always 0 (dead ReLU units) make the product singular; sqrtm warns
        # and may return non-finite values, which the nudge below deals with.
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(s_a @ s_b)
        if not np.all(np.isfinite(root)):
            eps = 1e-6 * np.eye(len(s_a))
            root = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    root = np.real(root)  # round-off leaves tiny imaginary parts
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(root))
    return max(d, 0.0)


@dataclass
class RealSets:
    """Two disjoint sets of n real drawings (`a`, `b`), and how many of them the classifier
    never trained on; `unseen` holds every real drawing it never trained on."""

    a: np.ndarray
    b: np.ndarray
    held_out: int
    unseen: np.ndarray


def _without(images: np.ndarray, exclude: Optional[np.ndarray]) -> np.ndarray:
    if exclude is None or not len(images):
        return images
    key = lambda a: (np.asarray(a, np.float32) * 255).round().astype(np.uint8).reshape(len(a), -1)  # noqa: E731
    gone = {row.tobytes() for row in key(exclude)}
    return images[[row.tobytes() not in gone for row in key(images)]]


def real_sets(
    classifier: Classifier, category: str, n: int, rng: np.random.Generator, exclude: Optional[np.ndarray] = None
) -> RealSets:
    """Two disjoint sets of n real drawings, taken from those the classifier never trained on
    first and topped up from the others only when there are too few; none of them equal to
    one of `exclude` (drawings whose reconstructions are being compared with them)."""
    unseen, seen = classifier.drawings(category)
    unseen, seen = _without(as_float(unseen), exclude), _without(as_float(seen), exclude)
    if len(unseen) + len(seen) < 2 * n:
        raise InputError(
            f"--n {n} needs {2 * n} real drawings of {category!r} (two disjoint sets) and there are "
            f"{len(unseen) + len(seen)}: use --n {(len(unseen) + len(seen)) // 2} or less"
        )
    pool = np.concatenate([unseen[rng.permutation(len(unseen))], seen[rng.permutation(len(seen))]])
    return RealSets(pool[:n], pool[n : 2 * n], min(len(unseen), 2 * n), unseen)


def figures(
    classifier: Classifier,
    generated: np.ndarray,
    category: str,
    rng: np.random.Generator,
    who: str = DEFAULT,
    exclude: Optional[np.ndarray] = None,
) -> dict:
    """qd eval's recognizer figures for n generated 28x28 drawings of `category`: the fraction
    recognized, the Frechet distance to n real drawings and the distance between two real
    sets of n (its floor: what a perfect generator would score at this n), and the fraction
    of real drawings the classifier never trained on that it recognizes."""
    columns = check_known(classifier.classes, [category], who)
    n = len(generated)
    real = real_sets(classifier, category, n, rng, exclude)
    p_gen, f_gen = classifier.classify(generated)
    _, f_a = classifier.classify(real.a)
    _, f_b = classifier.classify(real.b)
    judged = real.unseen if len(real.unseen) else np.concatenate([real.a, real.b])
    p_real, _ = classifier.classify(judged)
    fd, floor = frechet_distance(f_gen, f_a), frechet_distance(f_b, f_a)
    return {
        "category": category,
        "n": n,
        "recognized": float(recognized(p_gen, columns).mean()),
        "recognized_real": float(recognized(p_real, columns).mean()),
        "n_real_judged": len(judged),
        "frechet": fd,
        "frechet_floor": floor,
        "frechet_over_floor": fd / floor if floor > 0 else float("inf"),
        "real_held_out": real.held_out,
    }


def real_figures(
    classifier: Classifier, category: str, n: int, rng: np.random.Generator, show, who: str = DEFAULT
) -> dict:
    """A display chain judged on real drawings: the figures of `figures` for n real drawings
    as they are (`raw`) and after `show` ((n, 28, 28) ink bright -> the same after the
    recipe's filters, scaled back to 28x28), against the same other n real drawings. A
    chain that keeps drawings looking like themselves keeps both close to raw. Raw is the
    floor's own set, so its distance is the floor; `ink` is the mean brightness at 28x28
    (how much ink the chain adds or takes away)."""
    columns = check_known(classifier.classes, [category], who)
    real = real_sets(classifier, category, n, rng)
    shown = np.asarray(show(real.b), np.float32)
    if shown.shape != real.b.shape:
        raise QdError(f"the display chain returned drawings shaped {shown.shape}; expected {real.b.shape}")
    _, f_a = classifier.classify(real.a)
    floor = None
    out = {"category": category, "n": n, "real_held_out": real.held_out}
    for name, images in (("raw", real.b), ("filtered", shown)):
        p, f = classifier.classify(images)
        fd = frechet_distance(f, f_a)
        floor = fd if floor is None else floor  # raw: the b set against the a set, as `figures` takes it
        out[name] = {
            "recognized": float(recognized(p, columns).mean()),
            "frechet": fd,
            "frechet_over_floor": fd / floor if floor > 0 else float("inf"),
            "ink": float(images.mean()),
        }
    out["frechet_floor"] = floor
    return out
