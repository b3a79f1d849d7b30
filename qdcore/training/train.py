"""The cycling trainer: batches, the compiled training step, checkpoints, the held-out bound.

Everything for one model lives in the `workdir` the engine hands over:
    checkpoints/      tf.train.CheckpointManager (weights, Adam state, step, noise generator)
    last_batch.npy    the last training batch, for the "training-batch last" seed strategy
    finished.json     written atomically only once training reached train_cfg.iterations,
                      or stopped by the stop rule ("stopped": step, reason, rule), with
                      the class names of a conditional model
    stop.json         the stop rule's checks so far, replayed on resume (qdcore/training/stopping.py)
    start.json        where a warm-started run's first weights came from (warm_start.initialize)
    compute.json      what training cost: each session's steps, wall and CPU seconds, machine, plan
    last_by_class.npz a conditional model's last training images of each class
    tensorboard/      TensorBoard summaries (qdcore/training/summaries.py)
Under a multi-worker strategy only the chief writes any of these (qdcore/training/distribute.py).

Batch k of a run is a pure function of (train_cfg.seed, k): the training indices are laid
end to end as one freshly shuffled permutation per cycle, and batch k is the k-th run of
batch_size positions in that stream. Every example is seen once per cycle (pitfall 8,
docs/architecture.md), and a resumed run picks up exactly where it stopped.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import checkpoints
from . import optimizer
from . import stopping
from .. import interrupt
from ..atomic import atomic_path
from ..conditioning import conditional_classes
from ..config import ModelConfig, TrainConfig
from ..draw import Draw
from ..errors import Cancelled, InputError, QdError, TrainingError
from ..interfaces import ImageSet
from .plan import Choice, StepPlan
from . import plan as step_plans
from .mixing import balanced_groups, cycle_length, cycle_order, fit_batch, last_by_class, split, stream_labels
from ..models import CHECKPOINTS, FINISHED
from ..reporter import QUIET, Reporter
from .step import clip, labels_or_zeros, split_sizes, step_noise, sums_and_gradients

LAST_BATCH = "last_batch.npy"
STARTED = "start.json"
COMPUTE = "compute.json"
LAST_BY_CLASS = "last_by_class.npz"
KEEP_PER_CLASS = 16
# The CPU flags a compute record keeps: those that decide which step plan is fastest.
MACHINE_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "asimd", "sve"}


@dataclass
class TrainedModel:
    model: Draw
    step: int
    last_batch: np.ndarray | None
    workdir: Path
    # A conditional model's last training images of each class: (images, labels), or None.
    last_by_class: tuple[np.ndarray, np.ndarray] | None = None
    # The manifest of the model pack it came from (qdcore/packs.py); None: trained into the cache.
    pack: dict | None = None

    def last_of(self, category: int) -> np.ndarray | None:
        """The last training images of one class, oldest first (None if it has none)."""
        if self.last_by_class is None:
            return None
        images, labels = self.last_by_class
        mine = images[labels == category]
        return mine if len(mine) else None


def targets(data: ImageSet, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows `index` as float32 training targets, binarized as the ImageSet asks."""
    x = data.as_float(index)
    if data.binarize == "threshold":
        return (x > data.threshold).astype(np.float32)
    if data.binarize == "dynamic":
        return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)
    return x


def describe_targets(data: ImageSet) -> str:
    return {"none": "greyscale", "threshold": "binarized (threshold)", "dynamic": "binarized (dynamic)"}[data.binarize]


