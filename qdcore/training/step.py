"""The pieces of one training step that the single-device step (train.make_train_step) and the
strategy step (distribute.make_strategy_step) share: the batch's noise, its summed losses and
the global-norm clip. Both build on this module, so neither imports the other.
"""

from __future__ import annotations

import os

import tensorflow as tf

from .. import draw
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


def batch_sums(model: Draw, batch: dict, eps, plan: StepPlan, record=None):
    """Summed L^x and L^z over `batch` (a dict: "x" the targets, "y" their class labels, absent
    for an unconditional model's zeros). With `record`, each stream's run records its kernels'
    uses in the draw.KernelUses that `record()` gives it (see `sums_and_gradients`).

    The streams of a plan only reorder the sums: they are those of the whole batch."""
    x = batch["x"]
    y = labels_or_zeros(x, batch.get("y"))
    n = x.shape[0]
    streams = min(plan.streams, n) if n else 1

    def part(xs, es, ys):
        return model.loss_with_noise(xs, es, plan.precision, ys, uses=record() if record else None)

    if streams > 1:
        sizes = split_sizes(n, streams)
        parts = [part(*p) for p in zip(tf.split(x, sizes, 0), tf.split(eps, sizes, 1), tf.split(y, sizes, 0))]
        lx, lz = tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)
    else:
        lx, lz = part(x, eps, y)
    return tf.reduce_sum(lx), tf.reduce_sum(lz)


# Below this many rows a stream, each weight matrix's gradient is taken as one product over
# all T steps' rows (draw.Kernel): at batch 20 that measured 1.1-1.5x the step; at batch
# 400, where each step's product is already large, it measured 0.8-1.1x (docs/performance.md).
# QD_STACKED=0 turns it off, to compare.
STACK_BELOW_ROWS = 100


def stacks(rows, plan: StepPlan) -> bool:
    """Whether a step over `rows` (None: not known when traced) takes its kernels stacked."""
    if os.environ.get("QD_STACKED") == "0" or rows is None:
        return False
    return rows < STACK_BELOW_ROWS * max(1, min(plan.streams, rows))


def sums_and_gradients(model: Draw, batch: dict, eps, plan: StepPlan, scale, variables: list):
    """(summed L^x, summed L^z, the gradient of (L^x + L^z) * scale for each of `variables`).

    For a small batch (`stacks`), each weight matrix's gradient is one product over all T
    steps' rows (draw.Kernel), per stream, so the streams still take theirs side by side."""
    uses = []

    def record():
        uses.append(draw.KernelUses(tape))
        return uses[-1]

    with tf.GradientTape() as tape:
        lx, lz = batch_sums(model, batch, eps, plan, record if stacks(batch["x"].shape[0], plan) else None)
        loss = (lx + lz) * scale
    if not uses:
        return lx, lz, tape.gradient(loss, variables)
    return lx, lz, gradients(tape, loss, model, variables, uses)


def gradients(tape, loss, model: Draw, variables: list, uses: list) -> list:
    """tape.gradient(loss, variables), with each recorded kernel's gradient taken stacked."""
    kernel_names = {v.ref(): name for name, v in model.kernels.items()}
    others = [v for v in variables if v.ref() not in kernel_names]
    recorded = [(stream, name) for stream in uses for name in stream]
    outputs = [y for stream, name in recorded for _, y in stream[name]]
    grads = tape.gradient(loss, others + outputs)
    by_ref = {v.ref(): g for v, g in zip(others, grads)}
    at, by_name = len(others), {}
    for stream, name in recorded:
        n = len(stream[name])
        g = draw.stacked_gradient(stream[name], grads[at : at + n])
        by_name[name] = g if name not in by_name else by_name[name] + g
        at += n
    return [by_name[kernel_names[v.ref()]] if v.ref() in kernel_names else by_ref[v.ref()] for v in variables]


def clip(grads, loss, train_cfg: TrainConfig):
    """(clipped grads, global norm, finite?) for the gradient of the whole (global) batch."""
    gnorm = tf.linalg.global_norm(grads)
    ok = tf.math.is_finite(loss) & tf.math.is_finite(gnorm)
    if train_cfg.clip_norm > 0:
        scale = tf.minimum(1.0, train_cfg.clip_norm / tf.maximum(gnorm, 1e-12))
        grads = [g * scale for g in grads]
    return grads, gnorm, ok
