"""The cycling trainer: batches, the compiled training step, checkpoints, the held-out bound.

Everything for one model lives in the `workdir` the engine hands over:
    checkpoints/      tf.train.CheckpointManager (weights, Adam state, step, noise generator)
    last_batch.npy    the last training batch, for the "training-batch last" seed strategy
    finished.json     written atomically only once training reached train_cfg.iterations
    tensorboard/      TensorBoard summaries (qdcore/summaries.py)
Under a multi-worker strategy only the chief writes any of these (qdcore/distribute.py).

Batch k of a run is a pure function of (train_cfg.seed, k): the training indices are laid
end to end as one freshly shuffled permutation per cycle, and batch k is the k-th run of
batch_size positions in that stream. Every example is seen once per cycle (pitfall 8), and a
resumed run picks up exactly where it stopped.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import optimizer
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
        return self.rows(k, 0, self.batch_size)

    def rows(self, k, lo: int, hi: int) -> np.ndarray:
        """Rows lo:hi of batch k, exactly as they are in the whole batch: a replica of a
        distributed run loads only its own part (qdcore/distribute.py)."""
        k, lo, hi = int(k), int(lo), int(hi)
        index = self.indices(k)[lo:hi]
        # Dynamic binarization draws fresh bits every time an example is seen; the bits of
        # the whole batch are drawn and the part's taken, so a part matches the whole.
        rng = np.random.default_rng([self.seed, 0xB1, k])
        if self.data.binarize == "dynamic":
            u = rng.random((self.batch_size,) + self.data.images.shape[1:], dtype=np.float32)[lo:hi]
            return (u < self.data.as_float(index)).astype(np.float32)
        return targets(self.data, index, rng)

    def dataset(self, start: int, stop: int) -> tf.data.Dataset:
        h, w = self.data.images.shape[1:3]

        def load(k):
            x = tf.numpy_function(self, [k], tf.float32, stateful=False)
            x.set_shape([self.batch_size, h, w])
            return k, x

        return tf.data.Dataset.range(start, stop).map(load).prefetch(2)


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


def step_noise(model: Draw, train_cfg: TrainConfig, k, batch_size: int):
    """The posterior noise of global batch k, (T, batch_size, z): a function of (seed, k), so
    a replica holding rows lo:hi of the batch takes eps[:, lo:hi] and sees the same noise
    its rows would see in a one-process run."""
    seed = tf.stack([tf.constant(train_cfg.seed, tf.int64), tf.cast(k, tf.int64)])
    return tf.random.stateless_normal(model.noise_shape(batch_size), seed=seed)


def batch_sums(model: Draw, batch: dict, eps, plan: StepPlan):
    """Summed L^x and L^z over `batch` (a dict: "x" the targets; room for more inputs).

    The streams of a plan only reorder the sums: they are those of the whole batch."""
    x = batch["x"]
    n = x.shape[0]
    streams = min(plan.streams, n) if n else 1
    if streams > 1:
        sizes = _split_sizes(n, streams)
        parts = [model.loss_with_noise(xs, es, plan.precision) for xs, es in zip(tf.split(x, sizes, 0), tf.split(eps, sizes, 1))]
        lx, lz = tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)
    else:
        lx, lz = model.loss_with_noise(x, eps, plan.precision)
    return tf.reduce_sum(lx), tf.reduce_sum(lz)


def clip(grads, loss, train_cfg: TrainConfig):
    """(clipped grads, global norm, finite?) for the gradient of the whole (global) batch."""
    gnorm = tf.linalg.global_norm(grads)
    ok = tf.math.is_finite(loss) & tf.math.is_finite(gnorm)
    if train_cfg.clip_norm > 0:
        scale = tf.minimum(1.0, train_cfg.clip_norm / tf.maximum(gnorm, 1e-12))
        grads = [g * scale for g in grads]
    return grads, gnorm, ok


def make_train_step(model: Draw, opt, train_cfg: TrainConfig, plan: StepPlan | None = None):
    """The single-device step, compiled whole: loss, gradient, global-norm clip, guarded Adam update.

    step(batch, k) takes the batch as a dict ({"x": targets}; a bare tensor is taken as x).
    Returns mean L^x, mean L^z, the gradient norm and whether they were finite. A non-finite
    step changes nothing, so the model in memory stays the last good one too. The strategy
    step (qdcore/distribute.py) is built from the same pieces.
    """
    plan = plan or plan_step(train_cfg, configure_threads=False)
    variables = model.weights

    def update(grads):
        opt.apply(grads, variables)
        return tf.constant(True)

    @tf.function(jit_compile=plan.jit_compile, reduce_retracing=True, autograph=False)
    def step(batch, k):
        batch = batch if isinstance(batch, dict) else {"x": batch}
        n = tf.shape(batch["x"])[0]
        eps = step_noise(model, train_cfg, k, n)
        n = tf.cast(n, tf.float32)
        with tf.GradientTape() as tape:
            lx, lz = batch_sums(model, batch, eps, plan)
            lx, lz = lx / n, lz / n
            loss = lx + lz
        grads, gnorm, ok = clip(tape.gradient(loss, variables), loss, train_cfg)
        tf.cond(ok, lambda: update(grads), lambda: tf.constant(False))
        return lx, lz, gnorm, ok

    return step


def new_training(model_cfg: ModelConfig, train_cfg: TrainConfig, plan: StepPlan | None = None, strategy=None):
    """(plan, model, optimizer, compiled step) for a fresh run, built in the order that
    matters: the plan first, because TensorFlow's threads can only be set before the model's
    variables start it. Under a tf.distribute strategy the model and optimizer are created
    in its scope and the step is the strategy's (qdcore/distribute.py)."""
    plan = plan or plan_step(train_cfg)
    if strategy is None:
        model = Draw(model_cfg, seed=train_cfg.seed)
        opt = optimizer.make(train_cfg, model.weights)
        return plan, model, opt, make_train_step(model, opt, train_cfg, plan)
    from .distribute import make_strategy_step

    with strategy.scope():
        model = Draw(model_cfg, seed=train_cfg.seed)
        opt = optimizer.make(train_cfg, model.weights)
    return plan, model, opt, make_strategy_step(model, opt, train_cfg, plan, strategy)


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