class Batches:
    """Batch k of the cycling stream, computed on demand (numpy gather, no copy of the set).
    A labelled set is mixed as its `mix` says (qdcore/training/mixing.py) and batches carry labels."""

    def __init__(self, data: ImageSet, train_idx: np.ndarray, batch_size: int, seed: int):
        self.data, self.train_idx, self.batch_size, self.seed = data, train_idx, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}
        self.labels = stream_labels(data)
        self._groups = balanced_groups(data, train_idx)
        self.cycle_len = cycle_length(self._groups, train_idx)

    def _perm(self, cycle: int) -> np.ndarray:
        if cycle not in self._perms:
            if len(self._perms) > 4:  # a batch spans at most a few cycles; keep memory flat
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, 0xC1C1E, cycle])
            self._perms[cycle] = cycle_order(self._groups, self.train_idx, rng)
        return self._perms[cycle]

    def indices(self, k: int) -> np.ndarray:
        n = self.cycle_len
        pos = np.arange(k * self.batch_size, (k + 1) * self.batch_size, dtype=np.int64)
        cycles, within = pos // n, pos % n
        return np.concatenate([self._perm(int(c))[within[cycles == c]] for c in np.unique(cycles)])

    def __call__(self, k) -> np.ndarray:
        return self.rows(k, 0, self.batch_size)

    def rows(self, k, lo: int, hi: int) -> np.ndarray:
        """Rows lo:hi of batch k, exactly as they are in the whole batch: a replica of a
        distributed run loads only its own part (qdcore/training/distribute.py)."""
        k, lo, hi = int(k), int(lo), int(hi)
        index = self.indices(k)[lo:hi]
        # Dynamic binarization draws fresh bits every time an example is seen; the bits of
        # the whole batch are drawn and the part's taken, so a part matches the whole.
        rng = np.random.default_rng([self.seed, 0xB1, k])
        if self.data.binarize == "dynamic":
            u = rng.random((self.batch_size,) + self.data.images.shape[1:], dtype=np.float32)[lo:hi]
            return (u < self.data.as_float(index)).astype(np.float32)
        return targets(self.data, index, rng)

    def labels_of(self, k) -> np.ndarray:
        """Batch k's class labels (int32; zeros for an unlabelled or one-class set)."""
        if self.labels is None:
            return np.zeros(self.batch_size, np.int32)
        return self.labels[self.indices(int(k))].astype(np.int32)

    def last_by_class(self, last_k: int, keep: int = KEEP_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
        """Each class's last `keep` training images up to batch last_k, and their labels."""
        rows, labels = last_by_class(
            self.indices, self.labels, len(self.data.classes), last_k, self.batch_size, self.cycle_len, keep
        )
        return targets(self.data, rows, np.random.default_rng([self.seed, 0xB1, last_k])), labels

    def dataset(self, start: int, stop: int) -> tf.data.Dataset:
        """(k, images, labels) for batches start..stop-1."""
        h, w = self.data.images.shape[1:3]

        def load(k):
            x = tf.numpy_function(self, [k], tf.float32, stateful=False)
            x.set_shape([self.batch_size, h, w])
            y = tf.numpy_function(self.labels_of, [k], tf.int32, stateful=False)
            y.set_shape([self.batch_size])
            return k, x, y

        return tf.data.Dataset.range(start, stop).map(load).prefetch(2)

    def calls(self, bounds: list[tuple[int, int]], slots: int) -> tf.data.Dataset:
        """(batch indices, images, labels, n) for each call [a, b) of `bounds`: its b - a batches
        stacked into `slots` (zeros past n = b - a; make_multi_step never runs those)."""
        h, w = self.data.images.shape[1:3]

        def load(a, b):
            a, b = int(a), int(b)
            xs = np.zeros((slots, self.batch_size, h, w), np.float32)
            ys = np.zeros((slots, self.batch_size), np.int32)
            for i, k in enumerate(range(a, b)):
                xs[i], ys[i] = self(k), self.labels_of(k)
            return np.arange(a, a + slots, dtype=np.int64), xs, ys, np.int32(b - a)

        def stacked(a, b):
            ks, xs, ys, n = tf.numpy_function(load, [a, b], [tf.int64, tf.float32, tf.int32, tf.int32], stateful=False)
            ks.set_shape([slots])
            xs.set_shape([slots, self.batch_size, h, w])
            ys.set_shape([slots, self.batch_size])
            n.set_shape([])
            return ks, xs, ys, n

        starts, stops = (np.array(v, np.int64) for v in zip(*bounds)) if bounds else (np.zeros(0, np.int64),) * 2
        return tf.data.Dataset.from_tensor_slices((starts, stops)).map(stacked).prefetch(2)


def make_train_step(model: Draw, opt, train_cfg: TrainConfig, plan: StepPlan | None = None):
    """The single-device step, compiled whole: loss, gradient, global-norm clip, guarded Adam update.

    step(x, k, y=None) takes the targets x (or a batch dict {"x", "y"}), the batch index k
    and the batch's class labels y (None: an unconditional model's zeros).
    Returns mean L^x, mean L^z, the gradient norm and whether they were finite. A non-finite
    step changes nothing, so the model in memory stays the last good one too. The streams
    of a plan only reorder the sums: the loss and gradient are those of the whole batch.
    Without a plan: train_cfg.precision's plain step (float32: XLA; bfloat16: uncompiled).
    The strategy step (qdcore/training/distribute.py) is built from the same pieces (qdcore/training/step.py).
    Adam is Keras' (qdcore/training/optimizer.py); its learning rate follows its own step count.
    """
    if plan is None:
        precision = "bfloat16" if train_cfg.precision == "bfloat16" else "float32"
        plan = StepPlan(precision, precision == "float32")
    if plan.jit_compile and plan.streams > 1:
        return _xla_streams_step(model, opt, train_cfg, plan)
    step = _one_graph_step(model, opt, train_cfg, plan)
    # The loop's several-steps-per-call form of the same step (make_multi_step), built when
    # first asked for; a step wrapped by a caller has none, and the loop then calls it per step.
    step.many = lambda: make_multi_step(model, opt, train_cfg, plan)
    return step


def _unpack(x, y):
    # A batch dict ({"x": targets, "y": labels}) or the targets themselves.
    if isinstance(x, dict):
        return x["x"], labels_or_zeros(x["x"], x.get("y", y))
    return x, labels_or_zeros(x, y)


def _guarded_update(opt, variables, train_cfg: TrainConfig):
    """update(lx, lz, grads, k) -> (lx, lz, gradient norm, ok): the global-norm clip, then
    Adam's update only when the loss and the norm are finite."""

    def update(lx, lz, grads, k):
        grads, gnorm, ok = clip(grads, lx + lz, train_cfg)

        def apply():
            opt.apply(grads, variables)
            return tf.constant(True)

        tf.cond(ok, apply, lambda: tf.constant(False))
        return lx, lz, gnorm, ok

    return update


def _step_body(model: Draw, opt, train_cfg: TrainConfig, plan: StepPlan):
    """body(x, k, y) -> (lx, lz, gradient norm, ok): one whole step, to trace inside a graph."""
    variables, update = model.weights, _guarded_update(opt, model.weights, train_cfg)

    def body(x, k, y):
        eps = step_noise(model, train_cfg, k, tf.shape(x)[0])
        inv = 1.0 / tf.cast(tf.shape(x)[0], tf.float32)
        lx, lz, grads = sums_and_gradients(model, {"x": x, "y": y}, eps, plan, inv, variables)
        return update(lx * inv, lz * inv, grads, k)

    return body


def _one_graph_step(model: Draw, opt, train_cfg: TrainConfig, plan: StepPlan):
    """The whole step as one graph, compiled by XLA if the plan says so (an uncompiled plan's
    streams are split inside batch_sums)."""
    body = _step_body(model, opt, train_cfg, plan)
    device = "/GPU:0" if plan.device == "gpu" else "/CPU:0"

    @tf.function(jit_compile=plan.jit_compile, reduce_retracing=True, autograph=False)
    def step(x, k, y=None):
        with tf.device(device):
            x, y = _unpack(x, y)
            return body(x, k, y)

    return step


# ---- several steps per call ------------------------------------------------------------------
# At batch 20 a step's arithmetic is a few milliseconds and the rest of a call (Python, the
# executor, copying four tensors back) costs as much again. Like Keras' steps_per_execution,
# one call then runs several steps in a loop inside the graph (compiled whole under XLA):
# the per-call cost is paid once per call. A call holds about CALL_IMAGES images: 64 steps at
# batch 20 (1.02-1.25x one step a call), 5 at batch 400 (1.04-1.09x, docs/performance.md).
CALL_IMAGES = 2048
MAX_STEPS_PER_CALL = 64


def steps_per_call(batch_size: int, plan: StepPlan, strategy=None) -> int:
    """How many steps one call of the training loop runs (1: the plain step). The XLA streams
    step (a cluster per stream) and a strategy's step take one step a call."""
    if strategy is not None or (plan.streams > 1 and plan.jit_compile):
        return 1
    return max(1, min(MAX_STEPS_PER_CALL, CALL_IMAGES // batch_size))


def make_multi_step(model: Draw, opt, train_cfg: TrainConfig, plan: StepPlan):
    """steps(xs, ks, ys, n) runs steps ks[0..n) on batches xs[i] (labels ys[i]) in one call and
    returns, for each of the K slots, (lx, lz, gradient norm, ok), and how many ran. Each step
    is exactly the plain step (the same noise, clip and guarded update); after a non-finite
    step none runs, so the model is the last good one as with single steps. K is the shape
    of xs (one compiled loop for every call; slots past n are padding and never run)."""
    body = _step_body(model, opt, train_cfg, plan)
    device = "/GPU:0" if plan.device == "gpu" else "/CPU:0"

    @tf.function(jit_compile=plan.jit_compile, reduce_retracing=True, autograph=False)
    def steps(xs, ks, ys, n):
        with tf.device(device):
            slots = xs.shape[0]
            zeros = tf.zeros([slots], tf.float32)

            def more(i, good, *_):
                return (i < n) & good

            def one(i, good, lx_all, lz_all, g_all, ok_all):
                lx, lz, gnorm, ok = body(xs[i], ks[i], ys[i])
                at = tf.reshape(i, [1, 1])
                put = lambda all_, v: tf.tensor_scatter_nd_update(all_, at, tf.reshape(v, [1]))  # noqa: E731
                return i + 1, ok, put(lx_all, lx), put(lz_all, lz), put(g_all, gnorm), put(ok_all, ok)

            start = (tf.constant(0), tf.constant(True), zeros, zeros, zeros, tf.zeros([slots], tf.bool))
            ran, _, lx, lz, g, ok = tf.while_loop(more, one, start, maximum_iterations=slots)
            return lx, lz, g, ok, ran

    return steps


def call_bounds(start: int, stop: int, per_call: int, every: list[int]) -> list[tuple[int, int]]:
    """The calls [a, b) of batch indices from start to stop: at most per_call steps each, and
    one ends at every step the loop looks at the model after (a multiple of each of `every`:
    checkpoints, stop-rule checks), so those see the model exactly after that step."""
    bounds, a = [], start
    while a < stop:
        b = min(stop, a + per_call, *[(a // e + 1) * e for e in every if e > 0])
        bounds.append((a, b))
        a = b
    return bounds


def _xla_streams_step(model: Draw, opt, train_cfg: TrainConfig, plan: StepPlan):
    """One XLA cluster per stream: the uncompiled outer graph runs them side by side on the
    inter-op threads, so each core runs few, large kernels. Each returns its part's sums and
    its part of the whole batch's mean-loss gradient; the update is compiled on its own."""
    variables = model.weights
    device = "/GPU:0" if plan.device == "gpu" else "/CPU:0"
    one_stream = replace(plan, streams=1)  # each part is one stream of the plan's

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def part(xs, es, ys, inv_batch):
        return sums_and_gradients(model, {"x": xs, "y": ys}, es, one_stream, inv_batch, variables)

    compiled_update = tf.function(_guarded_update(opt, variables, train_cfg), jit_compile=True, autograph=False)

    @tf.function(jit_compile=False, reduce_retracing=True, autograph=False)
    def step(x, k, y=None):
        with tf.device(device):
            x, y = _unpack(x, y)
            batch = x.shape[0]
            sizes = split_sizes(batch, min(plan.streams, batch))
            inv = tf.constant(1.0 / batch)
            noise = step_noise(model, train_cfg, k, tf.shape(x)[0])
            parts = [
                part(xs, es, ys, inv)
                for xs, es, ys in zip(tf.split(x, sizes, 0), tf.split(noise, sizes, 1), tf.split(y, sizes, 0))
            ]
            grads = [tf.add_n(list(g)) for g in zip(*[p[2] for p in parts])]
            return compiled_update(
                tf.add_n([p[0] for p in parts]) * inv, tf.add_n([p[1] for p in parts]) * inv, grads, k
            )

    return step


def plan_step(model_cfg: ModelConfig, train_cfg: TrainConfig, say=lambda m: None) -> Choice:
    """This run's step plan (plan.choose: forced, cached or measured) applied to this process."""
    choice = step_plans.apply(step_plans.choose(model_cfg, train_cfg, say=say))
    if choice.note:
        say(choice.note)
    return choice


def new_training(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    plan: StepPlan | Choice | None = None,
    say=lambda m: None,
    classes=None,
    strategy=None,
):
    """(plan choice, model, optimizer, compiled step) for a fresh run, built in the order that
    matters: the plan first, because TensorFlow's threads can only be set before the model's
    variables start it. `classes` (2 or more) makes the model class-conditional. Under a
    tf.distribute strategy the model and optimizer are created in its scope and the step is
    the strategy's (qdcore/training/distribute.py); otherwise on the plan's device."""
    if plan is None:
        choice = plan_step(model_cfg, train_cfg, say)
    else:
        choice = plan if isinstance(plan, Choice) else Choice(plan, "given")
    if strategy is None:
        with tf.device("/GPU:0" if choice.plan.device == "gpu" else "/CPU:0"):
            model = Draw(model_cfg, seed=train_cfg.seed, classes=classes)
            opt = optimizer.make(train_cfg, model.weights)
        return choice, model, opt, make_train_step(model, opt, train_cfg, choice.plan)
    from .distribute import make_strategy_step

    with strategy.scope():
        model = Draw(model_cfg, seed=train_cfg.seed, classes=classes)
        opt = optimizer.make(train_cfg, model.weights)
    return choice, model, opt, make_strategy_step(model, opt, train_cfg, choice.plan, strategy)


class _Progress:
    """A rich progress bar with L^x, L^z and ETA; does nothing when quiet."""

    def __init__(self, total: int, start: int, quiet: bool, label: str):
        self.bar = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("L^x {task.fields[lx]:8.2f}  L^z {task.fields[lz]:6.2f}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.bar.add_task(label, total=total, completed=start, lx=float("nan"), lz=float("nan"))

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def update(self, step: int, lx: float, lz: float):
        if self.bar:
            self.bar.update(self.task, completed=step, lx=lx, lz=lz)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()


def _checkpointing(model: Draw, opt, step_var: tf.Variable, folder: Path):
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=step_var)
    checkpoints.set_aside_damaged_state(folder / CHECKPOINTS)  # the manager would re-read it and crash
    # A save a kill -9 cut short; only the trainer (under the model's lock, or the workers'
    # lockstep) comes here, so no save of this model runs now.
    checkpoints.remove_half_written(folder / CHECKPOINTS)
    return ckpt, tf.train.CheckpointManager(ckpt, str(folder / CHECKPOINTS), max_to_keep=2)


def _restore(ckpt, model: Draw, opt, step_var: tf.Variable, path: str) -> None:
    """Restore a checkpoint, including one written before qd used Keras' Adam: its weights
    and step load as they are and its Adam moments move into Keras' slots (the same update
    rule), so an interrupted old run resumes exactly where it stopped."""
    reader = tf.train.load_checkpoint(path)
    if optimizer.is_legacy(reader):
        tf.train.Checkpoint(model=model, step=step_var).restore(path).expect_partial()
        optimizer.restore_legacy(opt, reader)
    else:
        ckpt.restore(path).assert_consumed()


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _check_shape(model_cfg: ModelConfig, data: ImageSet) -> None:
    shape = tuple(data.images.shape[1:])
    if data.images.ndim != 3 or shape != (model_cfg.height, model_cfg.width):
        raise InputError(
            f"{data.name}: images are {tuple(data.images.shape)}, "
            f"the model wants (N, {model_cfg.height}, {model_cfg.width})"
        )


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: ImageSet,
    workdir: Path,
    *,
    restart: bool = False,
    reporter: Reporter = QUIET,
    on_step=None,
    start=None,
) -> TrainedModel:
    """Train to train_cfg.iterations or until the stop rule stops it (qdcore/training/stopping.py),
    resuming from workdir's checkpoints if present, in batches of train_cfg.batch_size or of
    the whole training set when that is smaller (mixing.fit_batch).

    on_step(step, total, lx, lz), when given, is called after every call of the step (every
    step, or the last of a call's several: steps_per_call) for the studio's progress bar;
    returning True stops training there: a checkpoint is saved and Cancelled raised.

    A workdir holding a finished model is loaded and nothing is trained, unless it was
    stopped early by another stop rule than train_cfg's: then it trains on from the stop.
    restart=True discards workdir's checkpoints, last batch, stop record and finished marker first.
    `start` (a warm_start.Start): a fresh run begins from that model's weights
    (qdcore/training/warm_start.py); a resumed one from its own checkpoint. `reporter` gets
    the run's notes (plan, start, stop) and decides whether a progress bar shows.
    """
    workdir = Path(workdir)
    asked, train_cfg = train_cfg.batch_size, fit_batch(train_cfg, data)
    record = None if restart else checkpoints.read_finished(workdir / FINISHED)
    if record is not None and not stopping.needs_more(record, train_cfg):
        train_idx, _ = split(len(data.images), train_cfg, stream_labels(data))
        done = _load_finished(model_cfg, workdir, Batches(data, train_idx, train_cfg.batch_size, train_cfg.seed))
        if done is not None:
            return done
    from . import distribute

    # The plan first (TensorFlow's threads are set before anything starts it), then the
    # strategy (a multi-worker one must also come before TensorFlow's runtime starts).
    say = reporter.note
    if train_cfg.batch_size < asked:
        say(
            f"batch: {train_cfg.batch_size} images, the whole training set (train.batch_size {asked} "
            f"would hold each drawing {asked / train_cfg.batch_size:.0f} times)"
        )
    choice = plan_step(model_cfg, train_cfg, say)
    placement = distribute.choose(train_cfg)
    try:
        return _train(model_cfg, train_cfg, data, workdir, choice, placement, restart, reporter, on_step, start)
    finally:
        placement.cleanup()


def _train(
    model_cfg,
    train_cfg,
    data,
    workdir: Path,
    choice: Choice,
    placement,
    restart: bool,
    reporter: Reporter,
    on_step,
    start,
) -> TrainedModel:
    from . import distribute

    if restart and placement.chief:
        _forget(workdir)
    _check_shape(model_cfg, data)
    classes = conditional_classes(data.classes)
    distribute.check_batch(train_cfg, placement)
    train_idx, held_idx = split(len(data.images), train_cfg, stream_labels(data))
    if len(train_idx) == 0:
        raise InputError(f"{data.name}: no training images left after holding out {train_cfg.holdout:.0%}")
    if placement.chief:
        workdir.mkdir(parents=True, exist_ok=True)
    run = _Training(model_cfg, train_cfg, data, workdir, placement, reporter)
    run.resume(choice, classes, start, train_idx)
    stopped = run.loop(train_idx, len(held_idx), on_step)
    return run.finish(train_idx, classes, stopped)


def _forget(workdir: Path) -> None:
    """restart=True: the checkpoints, last batch, stop record and finished marker go first."""
    shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)
    for name in (FINISHED, LAST_BATCH, LAST_BY_CLASS, stopping.STATE, STARTED, COMPUTE):
        (workdir / name).unlink(missing_ok=True)


class _Training:
    """One run of train() in its three phases: resume() (the newest checkpoint that restores,
    or a fresh model; then every worker takes the chief's), loop() (the steps, checkpoints,
    summaries and the stop rule) and finish() (finished.json and what a later run reads)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data: ImageSet,
        workdir: Path,
        placement,
        reporter: Reporter,
    ):
        self.model_cfg, self.train_cfg, self.data, self.workdir = model_cfg, train_cfg, data, workdir
        self.placement, self.quiet = placement, reporter.quiet
        self.chief, self.multi = placement.chief, placement.workers > 1
        self.say = reporter.note
        self.last_saved: int | None = None
        self.started: dict | None = None  # what warm_start.initialize did, in this process

    # -- resume -------------------------------------------------------------------------------

    def _build(self, choice: Choice, classes) -> None:
        self.choice, self.model, self.opt, self.train_step = new_training(
            self.model_cfg, self.train_cfg, choice, classes=classes, strategy=self.placement.strategy
        )
        self.step_var = tf.Variable(0, dtype=tf.int64, name="step")
        many = getattr(self.train_step, "many", None)
        per_call = steps_per_call(self.train_cfg.batch_size, self.choice.plan, self.placement.strategy)
        self.per_call = per_call if many is not None else 1
        self.multi_step = many() if self.per_call > 1 else None
        self.ckpt, self.manager = _checkpointing(
            self.model, self.opt, self.step_var, self.placement.checkpoint_dir(self.workdir)
        )

    def resume(self, choice: Choice, classes, start=None, train_idx=None) -> None:
        from . import distribute

        self._build(choice, classes)
        ckpt_dir = Path(self.manager.directory)
        tried = checkpoints.candidates(ckpt_dir)
        restored = checkpoints.restore_newest(
            self.ckpt, ckpt_dir, restore=lambda p: _restore(self.ckpt, self.model, self.opt, self.step_var, p)
        )
        if tried and restored is None:  # every one was damaged, and a failed restore writes some variables
            self._build(self.choice, classes)
        self.last_saved = int(self.step_var.numpy()) if restored else None
        if restored is None and start is not None:
            from . import warm_start

            self.started = warm_start.initialize(self.model, start, self.data, train_idx)
            self.say(warm_start.describe(self.started))
            if self.chief:  # kept for finished.json, which a resumed run writes
                with atomic_path(self.workdir / STARTED) as tmp:
                    tmp.write_text(json.dumps(self.started))
        if self.multi:
            try:
                distribute.sync_from_chief(
                    self.placement, self.model.weights + list(self.opt.variables) + [self.step_var]
                )
            except tf.errors.OpError as e:
                raise distribute.lost_peer(e, int(self.step_var.numpy()), self.kept()) from e
            self.last_saved = int(self.step_var.numpy()) or self.last_saved

    def kept(self) -> str:
        where = f"in {self.workdir}" if self.chief else "on the chief"
        if self.last_saved is None:
            return "no checkpoint had been saved yet"
        return f"the last good checkpoint (step {self.last_saved}) is kept {where}"

    # -- loop ---------------------------------------------------------------------------------

    def _calls(self, start: int, checks: bool):
        """(first batch index, run) from `start` to the budget: run() takes one call's steps and
        returns each step's (lx, lz, gradient norm, ok), up to the first non-finite one."""
        from . import distribute

        cfg, train_step = self.train_cfg, self.train_step
        if self.placement.strategy is not None:
            dist = distribute.dataset(self.placement, self.batches, start, cfg.iterations)
            return ((start + i, lambda b=b: [[v.numpy() for v in train_step(b)]]) for i, b in enumerate(dist))
        if self.per_call == 1:
            return (
                (int(k), lambda x=x, k=k, y=y: [[v.numpy() for v in train_step(x, k, y)]])
                for k, x, y in self.batches.dataset(start, cfg.iterations)
            )
        every = [cfg.checkpoint_every] + ([cfg.check_every] if checks else [])
        bounds = call_bounds(start, cfg.iterations, self.per_call, every)

        def run(ks, xs, ys, n):
            lx, lz, g, ok, ran = (v.numpy() for v in self.multi_step(xs, ks, ys, n))
            return [(lx[i], lz[i], g[i], ok[i]) for i in range(int(ran))]

        return (
            (int(ks[0]), lambda a=(ks, xs, ys, n): run(*a))
            for ks, xs, ys, n in self.batches.calls(bounds, self.per_call)
        )

    def save(self, step: int) -> None:
        checkpoints.save(self.manager, step, self.last_saved)
        if self.chief and step > 0:
            _save_array(self.workdir / LAST_BATCH, self.batches(step - 1))
            self.summaries.samples(step, self.model)
            self._book_compute(step)

    def _book_compute(self, step: int) -> None:
        """compute.json: this session's steps and seconds so far beside earlier sessions' (a
        resumed run, a relay leg in another session): what a pack's manifest says it cost."""
        sessions = (checkpoints.read_record(self.workdir / COMPUTE) or {}).get("sessions") or []
        now = {
            "from_step": self.session[0],
            "to_step": step,
            "wall_s": round(time.monotonic() - self.session[1], 1),
            "cpu_s": round(time.process_time() - self.session[2], 1),
            **self.session[3],
        }
        sessions = [s for s in sessions if isinstance(s, dict) and s.get("id") != now["id"]] + [now]
        with atomic_path(self.workdir / COMPUTE) as tmp:
            tmp.write_text(json.dumps({"sessions": sessions}, indent=1))

    def _stop_rule(self, held: int, start: int):
        """(rule, signal, Plateau or None). Workers of a multi-worker run would each have to
        make the same decision from their own record, and a resumed one may lack it: they
        train the budget."""
        cfg = self.train_cfg
        rule = stopping.rule_of(cfg) if self.placement.workers == 1 else None
        signal = stopping.signal_for(held, self.placement.strategy is None)
        plateau = stopping.Plateau.resumed(cfg, signal, stopping.read_state(self.workdir), start) if rule else None
        return rule, signal, plateau

    def _checker(self, rule, signal: str, plateau):
        """check(step, lx, lz) -> stop now? The stop rule's figure every check_every steps: the
        held-out bound, or the mean training loss since the last check."""
        cfg, lsum, ln = self.train_cfg, 0.0, 0

        def check(step: int, lx: float, lz: float) -> bool:
            nonlocal lsum, ln
            lsum, ln = lsum + lx + lz, ln + 1
            if step % cfg.check_every or step >= cfg.iterations:
                return False
            if signal == stopping.HELDOUT:
                trained = TrainedModel(self.model, step, None, self.workdir)
                value = evaluate(trained, self.data, cfg, limit=stopping.HELDOUT_CAP)["bound"]
            else:
                value = lsum / ln
            lsum, ln = 0.0, 0
            halt = plateau.observe(step, value)
            if self.chief:
                stopping.write_state(self.workdir, plateau.to_dict(rule))
            return halt

        return check

    def _after_step(self, step: int, values, progress, schedule, on_step) -> tuple[float, float]:
        """Book one step: refuse a non-finite one, count it, report it, checkpoint when due.
        First, a signal whose exception a finalizer swallowed stops the run here."""
        interrupt.check()
        lx, lz, gnorm, ok = values
        cfg = self.train_cfg
        if not ok:
            applied = "training stopped there" if self.placement.strategy is not None else "the update was not applied"
            raise TrainingError(
                f"non-finite loss at step {step} (L^x={lx}, L^z={lz}, gradient norm={gnorm}); "
                f"{applied} and {self.kept()}. Try a lower learning_rate or clip_norm."
            )
        self.step_var.assign(step)
        progress.update(step, float(lx), float(lz))
        self.summaries.scalars(step, float(lx), float(lz), float(gnorm), lambda: float(schedule(step - 1)))
        if on_step is not None and on_step(step, cfg.iterations, float(lx), float(lz)):
            self.save(step)
            raise Cancelled(
                f"training stopped at step {step} of {cfg.iterations}; the checkpoint is kept "
                f"in {self.workdir} and the next run resumes from it"
            )
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            self.save(step)
            self.last_saved = step
        return float(lx), float(lz)

    def loop(self, train_idx: np.ndarray, held: int, on_step) -> dict | None:
        """Train from the restored step to the budget or the stop rule's stop (returned, else None)."""
        from . import distribute
        from .summaries import Summaries

        cfg = self.train_cfg
        start = int(self.step_var.numpy())
        info = step_plans.cpu_info()
        machine = {
            "id": f"{time.time_ns():x}",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": info["model"],
            "cores": step_plans.cpu_count(),
            "flags": sorted(set(info["flags"]) & MACHINE_FLAGS),
            "plan": self.choice.plan.name,
        }
        self.session = (start, time.monotonic(), time.process_time(), machine)
        self.batches = Batches(self.data, train_idx, cfg.batch_size, cfg.seed)
        schedule = optimizer.WarmupCosine.from_config_of(cfg)
        self.summaries = Summaries(self.workdir, self.chief, start)
        rule, signal, plateau = self._stop_rule(held, start)
        calls = self._calls(start, plateau is not None)
        self.say(_plan_line(self.choice, self.placement, cfg, start, signal))
        stopped = None
        if plateau is not None and plateau.flat >= plateau.patience:  # stopped before, the record was lost
            stopped = {"step": start, "reason": plateau.reason(), "rule": rule}
            calls = iter(())
        check = self._checker(rule, signal, plateau) if plateau is not None else None
        where = "; ".join(filter(None, [self.choice.label(), self.placement.describe()]))
        trial = step_plans.Trial.of(self.choice, cfg.batch_size) if not self.multi else None
        step = start
        try:
            with _Progress(cfg.iterations, start, self.quiet, f"training {self.data.name} ({where})") as progress:
                for k, run in calls:
                    began = time.perf_counter()
                    done = run()
                    if trial is not None:
                        trial = self._time_trial(trial, len(done), time.perf_counter() - began)
                    for i, values in enumerate(done):
                        step = k + i + 1
                        last = i == len(done) - 1
                        lx, lz = self._after_step(step, values, progress, schedule, on_step if last else None)
                        if check is not None and check(step, lx, lz):
                            stopped = {"step": step, "reason": plateau.reason(), "rule": rule}
                    if stopped is not None:
                        break
            if self.last_saved != int(self.step_var.numpy()) or self.manager.latest_checkpoint is None:
                self.save(int(self.step_var.numpy()))
        except tf.errors.OpError as e:
            if not self.multi:
                raise
            raise distribute.lost_peer(e, step + 1, self.kept()) from e
        finally:
            self.summaries.close()
            if trial is not None and _ended_well():
                trial.end()
        return stopped

    def _time_trial(self, trial, steps: int, seconds: float):
        """Feed a predicted plan's trial one call; once it has its figure, say it and end it."""
        measured = trial.observe(steps, seconds)
        if measured is None:
            return trial
        self.choice = measured
        rate = measured.rows[0]["images_per_s"]
        self.say(
            f"step plan {measured.plan.name}: {rate:,.0f} img/s in this run's first steps; "
            f"cached in {measured.path.parent}"
        )
        return None

    # -- finish -------------------------------------------------------------------------------

    def finish(self, train_idx: np.ndarray, classes, stopped: dict | None) -> TrainedModel:
        """The chief writes finished.json (and each category's last drawings); every worker
        returns its model."""
        step, workdir = int(self.step_var.numpy()), self.workdir
        if not self.chief:
            return TrainedModel(model=self.model, step=step, last_batch=None, workdir=workdir)
        last_batch = np.load(workdir / LAST_BATCH) if (workdir / LAST_BATCH).exists() else None
        finished = {
            "step": step,
            "model": self.model_cfg.as_dict(),
            "train": self.train_cfg.as_dict(),
            "dataset": self.data.name,
            "data": _counts(self.data, train_idx),
        }
        started = self.started or checkpoints.read_record(workdir / STARTED)
        if started is not None:
            finished["start"] = started
        compute = checkpoints.read_record(workdir / COMPUTE)
        if compute is not None:
            finished["compute"] = compute.get("sessions")
        if stopped is not None:
            finished["stopped"] = stopped
            self.say(f"stopped at step {step:,} of {self.train_cfg.iterations:,}: {stopped['reason']}")
        by_class = None
        if classes:
            finished["classes"] = classes
            if step > 0:
                by_class = self.batches.last_by_class(step - 1)
                with atomic_path(workdir / LAST_BY_CLASS) as tmp:
                    with open(tmp, "wb") as f:
                        # As 0..255 bytes: a quarter of float32 (4.3 MB at 345 x 16), exact for
                        # targets made from uint8 images or binarized.
                        np.savez(f, images=np.round(by_class[0] * 255).astype(np.uint8), labels=by_class[1])
        with atomic_path(workdir / FINISHED) as tmp:
            tmp.write_text(json.dumps(finished))
        return TrainedModel(model=self.model, step=step, last_batch=last_batch, workdir=workdir, last_by_class=by_class)


def _ended_well() -> bool:
    """In a `finally`: no exception on its way out, or the studio's cancel (a normal end)."""
    error = sys.exc_info()[1]
    return error is None or isinstance(error, Cancelled)


def _plan_line(choice: Choice, placement, train_cfg: TrainConfig, start: int, signal: str) -> str:
    """What this run will do: its step plan, the time of the (rest of the) full budget at the
    plan's measured img/s, and the stop rule."""
    left = train_cfg.iterations - start
    rate = next((r["images_per_s"] for r in choice.rows if r["name"] == choice.plan.name), None)
    eta = stopping.budget_eta(left, train_cfg.batch_size, rate) if placement.strategy is None else ""
    budget = f"{left:,} steps" if start == 0 else f"its last {left:,} of {train_cfg.iterations:,} steps"
    speed = f", {rate:,.0f} img/s" if rate and placement.strategy is None else ""
    return (
        f"plan: {choice.label()}{speed}; full budget {budget} of {train_cfg.batch_size} images"
        f"{': ' + eta if eta else ''}; {stopping.describe(train_cfg, signal, placement.workers > 1)}"
    )


def _counts(data: ImageSet, train_idx: np.ndarray) -> dict:
    """What the model saw, for a model pack's manifest: training images in all and per class."""
    out = {"images": int(len(data.images)), "train_images": int(len(train_idx))}
    if data.labels is not None and data.classes:
        seen = np.bincount(data.labels[train_idx], minlength=len(data.classes))
        out["per_category"] = {name: int(n) for name, n in zip(data.classes, seen)}
    return out


def _load_finished(model_cfg: ModelConfig, workdir: Path, batches: Batches) -> TrainedModel | None:
    """The finished model in workdir, or None when training must go on: not finished, or
    damaged so that the newest good checkpoint is older than the finished step."""
    record = checkpoints.read_finished(workdir / FINISHED)
    if record is None:
        return None
    try:
        trained = load(model_cfg, workdir)
    except QdError:
        trained = None
    if trained is None or trained.step != record["step"]:
        (workdir / FINISHED).unlink(missing_ok=True)
        return None
    if trained.last_batch is None and trained.step > 0 and len(batches.train_idx):
        if not (workdir / LAST_BATCH).exists():
            checkpoints.warn(f"{workdir / LAST_BATCH} is missing; rebuilding it from the data")
        trained.last_batch = batches(trained.step - 1)
        _save_array(workdir / LAST_BATCH, trained.last_batch)
    return trained


def load(model_cfg: ModelConfig, workdir: Path) -> TrainedModel:
    """The finished model in workdir (the newest checkpoint that restores); QdError if
    training there never completed."""
    workdir = Path(workdir)
    record = checkpoints.read_finished(workdir / FINISHED)
    if record is None:
        raise QdError(f"no finished model in {workdir}: train it first (qd train), or resume an interrupted run")
    classes = record.get("classes")
    model = Draw(model_cfg, classes=classes)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    # Adam's state is in the checkpoint too; partial lets us skip it here.
    if (
        checkpoints.restore_newest(tf.train.Checkpoint(model=model, step=step_var), workdir / CHECKPOINTS, partial=True)
        is None
    ):
        raise QdError(f"no checkpoint in {workdir / CHECKPOINTS} restores: train the model again (qd train --restart)")
    last = checkpoints.read_last_batch(workdir / LAST_BATCH, (model_cfg.height, model_cfg.width))
    by_class, kept = workdir / LAST_BY_CLASS, None
    if by_class.exists():
        with np.load(by_class) as z:
            kept = (z["images"].astype(np.float32) / np.float32(255), z["labels"])
    return TrainedModel(model=model, step=int(step_var.numpy()), last_batch=last, workdir=workdir, last_by_class=kept)


def evaluate(
    trained: TrainedModel, data: ImageSet, train_cfg: TrainConfig, batch_size: int = 500, limit: int | None = None
) -> dict:
    """The held-out bound L^x + L^z in nats per image (one-sample estimate, fixed noise), over
    the first `limit` held-out images (all when None).

    A labelled set is split per class and also gets `per_category` bounds. A conditional
    model evaluates each image under its own class, by name, so a one-category set (cat.yaml)
    can be scored by a shared model trained on many.
    """
    _check_shape(trained.model.cfg, data)
    labelled = data.labels is not None and data.classes
    _, held = split(len(data.images), train_cfg, stream_labels(data))
    held = held[:limit]
    if len(held) == 0:
        raise QdError("nothing to evaluate: train.holdout is 0, so there are no held-out images")
    # The model's class index of each of the set's classes.
    to_model = trained.model.labels(len(data.classes), data.classes) if trained.model.classes else None
    rng = np.random.default_rng([train_cfg.seed, 0xE7A1])
    sums = np.zeros((len(data.classes) if labelled else 1, 2))
    for i, lo in enumerate(range(0, len(held), batch_size)):
        rows = held[lo : lo + batch_size]
        x = targets(data, rows, rng)
        own = data.labels[rows].astype(np.int64) if labelled else np.zeros(len(rows), np.int64)
        lx, lz = trained.model.loss(x, training=False, seed=i, labels=None if to_model is None else to_model[own])
        np.add.at(sums, own, np.stack([lx.numpy(), lz.numpy()], axis=1))
    n = len(held)
    lx_sum, lz_sum = sums.sum(axis=0)
    out = {
        "bound": float(lx_sum + lz_sum) / n,
        "lx": float(lx_sum) / n,
        "lz": float(lz_sum) / n,
        "n_images": n,
        "targets": describe_targets(data),
    }
    if labelled and len(data.classes) > 1:
        counts = np.bincount(data.labels[held], minlength=len(data.classes))
        out["per_category"] = {
            name: round(float(sums[c].sum() / counts[c]), 3) for c, name in enumerate(data.classes) if counts[c]
        }
    return out


def reconstruction_error(trained: TrainedModel, data: ImageSet, train_cfg: TrainConfig, n: int = 500, seed: int = 0):
    """How close the model's reconstructions are to the drawings it reconstructs: the mean
    absolute difference of the final canvas (sigmoid, 0..1) and the drawing, per pixel, over
    up to n training and n held-out drawings, and over both together (on the 25 windmills:
    every drawing). What a GIF seeded by training drawings shows (docs/finetune.md)."""
    _check_shape(trained.model.cfg, data)
    train_idx, held = split(len(data.images), train_cfg, stream_labels(data))
    to_model = trained.model.labels(len(data.classes), data.classes) if trained.model.classes else None
    out, total, count = {}, 0.0, 0
    for name, rows in (("train", train_idx[:n]), ("held_out", held[:n])):
        if len(rows) == 0:
            out[name] = None
            continue
        x = data.as_float(rows)
        own = data.labels[rows] if data.labels is not None and data.classes else np.zeros(len(rows), np.int64)
        category = None if to_model is None else [int(c) for c in to_model[own]]
        canvas = trained.model.reconstruct(x, seed=seed, category=category).canvases[-1]
        err = np.abs(np.asarray(canvas, np.float32) - x).mean(axis=(1, 2))
        out[name] = round(float(err.mean()), 4)
        total, count = total + float(err.sum()), count + len(rows)
    out["all"] = round(total / count, 4) if count else None
    return out
