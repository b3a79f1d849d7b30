"""The cycling trainer: batches, the compiled training step, checkpoints, the held-out bound.

Everything for one model lives in the `workdir` the engine hands over:
    checkpoints/      tf.train.CheckpointManager (weights, Adam state, step, noise generator)
    last_batch.npy    the last training batch, for the "training-batch last" seed strategy
    finished.json     written atomically only once training reached train_cfg.iterations
                      (with the class names of a conditional model)
    last_by_class.npz a conditional model's last training images of each class

Batch k of a run is a pure function of (train_cfg.seed, k): the training indices are laid
end to end as one freshly shuffled permutation per cycle, and batch k is the k-th run of
batch_size positions in that stream. Every example is seen once per cycle (pitfall 8), and a
resumed run picks up exactly where it stopped.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import checkpoints
from .atomic import atomic_path
from .conditioning import conditional_classes
from .config import ModelConfig, TrainConfig
from .draw import Draw
from .errors import Cancelled, InputError, QdError, TrainingError
from .interfaces import ImageSet
from .plan import Choice, StepPlan
from . import plan as step_plans
from .mixing import balanced_groups, cycle_length, cycle_order, last_by_class, split, stream_labels
from .models import CHECKPOINTS, FINISHED

LAST_BATCH = "last_batch.npy"
LAST_BY_CLASS = "last_by_class.npz"
KEEP_PER_CLASS = 16


@dataclass
class TrainedModel:
    model: Draw
    step: int
    last_batch: np.ndarray | None
    workdir: Path
    # A conditional model's last training images of each class: (images, labels), or None.
    last_by_class: tuple[np.ndarray, np.ndarray] | None = None

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
    A labelled set is mixed as its `mix` says (qdcore/mixing.py) and batches carry labels."""

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
        k = int(k)
        # Dynamic binarization draws fresh bits every time an example is seen.
        return targets(self.data, self.indices(k), np.random.default_rng([self.seed, 0xB1, k]))

    def labels_of(self, k) -> np.ndarray:
        """Batch k's class labels (int32; zeros for an unlabelled or one-class set)."""
        if self.labels is None:
            return np.zeros(self.batch_size, np.int32)
        return self.labels[self.indices(int(k))].astype(np.int32)

    def last_by_class(self, last_k: int, keep: int = KEEP_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
        """Each class's last `keep` training images up to batch last_k, and their labels."""
        rows, labels = last_by_class(self.indices, self.labels, len(self.data.classes), last_k,
                                     self.batch_size, self.cycle_len, keep)
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


class Adam(tf.Module):
    """Adam (Kingma & Ba) with its state in tf.Variables, so it checkpoints with the model and
    its update compiles into the same XLA cluster as the gradient."""

    def __init__(self, variables: list[tf.Variable], beta1: float, beta2: float = 0.999, epsilon: float = 1e-8):
        super().__init__(name="adam")
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.iterations = tf.Variable(0, dtype=tf.int64, name="iterations")
        self.m = [tf.Variable(tf.zeros_like(v), name="m") for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), name="v") for v in variables]

    def apply(self, grads, variables, lr, ok):
        """One update; where `ok` is False nothing (weights or moments) changes."""
        t = tf.cast(self.iterations + 1, tf.float32)
        lr_t = lr * tf.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        for g, var, m, v in zip(grads, variables, self.m, self.v):
            m_new = self.beta1 * m + (1 - self.beta1) * g
            v_new = self.beta2 * v + (1 - self.beta2) * tf.square(g)
            var_new = var - lr_t * m_new / (tf.sqrt(v_new) + self.epsilon)
            m.assign(tf.where(ok, m_new, m))
            v.assign(tf.where(ok, v_new, v))
            var.assign(tf.where(ok, var_new, var))
        self.iterations.assign_add(tf.cast(ok, tf.int64))