def _checkpointing(model: Draw, opt, step_var: tf.Variable, folder: Path):
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=step_var)
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
    if (workdir / FINISHED).exists() and not restart:
        return load(model_cfg, workdir)
    from . import distribute

    # The plan first (TensorFlow's threads are set before anything starts it), then the
    # strategy (a multi-worker one must also come before TensorFlow's runtime starts).
    plan = plan_step(train_cfg)
    placement = distribute.choose(train_cfg)
    try:
        return _train(model_cfg, train_cfg, data, workdir, plan, placement, restart, quiet, on_step)
    finally:
        placement.cleanup()


def _train(model_cfg, train_cfg, data, workdir: Path, plan: StepPlan, placement, restart: bool, quiet: bool, on_step) -> TrainedModel:
    from . import distribute
    from .summaries import Summaries

    chief = placement.chief
    if restart and chief:
        shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)
        for name in (FINISHED, LAST_BATCH):
            (workdir / name).unlink(missing_ok=True)
    _check_shape(model_cfg, data)
    distribute.check_batch(train_cfg, placement)
    train_idx, _ = split(len(data.images), train_cfg)
    if len(train_idx) == 0:
        raise InputError(f"{data.name}: no training images left after holding out {train_cfg.holdout:.0%}")
    if chief:
        workdir.mkdir(parents=True, exist_ok=True)

    plan, model, opt, train_step = new_training(model_cfg, train_cfg, plan, placement.strategy)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    ckpt, manager = _checkpointing(model, opt, step_var, placement.checkpoint_dir(workdir))
    if manager.latest_checkpoint:
        _restore(ckpt, model, opt, step_var, manager.latest_checkpoint)
    last_saved = int(step_var.numpy()) if manager.latest_checkpoint else None
    multi = placement.workers > 1

    def kept() -> str:
        where = f"in {workdir}" if chief else "on the chief"
        return f"the last good checkpoint (step {last_saved}) is kept {where}" if last_saved is not None else "no checkpoint had been saved yet"

    if multi:
        try:
            distribute.sync_from_chief(placement, model.weights + list(opt.variables) + [step_var])
        except tf.errors.OpError as e:
            raise distribute.lost_peer(e, int(step_var.numpy()), kept()) from e
        last_saved = int(step_var.numpy()) or last_saved
    start = int(step_var.numpy())
    batches = Batches(data, train_idx, train_cfg.batch_size, train_cfg.seed)
    schedule = optimizer.WarmupCosine.from_config_of(train_cfg)
    summaries = Summaries(workdir, chief, start)
    if placement.strategy is None:
        steps = ((int(k), lambda x=x, k=k: train_step(x, k)) for k, x in batches.dataset(start, train_cfg.iterations))
    else:
        dist = distribute.dataset(placement, batches, start, train_cfg.iterations)
        steps = ((start + i, lambda b=b: train_step(b)) for i, b in enumerate(dist))

    def save(step: int):
        manager.save(checkpoint_number=step)
        if chief and step > 0:
            _save_array(workdir / LAST_BATCH, batches(step - 1))
            summaries.samples(step, model)

    where = "; ".join(filter(None, [plan.describe(), placement.describe()]))
    step = start
    try:
        with _Progress(train_cfg.iterations, start, quiet, f"training {data.name} ({where})") as progress:
            for k, run in steps:
                lx, lz, gnorm, ok = (v.numpy() for v in run())
                step = k + 1
                if not ok:
                    applied = "training stopped there" if placement.strategy is not None else "the update was not applied"
                    raise TrainingError(
                        f"non-finite loss at step {step} (L^x={lx}, L^z={lz}, gradient norm={gnorm}); "
                        f"{applied} and {kept()}. Try a lower learning_rate or clip_norm."
                    )
                step_var.assign(step)
                progress.update(step, float(lx), float(lz))
                summaries.scalars(step, float(lx), float(lz), float(gnorm), lambda: float(schedule(step - 1)))
                if on_step is not None and on_step(step, train_cfg.iterations, float(lx), float(lz)):
                    save(step)
                    raise Cancelled(f"training stopped at step {step} of {train_cfg.iterations}; the checkpoint is kept "
                                    f"in {workdir} and the next run resumes from it")
                if step % train_cfg.checkpoint_every == 0 or step == train_cfg.iterations:
                    save(step)
                    last_saved = step
        if last_saved != int(step_var.numpy()) or manager.latest_checkpoint is None:
            save(int(step_var.numpy()))
    except tf.errors.OpError as e:
        if not multi:
            raise
        raise distribute.lost_peer(e, step + 1, kept()) from e
    finally:
        summaries.close()
    step = int(step_var.numpy())
    if not chief:
        return TrainedModel(model=model, step=step, last_batch=None, workdir=workdir)
    last_batch = np.load(workdir / LAST_BATCH) if (workdir / LAST_BATCH).exists() else None
    with atomic_path(workdir / FINISHED) as tmp:
        tmp.write_text(json.dumps({"step": step, "model": model_cfg.as_dict(), "train": train_cfg.as_dict()}))
    return TrainedModel(model=model, step=step, last_batch=last_batch, workdir=workdir)


def load(model_cfg: ModelConfig, workdir: Path) -> TrainedModel:
    """The finished model in workdir; QdError if training there never completed."""
    workdir = Path(workdir)
    manager_dir = workdir / CHECKPOINTS
    if not (workdir / FINISHED).exists() or tf.train.latest_checkpoint(str(manager_dir)) is None:
        raise QdError(f"no finished model in {workdir}: train it first (qd train), or resume an interrupted run")
    model = Draw(model_cfg)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    # Adam's state is in the checkpoint too; expect_partial() lets us skip it here.
    tf.train.Checkpoint(model=model, step=step_var).restore(tf.train.latest_checkpoint(str(manager_dir))).expect_partial()
    last = workdir / LAST_BATCH
    return TrainedModel(model=model, step=int(step_var.numpy()), last_batch=np.load(last) if last.exists() else None, workdir=workdir)


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
