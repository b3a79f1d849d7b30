"""The cycling trainer: batches, the compiled training step, checkpoints, the held-out bound.

Everything for one model lives in the `workdir` the engine hands over:
    checkpoints/      tf.train.CheckpointManager (weights, Adam state, step, noise generator)
    last_batch.npy    the last training batch, for the "training-batch last" seed strategy
    finished.json     written atomically only once training reached train_cfg.iterations

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import checkpoints
from .atomic import atomic_path
from .config import ModelConfig, TrainConfig
from .draw import Draw
from .errors import Cancelled, InputError, QdError, TrainingError
from .interfaces import ImageSet

FINISHED = "finished.json"
LAST_BATCH = "last_batch.npy"
CHECKPOINTS = "checkpoints"


@dataclass
class TrainedModel:
    model: Draw
    step: int
    last_batch: np.ndarray | None
    workdir: Path


def split(n: int, train_cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) index arrays, sorted, deterministic from train_cfg.seed."""
    perm = np.random.default_rng([train_cfg.seed, 0x5B11]).permutation(n)
    n_held = int(round(n * train_cfg.holdout))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


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
    """Batch k of the cycling stream, computed on demand (numpy gather, no copy of the set)."""

    def __init__(self, data: ImageSet, train_idx: np.ndarray, batch_size: int, seed: int):
        self.data, self.train_idx, self.batch_size, self.seed = data, train_idx, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, cycle: int) -> np.ndarray:
        if cycle not in self._perms:
            if len(self._perms) > 4:  # a batch spans at most a few cycles; keep memory flat
                self._perms.pop(min(self._perms))
            self._perms[cycle] = np.random.default_rng([self.seed, 0xC1C1E, cycle]).permutation(self.train_idx)
        return self._perms[cycle]

    def indices(self, k: int) -> np.ndarray:
        n = len(self.train_idx)
        pos = np.arange(k * self.batch_size, (k + 1) * self.batch_size, dtype=np.int64)
        cycles, within = pos // n, pos % n
        return np.concatenate([self._perm(int(c))[within[cycles == c]] for c in np.unique(cycles)])

    def __call__(self, k) -> np.ndarray:
        k = int(k)
        # Dynamic binarization draws fresh bits every time an example is seen.
        return targets(self.data, self.indices(k), np.random.default_rng([self.seed, 0xB1, k]))

    def dataset(self, start: int, stop: int) -> tf.data.Dataset:
        h, w = self.data.images.shape[1:3]

        def load(k):
            x = tf.numpy_function(self, [k], tf.float32, stateful=False)
            x.set_shape([self.batch_size, h, w])
            return k, x

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


def cpu_has_amx_bf16() -> bool:
    """True when /proc/cpuinfo lists AMX-BF16 (Linux; other systems report False)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def cpu_count() -> int:
    """Cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_precision(train_cfg: TrainConfig) -> str:
    """train_cfg.precision with "auto" decided for this machine."""
    if train_cfg.precision != "auto":
        return train_cfg.precision
    # oneDNN runs bfloat16 matmuls on AMX about 3x faster than float32; without AMX (or on
    # a GPU, where XLA does well) the float32 XLA step is the better-measured choice.
    if cpu_has_amx_bf16() and not tf.config.list_physical_devices("GPU"):
        return "bfloat16"
    return "float32"


# Streams are at most one per core (4 streams on 2 cores were no faster than 1) and hold at
# least this many images. The floor is a guess, not a measurement: it keeps tiny batches
# (tests, toy recipes) in one stream, where splitting can only add ops.
MIN_STREAM = 50


@dataclass(frozen=True)
class StepPlan:
    """How this process runs a training step. docs/performance.md has the measurements."""

    precision: str  # "float32" or "bfloat16"
    jit_compile: bool
    streams: int  # the batch is split into this many independent halves (quarters, ...)

    def describe(self) -> str:
        if self.jit_compile:
            return f"{self.precision}, XLA"
        return f"{self.precision} matmuls, {self.streams} stream{'s' if self.streams > 1 else ''}"


