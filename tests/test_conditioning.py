"""Class-conditional DRAW: a named category steers sampling and reconstruction, labels reach
the loss, and a one-category model stays today's unconditional model, variable for variable."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from qdcore import InputError
from qdcore.config import ModelConfig, TrainConfig
from qdcore.draw import Draw
from qdcore.training import optimizer
from qdcore.training.train import make_train_step

TINY = ModelConfig(T=3, enc_size=16, dec_size=16, z_size=4, read_n=3, write_n=3)
CLASSES = ["cat", "apple", "fish"]
# The unconditional model's checkpointed variables, as they were before conditioning existed.
UNCONDITIONAL = ["dec_bias", "dec_kernel", "enc_bias", "enc_kernel", "out_bias", "out_kernel", "z_bias", "z_kernel"]


def names(model) -> list[str]:
    return sorted(v.name.split(":")[0] for v in model.trainable_variables)


def test_one_category_is_the_unconditional_model_unchanged(tmp_path):
    plain, one = Draw(TINY, seed=4), Draw(TINY, seed=4, classes=["cat"])
    assert names(plain) == names(one) == UNCONDITIONAL and one.conditioning is None and one.classes is None
    for a, b in zip(plain.weights, one.weights):
        assert np.array_equal(a.numpy(), b.numpy())
    path = tf.train.Checkpoint(model=plain).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)}
    assert not any("conditioning" in n for n in saved)
    # A conditional model keeps every unconditional weight as it was, plus two tables.
    cond = Draw(TINY, seed=4, classes=CLASSES)
    assert names(cond) == sorted(UNCONDITIONAL + ["enc_table", "dec_table"])
    for a, b in zip(plain.weights, cond.weights):
        assert np.array_equal(a.numpy(), b.numpy())
    assert cond.conditioning.enc_table.shape == (3, 4 * TINY.enc_size)


def test_a_named_category_steers_samples_and_reconstructions():
    model = Draw(TINY, seed=1, classes=CLASSES)
    cat, cat_again, fish = (model.sample(4, seed=7, category=c).final for c in ("cat", "cat", "fish"))
    assert np.array_equal(cat, cat_again) and not np.allclose(cat, fish)
    by_index = model.sample(4, seed=7, category=0).final
    assert np.array_equal(by_index, cat)
    # No category: the classes in turn, so row i is class i % 3.
    mixed = model.sample(4, seed=7).final
    assert np.allclose(mixed[0], cat[0]) and np.allclose(mixed[2], fish[2])
    seeds = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    a = model.reconstruct(seeds, seed=1, category="apple").final
    b = model.reconstruct(seeds, seed=1, category="cat").final
    assert a.shape == (2, 28, 28) and not np.allclose(a, b)


def test_category_mistakes_are_clear():
    model = Draw(TINY, classes=CLASSES)
    with pytest.raises(InputError, match="did you mean 'fish'"):
        model.sample(2, category="fsh")
    with pytest.raises(InputError, match="out of range"):
        model.sample(2, category=3)
    with pytest.raises(InputError, match="not class-conditional"):
        Draw(TINY).sample(2, category="cat")


def test_labels_reach_the_loss_and_only_their_classes_rows_learn():
    model = Draw(TINY, seed=0, classes=CLASSES)
    x = tf.constant((np.random.default_rng(0).random((8, 28, 28)) > 0.8).astype(np.float32))
    as_cat = model.loss(x, training=False, labels=np.zeros(8, np.int32))[0].numpy()
    as_fish = model.loss(x, training=False, labels=np.full(8, 2, np.int32))[0].numpy()
    assert not np.allclose(as_cat, as_fish)
    cfg = TrainConfig(iterations=10, batch_size=8, warmup=0)
    step = make_train_step(model, optimizer.make(cfg, model.weights), cfg)
    before = model.conditioning.enc_table.numpy().copy()
    *_, ok = step(x, tf.constant(0, tf.int64), tf.constant(np.full(8, 2, np.int32)))
    after = model.conditioning.enc_table.numpy()
    assert bool(ok)
    assert np.array_equal(before[:2], after[:2]) and not np.array_equal(before[2], after[2])
