"""Class conditioning: one DRAW model for many categories.

The category enters as a one-hot vector y appended to the inputs of both LSTMs, the encoder's
[r, h_dec, h_enc, y] and the decoder's [z, h_dec, y], at every step (a conditional VAE,
Sohn et al. 2015). A one-hot input times the kernel rows it meets is just the row of its
class, so instead of widening the two gate matmuls by C columns (61% more encoder FLOPs at
C = 345) each LSTM gets a table of C rows of gate pre-activations, and the class's row is
added to the gate bias once per run: the same model as the one-hot concatenation, at the
cost of one gather. The rows are a learned embedding of the category, 4 x 256 numbers per
LSTM per class (0.35M parameters per LSTM at 345 classes).

The prior stays N(0, I): `sample(n, category="cat")` feeds the class to the decoder, and
`reconstruct(seeds, category="cat")` feeds it to both, steering a seed towards that class.
A set with one category trains today's unconditional model (no tables, same checkpoint).
"""

from __future__ import annotations

import difflib
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from .errors import InputError

Category = Union[None, str, int, Sequence[Union[str, int]]]


def conditional_classes(classes: Optional[Sequence[str]]) -> Optional[list[str]]:
    """The class names a model is conditioned on: None for a set of fewer than 2 classes."""
    return list(classes) if classes is not None and len(classes) > 1 else None


class ClassConditioning(tf.Module):
    """Per-class rows added to the encoder's and decoder's LSTM gate biases."""

    def __init__(self, classes: Sequence[str], enc_gates: int, dec_gates: int, rng: np.random.Generator):
        super().__init__(name="conditioning")
        self.classes = tuple(classes)
        c = len(self.classes)
        # Glorot-uniform, as the rows of a one-hot input's kernel would be initialised.
        self.enc_table = tf.Variable(_uniform(rng, c, enc_gates), name="enc_table")
        self.dec_table = tf.Variable(_uniform(rng, c, dec_gates), name="dec_table")

    @property
    def weights(self) -> list[tf.Variable]:
        return [self.enc_table, self.dec_table]

    def gate_biases(self, labels, enc_bias, dec_bias):
        """(B, 4*enc) and (B, 4*dec) biases for class labels (B,) int32."""
        return enc_bias + tf.gather(self.enc_table, labels), dec_bias + tf.gather(self.dec_table, labels)

    def blended_biases(self, weights, enc_bias, dec_bias):
        """As gate_biases for a category vector that is a blend (B, C) of one-hots: the
        one-hot input's rows, mixed (a morph from one category into another)."""
        return enc_bias + tf.matmul(weights, self.enc_table), dec_bias + tf.matmul(weights, self.dec_table)

    def labels(self, n: int, category: Category) -> np.ndarray:
        """(n,) int32 class indices: one named class for all n, a list of n, or (None) the
        classes in turn, so a sheet of a conditional model shows every category."""
        c = len(self.classes)
        if category is None:
            return (np.arange(n) % c).astype(np.int32)
        if isinstance(category, (str, int, np.integer)):
            return np.full(n, self.index(category), np.int32)
        listed = [self.index(x) for x in category]
        if len(listed) != n:
            raise InputError(f"{len(listed)} categories given for {n} images; give one, or one per image")
        return np.asarray(listed, np.int32)

    def index(self, category: Union[str, int]) -> int:
        if isinstance(category, (int, np.integer)) and not isinstance(category, bool):
            if not 0 <= category < len(self.classes):
                raise InputError(
                    f"category index {category} is out of range: this model has {len(self.classes)} categories"
                )
            return int(category)
        if category in self.classes:
            return self.classes.index(category)
        close = difflib.get_close_matches(str(category), self.classes, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(x) for x in close)}?)" if close else ""
        raise InputError(
            f"this model was not trained on category {category!r}{hint}. "
            f"Its {len(self.classes)} categories: {', '.join(self.classes)}"
        )


def unconditional_labels(n: int, category: Category) -> np.ndarray:
    """The labels an unconditional model ignores; asking it for a category is a mistake."""
    if category is not None:
        raise InputError(
            f"category {category!r} asked of a model trained on one category: it is not "
            "class-conditional. Train on several categories (for example recipes/zoo-26.yaml)"
        )
    return np.zeros(n, np.int32)


def _uniform(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (rows + cols))
    return rng.uniform(-limit, limit, size=(rows, cols)).astype(np.float32)


class Steered:
    """A conditional model held to one category: what a recipe drawing from a shared model
    generates with. sample() and reconstruct() default to that category; everything else
    (loss, cfg, classes, ...) is the model's own."""

    def __init__(self, model, category: str):
        self.model, self.category = model, category
        model.labels(1, category)  # an unknown category fails here, with the model's list

    def sample(self, n: int, seed: Optional[int] = None, category: Category = None):
        return self.model.sample(n, seed=seed, category=self.category if category is None else category)

    def reconstruct(self, seeds, seed: Optional[int] = None, category: Category = None):
        return self.model.reconstruct(seeds, seed=seed, category=self.category if category is None else category)

    def complete(self, partial, k: int, seed: Optional[int] = None, category: Category = None):
        return self.model.complete(partial, k, seed=seed, category=self.category if category is None else category)

    def encode(self, images, category: Category = None):
        return self.model.encode(images, category=self.category if category is None else category)

    def decode(self, z, category: Category = None, towards: Category = None, amount=None):
        return self.model.decode(
            z, category=self.category if category is None else category, towards=towards, amount=amount
        )

    def __getattr__(self, name):
        return getattr(self.model, name)
