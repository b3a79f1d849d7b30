"""The optimizer and learning-rate schedule: Keras' Adam driven by a Keras schedule.

Keras' optimizers know tf.distribute: under a strategy their slot variables are mirrored
with the weights they belong to and every replica applies the same update. qd uses them
with two settings the blog's configuration needs:

- epsilon 1e-8 (Keras' default is 1e-7): the update is then exactly the one qd's earlier
  hand-written Adam computed, so runs and checkpoints made before the switch carry over
  (`restore_legacy`).
- The gradient reaches Adam already summed over replicas: qd all-reduces it itself, once,
  because the global-norm clip and the finite check need the global gradient before Adam
  sees it (Keras' own `global_clipnorm` would clip each replica's part separately).
  `Adam._all_reduce_sum_gradients` therefore passes gradients through; Keras 2 offered the
  same as `experimental_aggregate_gradients=False`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from ..config import TrainConfig


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then constant or cosine decay to final_fraction * peak at `total`.

    lr(step) = peak * cosine(step) * min(1, (step + 1) / warmup), a function of the step
    alone, so a resumed run continues the schedule exactly. The warmup multiplies the decay
    (rather than preceding it, as keras' CosineDecay(warmup_steps=...) does) so the schedule
    is the one qd has always used and old runs resume on the same curve.
    """

    def __init__(self, peak: float, total: int, warmup: int, kind: str = "cosine", final_fraction: float = 0.05):
        self.peak, self.total, self.warmup, self.kind, self.final_fraction = peak, total, warmup, kind, final_fraction

    @classmethod
    def from_config_of(cls, train_cfg: TrainConfig) -> "WarmupCosine":
        return cls(
            train_cfg.learning_rate,
            max(train_cfg.iterations, 1),
            min(train_cfg.warmup, train_cfg.iterations // 10),
            train_cfg.lr_schedule,
            train_cfg.lr_final_fraction,
        )

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.peak, tf.float32)
        if self.kind == "cosine":
            progress = tf.minimum(step / float(self.total), 1.0)
            floor = self.final_fraction
            lr = lr * (floor + (1 - floor) * 0.5 * (1 + tf.cos(math.pi * progress)))
        if self.warmup > 0:
            lr = lr * tf.minimum(1.0, (step + 1) / self.warmup)
        return lr

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total": self.total,
            "warmup": self.warmup,
            "kind": self.kind,
            "final_fraction": self.final_fraction,
        }


class Adam(keras.optimizers.Adam):
    """keras.optimizers.Adam for gradients that are already summed over replicas (see above)."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def make(train_cfg: TrainConfig, variables: list) -> Adam:
    """Adam (beta1 from the recipe, beta2 0.999, epsilon 1e-8) on the warmup-cosine schedule,
    built on `variables` now: its slots exist before any compiled step runs or restore happens."""
    opt = Adam(learning_rate=WarmupCosine.from_config_of(train_cfg), beta_1=train_cfg.beta1, beta_2=0.999, epsilon=1e-8)
    opt.build(variables)
    return opt


def learning_rate(opt: Adam) -> float:
    """The learning rate the next update will use."""
    return float(opt.learning_rate)


# Checkpoints written before qd used Keras' Adam hold the hand-written Adam's state under
# these names; `restore_legacy` moves it into Keras' slots (same update rule, same meaning).
LEGACY_ITERATIONS = "opt/iterations/.ATTRIBUTES/VARIABLE_VALUE"


def is_legacy(reader) -> bool:
    return reader.has_tensor(LEGACY_ITERATIONS)


def restore_legacy(opt: Adam, reader) -> None:
    """Copy a legacy checkpoint's Adam state (iterations, m, v) into `opt` (already built)."""
    opt.iterations.assign(int(reader.get_tensor(LEGACY_ITERATIONS)))
    for i, (m, v) in enumerate(zip(opt._momentums, opt._velocities)):
        for slot, name in ((m, "m"), (v, "v")):
            value = np.asarray(reader.get_tensor(f"opt/{name}/{i}/.ATTRIBUTES/VARIABLE_VALUE"))
            if tuple(value.shape) != tuple(slot.shape):
                raise ValueError(f"legacy Adam slot {name}[{i}] is {value.shape}, the model wants {tuple(slot.shape)}")
            slot.assign(value)
