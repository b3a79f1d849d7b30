"""From DRAW's canvas to ink on a page: what each drawing step's frame shows.

DRAW's canvas starts at logit 0 everywhere, so sigmoid of the early canvases is a uniform
mid-grey (sigmoid(0) = 0.5): "don't know yet", not ink. Shown as they are, the `steps` frames
of a GIF start as a grey field and only the last steps look like ink on paper. A person
watching expects a blank page that fills with strokes.

So a Drawing's frames show *the ink laid down so far*: each pixel of the final drawing,
sigmoid(c_T), appears in proportion to how much of its positive (ink-ward) writing the steps
so far did:

    d_t   = c_t - c_{t-1}                          (the logits step t wrote; c_0 = 0)
    P_t   = sum_{s <= t} max(d_s, 0)               (ink-ward writing so far)
    frame_t = sigmoid(c_T) * P_t / P_T

So the page is blank before the first write; a step adds ink exactly where it wrote towards
ink and never removes any; writing that a later step erases (a negative write) never shows,
because the final drawing has no ink there; and the last frame is sigmoid(c_T) itself, the
model's output, unchanged. A pixel no step wrote towards ink (P_T = 0) keeps the page blank
until the last frame, which shows its final value.

Plain numpy: a writer, a filter or a web page can call it without TensorFlow.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, float32, without overflow warnings for large |x|."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def ink_so_far(logits: np.ndarray) -> np.ndarray:
    """Canvas logits c_1..c_T, shaped (T, ...), -> frames (T, ...) float32 in [0, 1].

    See the module docstring: frame t is the final drawing's ink in the share that steps
    1..t wrote; frame T-1 (the last) equals sigmoid(c_T).
    """
    c = np.asarray(logits, dtype=np.float32)
    if c.ndim < 1 or c.shape[0] == 0:
        raise ValueError(f"need at least one step of canvas logits, got shape {c.shape}")
    final = sigmoid(c[-1])
    steps = np.diff(c, axis=0, prepend=np.zeros_like(c[:1]))
    laid = np.cumsum(np.maximum(steps, 0.0), axis=0)  # P_t, non-decreasing in t
    total = laid[-1]
    share = np.divide(laid, total, out=np.zeros_like(laid), where=total > 0)
    share[-1] = 1.0  # exact, also where nothing was written towards ink (total == 0)
    return np.clip(final * share, 0.0, 1.0).astype(np.float32)


# The model's ink where it finishes a person's drawing (mode: complete): a blue that stands
# apart from grey ink on a white page and on a black one.
MODEL_INK = np.array([40, 110, 235], np.float32) / 255.0


def two_inks(given: np.ndarray, canvases: np.ndarray) -> np.ndarray:
    """A person's partial drawings (k, h, w) and the model's canvases (k, h, w) that finish
    them -> (k, h, w, 3): the person's ink as it is, the ink the model added in MODEL_INK.

    Filters may have inverted the page, so ink is measured as distance from the page colour
    (the median of each partial drawing, which is mostly page)."""
    page = np.median(given.reshape(len(given), -1), axis=1)[:, None, None]
    person = np.abs(given - page)
    added = np.clip(np.abs(canvases - page) - person, 0.0, 1.0)[..., None]
    grey = given[..., None] * np.ones(3, np.float32)
    return np.clip(grey * (1 - added) + MODEL_INK * added, 0.0, 1.0).astype(np.float32)