def plan_step(train_cfg: TrainConfig, configure_threads: bool = True) -> StepPlan:
    """Decide precision, compilation and streams for this machine and process.

    float32: the whole step compiled by XLA, TensorFlow's default threads.
    bfloat16: XLA's CPU backend does bfloat16 matmuls no faster than float32, but
    TensorFlow's own (oneDNN) kernels use AMX, so the step runs uncompiled. Then one
    intra-op thread and one inter-op thread per core, with the batch split into one
    independent stream per core, keeps every core busy; TensorFlow's default (every op
    spread over all cores) leaves them waiting on each other's small ops. Threads can only
    be set before TensorFlow starts in a process; if it has started, the step uses the
    threads it finds and one stream unless those are already one intra-op thread.
    """
    precision = resolve_precision(train_cfg)
    if precision == "float32":
        return StepPlan("float32", True, 1)
    cores = cpu_count()
    if configure_threads and cores > 1:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(cores)
        except RuntimeError:
            pass  # TensorFlow already started in this process; its threads stay
    streams = 1
    if tf.config.threading.get_intra_op_parallelism_threads() == 1:
        inter = tf.config.threading.get_inter_op_parallelism_threads() or cores
        streams = max(1, min(inter, train_cfg.batch_size // MIN_STREAM))
    return StepPlan("bfloat16", False, streams)


def _split_sizes(batch: int, streams: int) -> list[int]:
    return [batch // streams + (1 if i < batch % streams else 0) for i in range(streams)]


def make_train_step(model: Draw, opt: Adam, train_cfg: TrainConfig, plan: StepPlan | None = None):
    """The compiled step: loss, gradient, global-norm clip, guarded Adam update.

    Returns mean L^x, mean L^z, the gradient norm and whether they were finite. A non-finite
    step changes nothing, so the model in memory stays the last good one too. The streams
    of a plan only reorder the sums: the loss and gradient are those of the whole batch.
    """
    plan = plan or plan_step(train_cfg, configure_threads=False)
    variables = model.weights

    @tf.function(jit_compile=plan.jit_compile, reduce_retracing=True, autograph=False)
    def step(x, k):
        seed = tf.stack([tf.constant(train_cfg.seed, tf.int64), k])
        eps = tf.random.stateless_normal(model.noise_shape(tf.shape(x)[0]), seed=seed)
        batch = x.shape[0]
        streams = min(plan.streams, batch) if batch else 1
        with tf.GradientTape() as tape:
            if streams > 1:
                sizes = _split_sizes(batch, streams)
                parts = [model.loss_with_noise(xs, es, plan.precision)
                         for xs, es in zip(tf.split(x, sizes, 0), tf.split(eps, sizes, 1))]
                lx, lz = tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)
            else:
                lx, lz = model.loss_with_noise(x, eps, plan.precision)
            lx, lz = tf.reduce_mean(lx), tf.reduce_mean(lz)
            loss = lx + lz
        grads = tape.gradient(loss, variables)
        gnorm = tf.linalg.global_norm(grads)
        ok = tf.math.is_finite(loss) & tf.math.is_finite(gnorm)
        if train_cfg.clip_norm > 0:
            scale = tf.minimum(1.0, train_cfg.clip_norm / tf.maximum(gnorm, 1e-12))
            grads = [g * scale for g in grads]
        opt.apply(grads, variables, learning_rate(k, train_cfg), ok)
        return lx, lz, gnorm, ok

    return step


def new_training(model_cfg: ModelConfig, train_cfg: TrainConfig, plan: StepPlan | None = None):
    """(plan, model, optimizer, compiled step) for a fresh run, built in the order that
    matters: the plan first, because TensorFlow's threads can only be set before the model's
    variables start it."""
    plan = plan or plan_step(train_cfg)
    model = Draw(model_cfg, seed=train_cfg.seed)
    opt = Adam(model.weights, train_cfg.beta1)
    return plan, model, opt, make_train_step(model, opt, train_cfg, plan)


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
    train_idx, _ = split(len(data.images), train_cfg)
    batches = Batches(data, train_idx, train_cfg.batch_size, train_cfg.seed)
    finished = _load_finished(model_cfg, workdir, batches)
    if finished is not None:
        return finished
    workdir.mkdir(parents=True, exist_ok=True)
    if len(train_idx) == 0:
        raise InputError(f"{data.name}: no training images left after holding out {train_cfg.holdout:.0%}")

    plan, model, opt, train_step = new_training(model_cfg, train_cfg)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    ckpt, manager = _checkpointing(model, opt, step_var, workdir)
    tried = checkpoints.candidates(workdir / CHECKPOINTS)
    restored = checkpoints.restore_newest(ckpt, workdir / CHECKPOINTS)
    if tried and restored is None:  # every one was damaged, and a failed restore writes some variables
        plan, model, opt, train_step = new_training(model_cfg, train_cfg, plan)
        step_var = tf.Variable(0, dtype=tf.int64, name="step")
        ckpt, manager = _checkpointing(model, opt, step_var, workdir)
    start = int(step_var.numpy())
    last_saved = start if restored else None
    last_batch = None

    def save():
        checkpoints.save(manager, int(step_var.numpy()), last_saved)
        if last_batch is not None:
            _save_array(workdir / LAST_BATCH, np.asarray(last_batch))

    with _Progress(train_cfg.iterations, start, quiet, f"training {data.name} ({plan.describe()})") as progress:
        for k, x in batches.dataset(start, train_cfg.iterations):
            lx, lz, gnorm, ok = (v.numpy() for v in train_step(x, k))
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
    with atomic_path(workdir / FINISHED) as tmp:
        tmp.write_text(json.dumps({"step": int(step_var.numpy()), "model": model_cfg.as_dict(), "train": train_cfg.as_dict()}))
    return TrainedModel(model=model, step=int(step_var.numpy()), last_batch=last_batch, workdir=workdir)


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
    model = Draw(model_cfg)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    # Adam's state is in the checkpoint too; partial lets us skip it here.
    if checkpoints.restore_newest(tf.train.Checkpoint(model=model, step=step_var), workdir / CHECKPOINTS, partial=True) is None:
        raise QdError(f"no checkpoint in {workdir / CHECKPOINTS} restores: train the model again (qd train --restart)")
    last = checkpoints.read_last_batch(workdir / LAST_BATCH, (model_cfg.height, model_cfg.width))
    return TrainedModel(model=model, step=int(step_var.numpy()), last_batch=last, workdir=workdir)


def evaluate(trained: TrainedModel, data: ImageSet, train_cfg: TrainConfig, batch_size: int = 500) -> dict:
    """The held-out bound L^x + L^z in nats per image (one-sample estimate, fixed noise)."""
    _check_shape(trained.model.cfg, data)
    _, held = split(len(data.images), train_cfg)
    if len(held) == 0:
        raise QdError("nothing to evaluate: train.holdout is 0, so there are no held-out images")
    rng = np.random.default_rng([train_cfg.seed, 0xE7A1])
    lx_sum = lz_sum = 0.0
    for i, lo in enumerate(range(0, len(held), batch_size)):
        x = targets(data, held[lo:lo + batch_size], rng)
        lx, lz = trained.model.loss(x, training=False, seed=i)
        lx_sum += float(tf.reduce_sum(lx))
        lz_sum += float(tf.reduce_sum(lz))
    n = len(held)
    return {"bound": (lx_sum + lz_sum) / n, "lx": lx_sum / n, "lz": lz_sum / n, "n_images": n, "targets": describe_targets(data)}
