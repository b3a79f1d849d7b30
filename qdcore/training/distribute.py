"""tf.distribute for the trainer: which strategy runs the step, who writes, how a batch is split.

`train.distribute` (config.py) picks the strategy:
    none          today's single-device step (train.make_train_step), compiled whole
    auto          MirroredStrategy when TensorFlow sees more than one GPU, else `none`
    mirrored      MirroredStrategy over this machine's devices
    multi-worker  MultiWorkerMirroredStrategy configured by the standard TF_CONFIG variable

Under a strategy, following TensorFlow's guide to custom training loops:
- The global batch (train.batch_size) is split evenly across all replicas. Batch k is still
  the pure function of (seed, k) that a one-process run sees (train.Batches); replica g of R
  loads only rows [g*B/R, (g+1)*B/R) of it, and takes the same rows of the step's noise. The
  stream visits every example once per cycle, so no two replicas see the same example in a
  cycle, and the sum over replicas is exactly the one-process batch.
- Each replica scales its summed loss by 1/(global batch), so the gradients summed over
  replicas are those of the global mean. qd sums them itself (one all-reduce), clips by the
  global norm and hands the result to Keras' Adam (optimizer.py), which updates the
  mirrored variables identically on every replica.
- Only the chief writes checkpoints, last_batch.npy, finished.json and summaries; the other
  workers save their checkpoints to a temporary folder they delete, as the guide says.
- Every worker resumes from the chief's checkpoint: after restoring, the chief's variables are
  broadcast to all workers, so a worker whose disk holds no checkpoint (separate machines,
  separate caches) still resumes from the chief's step.
- A worker that dies makes the collectives of the others fail; a worker that hangs makes them
  time out after QD_COLLECTIVE_TIMEOUT seconds (default 300). Either way each survivor stops
  with one `Error:` line naming the last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf

from ..config import TrainConfig
from ..errors import InputError, TrainingError
from .step import clip, step_noise, sums_and_gradients

TIMEOUT_ENV = "QD_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 300.0


@dataclass
class Placement:
    """Where this process's share of the training runs, and whether it writes."""

    mode: str  # "none", "mirrored" or "multi-worker"
    strategy: object = None
    worker: int = 0  # this worker's index among all workers (the chief is 0)
    workers: int = 1
    chief: bool = True
    scratch: list = field(default_factory=list)  # temporary folders to delete at the end

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    def describe(self) -> str:
        if self.strategy is None:
            return ""
        if self.mode == "mirrored":
            return f"mirrored over {self.replicas} replica{'s' if self.replicas > 1 else ''}"
        role = "chief" if self.chief else f"worker {self.worker}"
        return f"multi-worker: {role} of {self.workers}, {self.replicas} replicas"

    def checkpoint_dir(self, workdir: Path) -> Path:
        """The chief's checkpoints live in the model folder; another worker's in a temporary
        folder of its own, deleted by cleanup()."""
        if self.chief:
            return workdir
        scratch = Path(tempfile.mkdtemp(prefix=f"qd-worker{self.worker}-"))
        self.scratch.append(scratch)
        return scratch

    def cleanup(self) -> None:
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)
        self.scratch.clear()


def choose(train_cfg: TrainConfig) -> Placement:
    """The strategy train.distribute asks for, created before anything else starts TensorFlow."""
    mode = train_cfg.distribute
    if mode == "auto":
        mode = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if mode == "none":
        return Placement("none")
    if mode == "mirrored":
        return Placement("mirrored", tf.distribute.MirroredStrategy())
    return _multi_worker()


def timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InputError(f"{TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds, a number above 0")
    return value


def _multi_worker() -> Placement:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise InputError(
            "train.distribute is multi-worker but TF_CONFIG is not set: set it on every worker "
            "(docs/distributed.md), or use distribute: auto"
        )
    try:
        conf = json.loads(raw)
        cluster, task = conf["cluster"], conf["task"]
        kind, index = task["type"], int(task["index"])
        jobs = {name: list(cluster[name]) for name in ("chief", "worker") if name in cluster}
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"TF_CONFIG is not a cluster description ({e}): it needs "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
        ) from e
    if kind not in jobs or not 0 <= index < len(jobs[kind]):
        raise InputError(
            f"TF_CONFIG: task {kind!r} {index} is not in its cluster (jobs: "
            f"{', '.join(f'{k} x{len(v)}' for k, v in jobs.items()) or 'none'}); qd runs chief and worker tasks only"
        )
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout())
        )
    except RuntimeError as e:
        raise TrainingError(
            f"cannot start multi-worker training in this process ({e}): it must start before "
            "TensorFlow does; run it as `qd train` or `qd run` in a fresh process"
        ) from e
    chiefs = len(jobs.get("chief", []))
    worker = index if kind == "chief" else chiefs + index
    return Placement(
        "multi-worker", strategy, worker=worker, workers=chiefs + len(jobs.get("worker", [])), chief=worker == 0
    )