def learning_rate(step, train_cfg: TrainConfig):
    """Linear warmup, then the schedule named by train_cfg.lr_schedule (step is a tensor).

    The schedule is a function of the step alone, so a resumed run continues it exactly.
    """
    step = tf.cast(step, tf.float32)
    lr = train_cfg.learning_rate
    total = float(max(train_cfg.iterations, 1))
    if train_cfg.lr_schedule == "cosine":
        progress = tf.minimum(step / total, 1.0)
        floor = train_cfg.lr_final_fraction
        lr = lr * (floor + (1 - floor) * 0.5 * (1 + tf.cos(math.pi * progress)))
    warmup = min(train_cfg.warmup, train_cfg.iterations // 10)
    if warmup > 0:
        lr = lr * tf.minimum(1.0, (step + 1) / warmup)
    return lr


def _labels(x, y):
    """The batch's class labels for a conditional model; zeros (ignored) for an unconditional one."""
    return tf.zeros(tf.shape(x)[:1], tf.int32) if y is None else y


def _split_sizes(batch: int, streams: int) -> list[int]:
    return [batch // streams + (1 if i < batch % streams else 0) for i in range(streams)]


def make_train_step(model: Draw, opt: Adam, train_cfg: TrainConfig, plan: StepPlan | None = None):
    """The compiled step: loss, gradient, global-norm clip, guarded Adam update.

    Returns mean L^x, mean L^z, the gradient norm and whether they were finite. A non-finite
    step changes nothing, so the model in memory stays the last good one too. The streams
    of a plan only reorder the sums: the loss and gradient are those of the whole batch.
    Without a plan: train_cfg.precision's plain step (float32: XLA; bfloat16: uncompiled).
    """
    if plan is None:
        precision = "bfloat16" if train_cfg.precision == "bfloat16" else "float32"
        plan = StepPlan(precision, precision == "float32")
    variables = model.weights
    device = "/GPU:0" if plan.device == "gpu" else "/CPU:0"

    def noise(x, k):
        seed = tf.stack([tf.constant(train_cfg.seed, tf.int64), k])
        return tf.random.stateless_normal(model.noise_shape(tf.shape(x)[0]), seed=seed)

    def update(lx, lz, grads, k):
        gnorm = tf.linalg.global_norm(grads)
        ok = tf.math.is_finite(lx + lz) & tf.math.is_finite(gnorm)
        if train_cfg.clip_norm > 0:
            scale = tf.minimum(1.0, train_cfg.clip_norm / tf.maximum(gnorm, 1e-12))
            grads = [g * scale for g in grads]
        opt.apply(grads, variables, learning_rate(k, train_cfg), ok)
        return lx, lz, gnorm, ok

    if plan.jit_compile and plan.streams > 1:
        # One XLA cluster per stream: the uncompiled outer graph runs them side by side on
        # the inter-op threads, so each core runs few, large kernels. Each returns its
        # part's sums and its part of the whole batch's mean-loss gradient.
        @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
        def part(xs, es, ys, inv_batch):
            with tf.GradientTape() as tape:
                lx, lz = model.loss_with_noise(xs, es, plan.precision, ys)
                lx, lz = tf.reduce_sum(lx), tf.reduce_sum(lz)
                loss = (lx + lz) * inv_batch
            return lx, lz, tape.gradient(loss, variables)

        compiled_update = tf.function(update, jit_compile=True, autograph=False)

        @tf.function(jit_compile=False, reduce_retracing=True, autograph=False)
        def step(x, k, y=None):
            with tf.device(device):
                y = _labels(x, y)
                batch = x.shape[0]
                sizes = _split_sizes(batch, min(plan.streams, batch))
                inv = tf.constant(1.0 / batch)
                parts = [part(xs, es, ys, inv) for xs, es, ys in
                         zip(tf.split(x, sizes, 0), tf.split(noise(x, k), sizes, 1), tf.split(y, sizes, 0))]
                grads = [tf.add_n(list(g)) for g in zip(*[p[2] for p in parts])]
                return compiled_update(tf.add_n([p[0] for p in parts]) * inv, tf.add_n([p[1] for p in parts]) * inv, grads, k)
        return step

    @tf.function(jit_compile=plan.jit_compile, reduce_retracing=True, autograph=False)
    def step(x, k, y=None):
        with tf.device(device):
            y = _labels(x, y)
            eps = noise(x, k)
            batch = x.shape[0]
            streams = min(plan.streams, batch) if batch else 1
            with tf.GradientTape() as tape:
                if streams > 1:
                    sizes = _split_sizes(batch, streams)
                    parts = [model.loss_with_noise(xs, es, plan.precision, ys)
                             for xs, es, ys in zip(tf.split(x, sizes, 0), tf.split(eps, sizes, 1), tf.split(y, sizes, 0))]
                    lx, lz = tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)
                else:
                    lx, lz = model.loss_with_noise(x, eps, plan.precision, y)
                lx, lz = tf.reduce_mean(lx), tf.reduce_mean(lz)
                loss = lx + lz
            return update(lx, lz, tape.gradient(loss, variables), k)

    return step


def plan_step(model_cfg: ModelConfig, train_cfg: TrainConfig, say=lambda m: None) -> Choice:
    """This run's step plan (plan.choose: forced, cached or measured) applied to this process."""
    choice = step_plans.apply(step_plans.choose(model_cfg, train_cfg, say=say))
    if choice.note:
        say(choice.note)
    return choice


def new_training(model_cfg: ModelConfig, train_cfg: TrainConfig, plan: StepPlan | Choice | None = None,
                 say=lambda m: None, classes=None):
    """(plan choice, model, optimizer, compiled step) for a fresh run, built in the order that
    matters: the plan first, because TensorFlow's threads can only be set before the model's
    variables start it. `classes` (2 or more) makes the model class-conditional."""
    if plan is None:
        choice = plan_step(model_cfg, train_cfg, say)
    else:
        choice = plan if isinstance(plan, Choice) else Choice(plan, "given")
    with tf.device("/GPU:0" if choice.plan.device == "gpu" else "/CPU:0"):
        model = Draw(model_cfg, seed=train_cfg.seed, classes=classes)
        opt = Adam(model.weights, train_cfg.beta1)
    return choice, model, opt, make_train_step(model, opt, train_cfg, choice.plan)


class _Progress:
    """A rich progress bar with L^x, L^z and ETA; does nothing when quiet."""

    def __init__(self, total: int, start: int, quiet: bool, label: str):
        self.bar = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("L^x {task.fields[lx]:8.2f}  L^z {task.fields[lz]:6.2f}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
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


def _checkpointing(model: Draw, opt: Adam, step_var: tf.Variable, workdir: Path):
    ckpt = tf.train.Checkpoint(model=model, opt=opt, step=step_var)
    return ckpt, tf.train.CheckpointManager(ckpt, str(workdir / CHECKPOINTS), max_to_keep=2)


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _check_shape(model_cfg: ModelConfig, data: ImageSet) -> None:
    shape = tuple(data.images.shape[1:])
    if data.images.ndim != 3 or shape != (model_cfg.height, model_cfg.width):
        raise InputError(
            f"{data.name}: images are {tuple(data.images.shape)}, the model wants (N, {model_cfg.height}, {model_cfg.width})"
        )


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: ImageSet, workdir: Path, *,
          restart: bool = False, quiet: bool = False, on_step=None) -> TrainedModel:
    """Train to train_cfg.iterations, resuming from workdir's checkpoints if present.

    on_step(step, total, lx, lz), when given, is called after every step (the studio's
    progress bar); returning True stops training: a checkpoint is saved and Cancelled raised.

    A workdir holding a finished model is loaded and nothing is trained. restart=True
    discards workdir's checkpoints, last batch and finished marker first.
    """
    workdir = Path(workdir)
    if restart:
        shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)
        for name in (FINISHED, LAST_BATCH):
            (workdir / name).unlink(missing_ok=True)
    _check_shape(model_cfg, data)
    classes = conditional_classes(data.classes)
    train_idx, _ = split(len(data.images), train_cfg, stream_labels(data))
    batches = Batches(data, train_idx, train_cfg.batch_size, train_cfg.seed)
    done = _load_finished(model_cfg, workdir, batches)
    if done is not None:
        return done
    workdir.mkdir(parents=True, exist_ok=True)
    if len(train_idx) == 0:
        raise InputError(f"{data.name}: no training images left after holding out {train_cfg.holdout:.0%}")

    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    choice, model, opt, train_step = new_training(model_cfg, train_cfg, say=say, classes=classes)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    ckpt, manager = _checkpointing(model, opt, step_var, workdir)
    tried = checkpoints.candidates(workdir / CHECKPOINTS)
    restored = checkpoints.restore_newest(ckpt, workdir / CHECKPOINTS)
    if tried and restored is None:  # every one was damaged, and a failed restore writes some variables
        choice, model, opt, train_step = new_training(model_cfg, train_cfg, choice, classes=classes)
        step_var = tf.Variable(0, dtype=tf.int64, name="step")
        ckpt, manager = _checkpointing(model, opt, step_var, workdir)
    start = int(step_var.numpy())
    last_saved = start if restored else None
    last_batch = None

    def save():
        checkpoints.save(manager, int(step_var.numpy()), last_saved)
        if last_batch is not None:
            _save_array(workdir / LAST_BATCH, np.asarray(last_batch))

    with _Progress(train_cfg.iterations, start, quiet, f"training {data.name} ({choice.label()})") as progress:
        for k, x, y in batches.dataset(start, train_cfg.iterations):
            lx, lz, gnorm, ok = (v.numpy() for v in train_step(x, k, y))
            if not ok:
                kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved is not None else "no checkpoint had been saved yet"
                raise TrainingError(
                    f"non-finite loss at step {int(k) + 1} (L^x={lx}, L^z={lz}, gradient norm={gnorm}); "
                    f"the update was not applied and {kept} in {workdir}. "
                    "Try a lower learning_rate or clip_norm."
                )
            step_var.assign(k + 1)
            last_batch = x
            step = int(k) + 1
            progress.update(step, float(lx), float(lz))
            if on_step is not None and on_step(step, train_cfg.iterations, float(lx), float(lz)):
                save()
                raise Cancelled(f"training stopped at step {step} of {train_cfg.iterations}; the checkpoint is kept "
                                f"in {workdir} and the next run resumes from it")
            if step % train_cfg.checkpoint_every == 0 or step == train_cfg.iterations:
                save()
                last_saved = step
    if last_saved != int(step_var.numpy()):
        save()
    if last_batch is None and int(step_var.numpy()) > 0:
        # Nothing trained in this run (it resumed at the end): rebuild the batch rather than
        # trust a last_batch.npy that a crash may have left from an older checkpoint.
        last_batch = batches(int(step_var.numpy()) - 1)
        _save_array(workdir / LAST_BATCH, last_batch)
    last_batch = None if last_batch is None else np.asarray(last_batch)
    finished = {"step": int(step_var.numpy()), "model": model_cfg.as_dict(), "train": train_cfg.as_dict(), "dataset": data.name}
    by_class = None
    if classes:
        finished["classes"] = classes
        if finished["step"] > 0:
            by_class = batches.last_by_class(finished["step"] - 1)
            with atomic_path(workdir / LAST_BY_CLASS) as tmp:
                with open(tmp, "wb") as f:
                    # As 0..255 bytes: a quarter of float32 (4.3 MB at 345 x 16), exact for
                    # targets made from uint8 images or binarized.
                    np.savez(f, images=np.round(by_class[0] * 255).astype(np.uint8), labels=by_class[1])
    with atomic_path(workdir / FINISHED) as tmp:
        tmp.write_text(json.dumps(finished))
    return TrainedModel(model=model, step=int(step_var.numpy()), last_batch=last_batch, workdir=workdir,
                        last_by_class=by_class)


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
    if checkpoints.read_finished(workdir / FINISHED) is None:
        raise QdError(f"no finished model in {workdir}: train it first (qd train), or resume an interrupted run")
    classes = json.loads((workdir / FINISHED).read_text()).get("classes")
    model = Draw(model_cfg, classes=classes)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    # Adam's state is in the checkpoint too; partial lets us skip it here.
    if checkpoints.restore_newest(tf.train.Checkpoint(model=model, step=step_var), workdir / CHECKPOINTS, partial=True) is None:
        raise QdError(f"no checkpoint in {workdir / CHECKPOINTS} restores: train the model again (qd train --restart)")
    last = checkpoints.read_last_batch(workdir / LAST_BATCH, (model_cfg.height, model_cfg.width))
    by_class, kept = workdir / LAST_BY_CLASS, None
    if by_class.exists():
        with np.load(by_class) as z:
            kept = (z["images"].astype(np.float32) / np.float32(255), z["labels"])
    return TrainedModel(model=model, step=int(step_var.numpy()), last_batch=last, workdir=workdir, last_by_class=kept)


