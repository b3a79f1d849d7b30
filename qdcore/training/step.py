"""The pieces of one training step that the single-device step (train.make_train_step) and the
strategy step (distribute.make_strategy_step) share: the batch's noise, its summed losses and
the global-norm clip. Both build on this module, so neither imports the other.
"""

from __future__ import annotations

import tensorflow as tf

from ..config import TrainConfig
from ..draw import Draw
from .plan import StepPlan


def labels_or_zeros(x, y):
    """The batch's class labels for a conditional model; zeros (ignored) for an unconditional one."""
    return tf.zeros(tf.shape(x)[:1], tf.int32) if y is None else y


def split_sizes(batch: int, streams: int) -> list[int]:
    return [batch // streams + (1 if i < batch % streams else 0) for i in range(streams)]


def step_noise(model: Draw, train_cfg: TrainConfig, k, batch_size: int):
    """The posterior noise of global batch k, (T, batch_size, z): a function of (seed, k), so
    a replica holding rows lo:hi of the batch takes eps[:, lo:hi] and sees the same noise
    its rows would see in a one-process run."""
    seed = tf.stack([tf.constant(train_cfg.seed, tf.int64), tf.cast(k, tf.int64)])
    return tf.random.stateless_normal(model.noise_shape(batch_size), seed=seed)


def batch_sums(model: Draw, batch: dict, eps, plan: StepPlan):
    """Summed L^x and L^z over `batch` (a dict: "x" the targets, "y" their class labels, absent
    for an unconditional model's zeros).

    The streams of a plan only reorder the sums: they are those of the whole batch."""
    x = batch["x"]
    y = labels_or_zeros(x, batch.get("y"))
    n = x.shape[0]
    streams = min(plan.streams, n) if n else 1
    if streams > 1:
        sizes = split_sizes(n, streams)
        parts = [
            model.loss_with_noise(xs, es, plan.precision, ys)
            for xs, es, ys in zip(tf.split(x, sizes, 0), tf.split(eps, sizes, 1), tf.split(y, sizes, 0))
        ]
        lx, lz = tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)
    else:
        lx, lz = model.loss_with_noise(x, eps, plan.precision, y)
    return tf.reduce_sum(lx), tf.reduce_sum(lz)


def clip(grads, loss, train_cfg: TrainConfig):
    """(clipped grads, global norm, finite?) for the gradient of the whole (global) batch."""
    gnorm = tf.linalg.global_norm(grads)
    ok = tf.math.is_finite(loss) & tf.math.is_finite(gnorm)
    if train_cfg.clip_norm > 0:
        scale = tf.minimum(1.0, train_cfg.clip_norm / tf.maximum(gnorm, 1e-12))
        grads = [g * scale for g in grads]
    return grads, gnorm, ok