def writes_here(train_cfg: TrainConfig) -> bool:
    """Whether this process is the one that writes the model folder, read from TF_CONFIG alone
    (without starting TensorFlow's runtime): False only for a multi-worker run's non-chief
    worker. A TF_CONFIG that cannot be read counts as the chief; choose() names its fault."""
    if train_cfg.distribute != "multi-worker":
        return True
    try:
        conf = json.loads(os.environ.get("TF_CONFIG", ""))
        kind, index = conf["task"]["type"], int(conf["task"]["index"])
        chiefs = len(conf["cluster"].get("chief", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return True
    return (index if kind == "chief" else chiefs + index) == 0


def check_batch(train_cfg: TrainConfig, placement: Placement) -> None:
    if train_cfg.batch_size % placement.replicas:
        raise InputError(
            f"train.batch_size {train_cfg.batch_size} does not split evenly over {placement.replicas} "
            f"replicas: use a multiple of {placement.replicas}"
        )


def dataset(placement: Placement, batches, start: int, stop: int):
    """Batches start..stop-1, each replica receiving its own rows (see the module docstring).

    Elements are dicts: "x" the rows, "y" their class labels, "lo" their offset in the global
    batch, "k" the batch."""
    replicas = placement.replicas
    per = batches.batch_size // replicas
    shape = batches.data.images.shape[1:]

    def for_pipeline(ctx: tf.distribute.InputContext):
        local = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local  # global index of this pipeline's first replica

        def load(i):
            k, j = i // local, i % local
            lo = (first + j) * per
            x = tf.numpy_function(lambda k, lo: batches.rows(k, lo, lo + per), [k, lo], tf.float32, stateful=False)
            x.set_shape((per,) + tuple(shape))
            # The same rows' class labels: every replica conditions its rows on their own labels.
            y = tf.numpy_function(lambda k, lo: batches.labels_of(k)[lo : lo + per], [k, lo], tf.int32, stateful=False)
            y.set_shape((per,))
            return {"x": x, "y": y, "lo": lo, "k": k}

        # The strategy hands a pipeline's consecutive elements to its local replicas in turn.
        return tf.data.Dataset.range(start * local, stop * local).map(load).prefetch(2 * local)

    return placement.strategy.distribute_datasets_from_function(for_pipeline)


def make_strategy_step(model, opt, train_cfg: TrainConfig, plan, strategy):
    """step(per-replica batch) -> (mean L^x, mean L^z, gradient norm, finite?) of the global batch.

    The replica's loss and gradient are compiled as the plan says (XLA for float32); the
    all-reduce and Adam's update run outside XLA, where TensorFlow's collectives live. A
    non-finite step is applied like any other: the trainer stops at it and never saves it.
    """
    variables = model.weights
    global_batch = float(train_cfg.batch_size)

    @tf.function(jit_compile=plan.jit_compile, reduce_retracing=True, autograph=False)
    def gradients(batch):
        lo = tf.cast(batch["lo"], tf.int32)
        eps = step_noise(model, train_cfg, batch["k"], train_cfg.batch_size)[:, lo : lo + tf.shape(batch["x"])[0]]
        # Per-replica loss scaling: the replicas' gradients add up to the global mean's.
        return sums_and_gradients(model, batch, eps, plan, 1.0 / global_batch, variables)

    def replica(batch):
        lx, lz, grads = gradients(batch)
        ctx = tf.distribute.get_replica_context()
        lx, lz, *grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [lx, lz, *grads])
        lx, lz = lx / global_batch, lz / global_batch
        grads, gnorm, ok = clip(grads, lx + lz, train_cfg)
        opt.apply(grads, variables)
        return lx, lz, gnorm, ok

    @tf.function(autograph=False)
    def step(batch):
        out = strategy.run(replica, args=(batch,))
        return [strategy.experimental_local_results(v)[0] for v in out]

    return step


def sync_from_chief(placement: Placement, variables: list) -> None:
    """Give every worker the chief's values of `variables` (weights, Adam's state, the step):
    an all-reduce in which only the first replica (on the chief) contributes."""
    strategy = placement.strategy

    @tf.function(autograph=False)
    def gather():
        def replica():
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            # float64 holds int64 steps exactly (below 2^53) and float32 values exactly.
            return ctx.all_reduce(
                tf.distribute.ReduceOp.SUM,
                [tf.where(first, tf.cast(v, tf.float64), tf.zeros_like(v, tf.float64)) for v in variables],
            )

        return [strategy.experimental_local_results(v)[0] for v in strategy.run(replica)]

    for var, value in zip(variables, gather()):
        var.assign(tf.cast(value, var.dtype))


def lost_peer(error: Exception, step: int, kept: str) -> TrainingError:
    """The one line a surviving worker prints when a collective fails or times out."""
    first = (getattr(error, "message", None) or str(error)).strip().splitlines()
    detail = first[0] if first else type(error).__name__
    return TrainingError(
        f"lost contact with another worker at step {step} ({type(error).__name__}: {detail[:200]}); {kept}. "
        "Start every worker again with the same command to resume from it"
    )