def evaluate(trained: TrainedModel, data: ImageSet, train_cfg: TrainConfig, batch_size: int = 500) -> dict:
    """The held-out bound L^x + L^z in nats per image (one-sample estimate, fixed noise).

    A labelled set is split per class and also gets `per_category` bounds. A conditional
    model evaluates each image under its own class, by name, so a one-category set (cat.yaml)
    can be scored by a shared model trained on many.
    """
    _check_shape(trained.model.cfg, data)
    labelled = data.labels is not None and data.classes
    _, held = split(len(data.images), train_cfg, stream_labels(data))
    if len(held) == 0:
        raise QdError("nothing to evaluate: train.holdout is 0, so there are no held-out images")
    # The model's class index of each of the set's classes.
    to_model = trained.model.labels(len(data.classes), data.classes) if trained.model.classes else None
    rng = np.random.default_rng([train_cfg.seed, 0xE7A1])
    sums = np.zeros((len(data.classes) if labelled else 1, 2))
    for i, lo in enumerate(range(0, len(held), batch_size)):
        rows = held[lo:lo + batch_size]
        x = targets(data, rows, rng)
        own = data.labels[rows].astype(np.int64) if labelled else np.zeros(len(rows), np.int64)
        lx, lz = trained.model.loss(x, training=False, seed=i, labels=None if to_model is None else to_model[own])
        np.add.at(sums, own, np.stack([lx.numpy(), lz.numpy()], axis=1))
    n = len(held)
    lx_sum, lz_sum = sums.sum(axis=0)
    out = {"bound": float(lx_sum + lz_sum) / n, "lx": float(lx_sum) / n, "lz": float(lz_sum) / n, "n_images": n, "targets": describe_targets(data)}
    if labelled and len(data.classes) > 1:
        counts = np.bincount(data.labels[held], minlength=len(data.classes))
        out["per_category"] = {name: round(float(sums[c].sum() / counts[c]), 3)
                               for c, name in enumerate(data.classes) if counts[c]}
    return out
