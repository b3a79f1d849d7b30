"""TensorBoard summaries of a training run, written into the model's folder.

`tensorboard --logdir ~/.cache/qd/models` (or $QD_CACHE_DIR/models) shows every run: each
model folder's `tensorboard/` holds L^x, L^z, the learning rate, the gradient norm and
steps/s every EVERY steps, and a sheet of prior samples at every checkpoint. Only the chief
of a distributed run writes them.

TensorBoard itself is not a qd dependency (`pip install tensorboard` to view): the events are
written with TensorFlow's own `tf.summary.write`, tagged for TensorBoard's scalar and image
plugins exactly as tensorboard.summary.v2's scalar() and image() tag them, which
tensorflow-cpu cannot call without the tensorboard package installed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

FOLDER = "tensorboard"
EVERY = 10  # steps between scalar summaries: a host write every step costs ~1% of a CPU step
SHEET = 4  # the prior-sample sheet is SHEET x SHEET drawings


def _plugin(name: str):
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=name))


def scalar(tag: str, value: float, step: int) -> None:
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_plugin("scalars"))


def image(tag: str, picture: np.ndarray, step: int) -> None:
    """One greyscale picture (H, W) in [0, 1], as TensorBoard's image plugin stores it."""
    png = tf.io.encode_png(tf.convert_to_tensor(np.round(picture * 255).astype(np.uint8)[:, :, None]))
    h, w = picture.shape
    tf.summary.write(tag, tf.stack([tf.as_string(w), tf.as_string(h), png]), step=step, metadata=_plugin("images"))


class Summaries:
    """Writes nothing when `enabled` is False (another worker, or a test that says so)."""

    def __init__(self, workdir: Path, enabled: bool, start: int):
        self.writer = tf.summary.create_file_writer(str(Path(workdir) / FOLDER)) if enabled else None
        self._t, self._step = time.perf_counter(), start

    def scalars(self, step: int, lx: float, lz: float, gnorm: float, lr, force: bool = False) -> None:
        """`lr` is a callable giving the step's learning rate, evaluated only when written."""
        if self.writer is None or not (force or step % EVERY == 0) or step == self._step:
            return
        now = time.perf_counter()
        with self.writer.as_default(step=step):
            scalar("loss/L^x", lx, step)
            scalar("loss/L^z", lz, step)
            scalar("loss/bound", lx + lz, step)
            scalar("train/learning_rate", lr(), step)
            scalar("train/gradient_norm", gnorm, step)
            scalar("train/steps_per_s", (step - self._step) / max(now - self._t, 1e-9), step)
        self._t, self._step = now, step

    def samples(self, step: int, model) -> None:
        """A SHEET x SHEET sheet of prior samples (fixed noise, so sheets compare across steps)."""
        if self.writer is None:
            return
        final = model.sample(SHEET * SHEET, seed=0).canvases[-1]  # (n, H, W) in [0, 1]
        h, w = final.shape[1:]
        sheet = 1.0 - final.reshape(SHEET, SHEET, h, w).transpose(0, 2, 1, 3).reshape(SHEET * h, SHEET * w)
        with self.writer.as_default(step=step):
            image("prior_samples", sheet, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
