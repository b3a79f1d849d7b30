"""`qd bench train` and `qd bench quality`: how fast qd trains, and how well per minute.

bench_train puts these side by side, measured in one run, one after the other: numpy's
float32 matmul peak (what this machine can do), a straightforward TF2 implementation of
the blog's model (Keras LSTM cells and Dense layers, Keras Adam, a plain tf.function,
batch 100: the reference), and qd's own trainer under every step plan `auto` chooses from
(qdcore/training/plan.py). Each training measurement runs in a fresh process (run_child). See
docs/performance.md for what the numbers mean.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..config import ModelConfig, TrainConfig
from ..draw import filterbank, gaussian_kl, window_params
from ..errors import InputError, TrainingError
from ..interfaces import Drawing, ImageSet
from ..reporter import QUIET, Reporter
from ..training import plan as step_plans
from ..training.plan import StepPlan
from ..training.timing import WARMUP_STEPS, gflop_per_step, in_this_process, measure, synthetic, timed
from ..training.train import Batches, TrainedModel, evaluate, new_training, split


# -- what this machine can do ---------------------------------------------------------------


def numpy_matmul_peak(cfg: ModelConfig, batch: int, seconds: float = 0.5) -> float:
    """Best float32 numpy (BLAS) GFLOP/s over the model's big shape and a square one."""
    rng = np.random.default_rng(0)
    enc_in = 2 * cfg.read_n**2 + cfg.dec_size + cfg.enc_size
    best = 0.0
    for m, k, n in [(batch, enc_in, 4 * cfg.enc_size), (1024, 1024, 1024)]:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


# -- the reference: the blog's model written the obvious TF2 way ------------------------------


class ReferenceDraw(tf.Module):
    """ericjang/draw's model ported plainly to TF2 (with the paper's equations, not its bugs).

    Keras LSTMCell (input and recurrent kernels as separate matmuls), a Dense layer per
    output, attention parameters from separate layers, a tf.function without XLA.
    """

    def __init__(self, cfg: ModelConfig):
        import keras

        super().__init__()
        self.cfg = cfg
        self.enc = keras.layers.LSTMCell(cfg.enc_size)
        self.dec = keras.layers.LSTMCell(cfg.dec_size)
        self.mu = keras.layers.Dense(cfg.z_size)
        self.log_sigma = keras.layers.Dense(cfg.z_size)
        self.read_attn = keras.layers.Dense(5)
        self.write_attn = keras.layers.Dense(5)
        self.write_patch = keras.layers.Dense(cfg.write_n**2)
        self.opt = keras.optimizers.Adam(1e-3, beta_1=0.5)
        self.layers = [self.enc, self.dec, self.mu, self.log_sigma, self.read_attn, self.write_attn, self.write_patch]
        self.loss(tf.zeros([1, cfg.height, cfg.width]))  # builds the layers' variables
        self.variables_ = [v for layer in self.layers for v in layer.trainable_variables]

    def _filters(self, h, n):
        cfg = self.cfg
        gx, gy, delta, sigma2, gamma = window_params(h, cfg.height, cfg.width, n)
        return filterbank(gx, delta, sigma2, n, cfg.width), filterbank(gy, delta, sigma2, n, cfg.height), gamma

    def loss(self, x):
        cfg = self.cfg
        b = tf.shape(x)[0]
        c = tf.zeros_like(x)
        h_dec = tf.zeros([b, cfg.dec_size])
        enc_state = [tf.zeros([b, cfg.enc_size]), tf.zeros([b, cfg.enc_size])]
        dec_state = [h_dec, tf.zeros([b, cfg.dec_size])]
        kl = 0.0
        for _ in range(cfg.T):
            x_hat = x - tf.sigmoid(c)
            fx, fy, gamma = self._filters(self.read_attn(h_dec), cfg.read_n)
            rx = tf.matmul(tf.matmul(fy, x), fx, transpose_b=True)
            rh = tf.matmul(tf.matmul(fy, x_hat), fx, transpose_b=True)
            r = tf.concat([tf.reshape(rx, [b, -1]), tf.reshape(rh, [b, -1])], 1) * gamma[:, None]
            h_enc, enc_state = self.enc(tf.concat([r, h_dec], 1), enc_state)
            mu, log_sigma = self.mu(h_enc), self.log_sigma(h_enc)
            z = mu + tf.exp(log_sigma) * tf.random.normal(tf.shape(mu))
            kl += gaussian_kl(mu, log_sigma)
            h_dec, dec_state = self.dec(z, dec_state)
            fx, fy, gamma = self._filters(self.write_attn(h_dec), cfg.write_n)
            w = tf.reshape(self.write_patch(h_dec), [b, cfg.write_n, cfg.write_n])
            c += tf.matmul(tf.matmul(fy, w, transpose_a=True), fx) / gamma[:, None, None]
        lx = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=c), [1, 2])
        return tf.reduce_mean(lx + kl)

    @tf.function
    def step(self, x):
        with tf.GradientTape() as tape:
            loss = self.loss(x)
        variables = self.variables_
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), 5.0)
        self.opt.apply_gradients(zip(grads, variables))
        return loss


def run_reference(cfg: ModelConfig, iterations: int, batch: int = 100) -> dict:
    ref = ReferenceDraw(cfg)
    x = tf.constant(synthetic(batch, cfg).astype(np.float32) / 255)
    return timed(lambda: float(ref.step(x)), iterations, batch, cfg, f"reference (plain tf.function, batch {batch})")


# -- one measurement per process ---------------------------------------------------------------
# TensorFlow's thread pools are fixed once it starts, and qd's plans set their own
# (plan.apply), so each configuration runs in a fresh process of its own, one after the
# other (run_child): the reference gets TensorFlow's defaults, as a plain script would.


def _side(spec: dict) -> dict:
    """Run one measurement described by `spec` in this (fresh) process: the reference, or
    qd's step under spec["plan"] (a StepPlan as a dict; the timing child's measure)."""
    if spec["kind"] == "qd":
        return measure(spec)
    cfg = ModelConfig(**spec.get("model", {}))
    return in_this_process(
        spec, spec.get("threads"), lambda: run_reference(cfg, spec["iterations"], spec.get("batch_size", 100))
    )


def run_child(spec: dict) -> dict:
    """One measurement, the reference's or qd's, in a fresh process (`python -m qdcore.bench side SPEC`)."""
    return step_plans.run_child(spec, ("qdcore.bench", "side"))


def _time_between_references(plans: dict, cfg: ModelConfig, iterations: int, say) -> tuple[list, dict, float]:
    """Each batch's plans' rows ({batch: [row]}), with their ratio to the reference timed
    before and after them all, and their share of numpy's matmul peak added later."""
    say(f"reference at batch 100, {iterations} steps ...")
    references = [run_child({"kind": "reference", "iterations": iterations})]
    rows: dict = {}
    for batch, group in plans.items():
        for p in group:
            say(f"{p.describe()} at batch {batch}, {iterations} steps ...")
            rows.setdefault(batch, []).append(step_plans.time_plan(p, cfg, batch, iterations))
    say(f"reference again, {iterations} steps ...")
    references.append(run_child({"kind": "reference", "iterations": iterations}))
    ref_rate = sum(r["images_per_s_median"] for r in references) / len(references)
    for r in (r for group in rows.values() for r in group):
        r["ratio_to_reference"] = round(r["images_per_s_median"] / ref_rate, 2)
    return references, rows, ref_rate


# The small batch `qd bench train` shows beside the default one: a fine-tune of 25 drawings
# trains at batch 20-25 (docs/finetune.md), where a step's own work is small.
SMALL_BATCH = 20


def bench_train(
    batch_size: int | None, iterations: int, reporter: Reporter = QUIET, precision: str = "auto", bf16: bool = True
) -> dict:
    """numpy's peak, the reference at batch 100, and every step plan `auto` would choose
    from at qd's default batch and at SMALL_BATCH (or at `batch_size` alone), each in its own
    process; the fastest at each batch is auto's choice and is cached as if a training run
    had measured it (these runs are longer than its few steps).

    Rates are images per second of the median step, with the share of numpy's float32
    matmul peak that the step's matmuls reach (timing.gflop_per_step's cost model). The
    reference runs before and after the candidates; ratios are against the mean of the two,
    so load that changes during the run moves both sides. bf16=False (or QD_PLAN_NO_BF16=1)
    leaves the bfloat16 candidates out, as on a float32-only CPU.
    """
    cfg = ModelConfig()
    batches = [TrainConfig.batch_size, SMALL_BATCH] if batch_size is None else [batch_size]
    say = reporter.note
    info, cores, gpus = step_plans.cpu_info(), step_plans.cpu_count(), step_plans.gpu_names()
    # As in training (plan.choose): asking for bfloat16 gets it on any CPU.
    allowed = bf16 and (precision == "bfloat16" or step_plans.bf16_allowed(info))
    plans = {b: step_plans.candidates(b, cores, allowed, gpus, precision) for b in batches}
    if not plans[batches[0]]:
        raise InputError(f"--precision {precision} with --no-bf16 leaves no step plan to measure: drop one of the two")
    busy = step_plans.machine_busy()
    if busy:
        say("other work keeps the cores busy: the figures and auto's choice may be off")
    say("numpy matmul peak ...")
    peak = numpy_matmul_peak(cfg, batches[0])
    references, rows, ref_rate = _time_between_references(plans, cfg, iterations, say)
    out = {
        "numpy_matmul_peak_gflop_per_s": round(peak, 1),
        "reference": {
            **references[0],
            "images_per_s_median": round(ref_rate, 1),
            "images_per_s_median_each_run": [r["images_per_s_median"] for r in references],
        },
        "busy": busy,
    }
    for i, batch in enumerate(batches):
        for r in rows[batch]:
            r["peak_share"] = round(gflop_per_step(cfg, batch) * r["images_per_s_median"] / batch / peak, 3)
        figures = _auto_choice(cfg, batch, plans[batch], rows[batch], info, cores, gpus, busy)
        say(f"batch {batch} (numpy's float32 matmul peak {peak:.0f} GFLOP/s):")
        _table(say, rows[batch], ref_rate, figures["default"])
        say(f"auto chose {figures['auto']} (cached in {figures['plan_cache']})")
        if i == 0:
            out.update(figures)
        else:
            ratio = figures["default"]["images_per_s_median"] / out["default"]["images_per_s_median"]
            out["small_batch"] = {
                "batch_size": batch,
                **figures,
                "images_per_s_ratio_to_default_batch": round(ratio, 2),
            }
            say(f"batch {batch} trains at {ratio:.2f}x the images/s of batch {batches[0]}")
    return out


def _auto_choice(cfg, batch: int, plans, rows: list[dict], info, cores, gpus, busy: bool) -> dict:
    """The fastest of `rows` at `batch`, cached as the plan training takes there."""
    measured = [{"name": r["plan"], "images_per_s": r["images_per_s_median"]} for r in rows]
    winner = step_plans.best(measured, plans)
    fields = step_plans.key_fields(cfg, batch, plans, info, cores, tf.__version__, gpus)
    path = step_plans.cache_path(fields)
    step_plans.save(path, fields, winner, measured, busy)
    default = next(r for r in rows if r["plan"] == winner.name)
    return {
        "candidates": rows,
        "auto": winner.name,
        "default": default,
        "images_per_s_ratio_default_over_reference": default["ratio_to_reference"],
        "plan_cache": str(path),
    }


def _table(say, rows: list[dict], ref_rate: float, default: dict) -> None:
    say(f"{'plan':<22} {'img/s (median step)':>20} {'(mean)':>8} {'x reference':>12} {'of peak':>8}")
    say(f"{'reference (batch 100)':<22} {ref_rate:>20.0f} {'':>8} {1.0:>12.2f}")
    for r in rows:
        say(
            f"{r['plan']:<22} {r['images_per_s_median']:>20.0f} {r['images_per_s']:>8.0f} "
            f"{r['ratio_to_reference']:>12.2f} {r['peak_share']:>8.0%}" + ("  <- auto" if r is default else "")
        )


# -- quality per minute ----------------------------------------------------------------------


def bench_quality(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: ImageSet,
    minutes: list[float],
    n_samples: int = 64,
    reporter: Reporter = QUIET,
) -> tuple[dict, Drawing]:
    """Train at train_cfg for max(minutes) of wall clock, reporting the held-out bound at each mark.

    Returns the figures and `n_samples` prior samples of the final model (the CLI writes them
    with the png-sheet writer). The evaluations are not counted in the training time. The
    learning-rate schedule runs over train_cfg.iterations, as in a real run of that configuration.
    """
    marks = sorted(minutes)
    choice, model, _, step_fn = new_training(model_cfg, train_cfg, say=reporter.note)
    train_idx, held = split(len(data.images), train_cfg)
    batches = Batches(data, train_idx, train_cfg.batch_size, train_cfg.seed)
    trained = TrainedModel(model=model, step=0, last_batch=None, workdir=Path(tempfile.gettempdir()))
    results, elapsed, k = [], 0.0, 0
    it = iter(batches.dataset(0, 10**9))
    for mark in marks:
        t0 = time.perf_counter()
        while elapsed + (time.perf_counter() - t0) < mark * 60:
            k, x, _ = next(it)
            lx, lz, _, ok = (v.numpy() for v in step_fn(x, k))
            if not ok:
                raise TrainingError(f"non-finite loss at step {int(k) + 1}; try a lower learning_rate or clip_norm")
        elapsed += time.perf_counter() - t0
        trained.step = int(k) + 1
        ev = evaluate(trained, data, train_cfg)
        row = {
            "minutes": mark,
            "step": trained.step,
            "images_seen": trained.step * train_cfg.batch_size,
            "cycles": round(trained.step * train_cfg.batch_size / len(train_idx), 2),
            **ev,
            "train_lx_last": float(lx),
            "train_lz_last": float(lz),
        }
        results.append(row)
        reporter.note(str(row))  # stderr: stdout carries the one JSON line
    figures = {
        "dataset": data.name,
        "n_train": len(train_idx),
        "n_held_out": len(held),
        "model": model_cfg.as_dict(),
        "train": train_cfg.as_dict(),
        "step_plan": choice.plan.describe(),
        "marks": results,
    }
    return figures, model.sample(n_samples, seed=0)


# -- where the time goes (python -m qdcore.bench ablation) ---------------------------------------


def _ablation() -> list[tuple[str, dict]]:
    """(name, spec): one change at a time; each runs in its own process (see run_child)."""
    n = step_plans.cpu_count()
    pools = [1, n]
    P = lambda *a, **kw: {"kind": "qd", "plan": StepPlan(*a, **kw).as_dict()}  # noqa: E731
    return [
        ("reference: Keras cells, plain tf.function, TF's default threads", {"kind": "reference"}),
        (f"reference, 1 intra-op + {n} inter-op threads", {"kind": "reference", "threads": pools}),
        ("qd float32, no XLA", P("float32", False)),
        ("qd float32, XLA (float32-xla)", P("float32", True)),
        (f"qd float32, XLA, 1+{n} threads, 1 stream", P("float32", True, 1, tuple(pools))),
        (f"qd float32, XLA, TF's default threads, {n} streams", P("float32", True, n)),
        (f"qd float32, XLA, 1+{n} threads, {n} streams (float32-xla-streams)", P("float32", True, n, tuple(pools))),
        (f"qd float32, no XLA, 1+{n} threads, 1 stream", P("float32", False, 1, tuple(pools))),
        (f"qd float32, no XLA, 1+{n} threads, {n} streams (float32-streams)", P("float32", False, n, tuple(pools))),
        ("qd bfloat16, XLA", P("bfloat16", True)),
        ("qd bfloat16, no XLA, TF's default threads, 1 stream", P("bfloat16", False)),
        (f"qd bfloat16, no XLA, TF's default threads, {n} streams", P("bfloat16", False, n)),
        (f"qd bfloat16, no XLA, 1+{n} threads, 1 stream", P("bfloat16", False, 1, tuple(pools))),
        (f"qd bfloat16, no XLA, 1+{n} threads, {n} streams (bfloat16-streams)", P("bfloat16", False, n, tuple(pools))),
        ("qd bfloat16-streams, batch 800", {**P("bfloat16", False, n, tuple(pools)), "batch_size": 800}),
        (
            "qd bfloat16-streams, attention and glue only (LSTMs of 1 unit)",
            {**P("bfloat16", False, n, tuple(pools)), "model": {"enc_size": 1, "dec_size": 1}},
        ),
    ]


def ablation(iterations: int = 20) -> list[dict]:
    """Step time with one thing changed at a time (batch 400 unless said), one process each."""
    rows = []
    for name, spec in _ablation():
        spec = {
            "batch_size": 100 if spec["kind"] == "reference" else 400,
            **spec,
            "iterations": iterations,
            "name": name,
        }
        r = run_child(spec)
        rows.append(
            {
                "variant": name,
                "batch_size": r["batch_size"],
                "ms_per_step": round(1000 / r["steps_per_s"], 1),
                "images_per_s": r["images_per_s"],
                "images_per_s_median": r["images_per_s_median"],
                "threads": r["threads"],
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _op_kinds(logdir: Path, steps: int) -> tuple[dict, dict]:
    """{op kind: ms per step}, {op kind: calls per step} from the trace's XSpace protobuf."""
    import re
    from collections import Counter

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(next(logdir.rglob("*.xplane.pb")).read_bytes())
    kinds: Counter = Counter()
    calls: Counter = Counter()
    # Wrappers that contain the ops below them; counting them too would count time twice.
    wrappers = {
        "ThunkExecutor::Execute",
        "SlinkyThreadPool::Await",
        "ExecutorState::Process",
        "ExecutorDoneCallback",
        "ParallelFor",
    }
    for plane in space.planes:
        names = {i: m.name for i, m in plane.event_metadata.items()}
        for line in plane.lines:
            # XLA's thunks run on the intra-op (Eigen) pool, TensorFlow's kernels on tf_Compute.
            if "Eigen" not in line.name and not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if name in wrappers:
                    continue
                kind = name.rsplit(":", 1)[-1] if ":" in name else re.sub(r"[._]\d+", "", name)
                kinds[kind] += event.duration_ps / 1e9 / steps
                calls[kind] += 1 / steps
    return kinds, calls


def profile(precision: str = "auto", batch: int | None = None, steps: int = 5, top: int = 20) -> dict:
    """TensorFlow profiler trace of qd's step, summed by op kind.

    Reads the XSpace protobuf directly (the TensorBoard profile plugin is not needed):
    wall time per step, thread time per step (the gap is idle cores), and the op kinds that
    take the thread time: XLA's thunks (`MatMul.306` -> `MatMul`) for a compiled step,
    TensorFlow's kernels (`gradient_tape/mul:Mul` -> `Mul`) for an uncompiled one.
    """
    train_cfg = (
        TrainConfig(precision=precision) if batch is None else TrainConfig(batch_size=batch, precision=precision)
    )
    choice, model, _, step = new_training(ModelConfig(), train_cfg)
    plan = choice.plan
    x = tf.constant(synthetic(train_cfg.batch_size, model.cfg).astype(np.float32) / 255)
    k = tf.constant(0, tf.int64)
    for _ in range(WARMUP_STEPS):
        [v.numpy() for v in step(x, k)]
    logdir = Path(tempfile.mkdtemp(prefix="qd-profile-"))
    tf.profiler.experimental.start(str(logdir))
    t0 = time.perf_counter()
    for _ in range(steps):
        [v.numpy() for v in step(x, k)]
    wall = (time.perf_counter() - t0) / steps
    tf.profiler.experimental.stop()
    kinds, calls = _op_kinds(logdir, steps)
    busy = sum(kinds.values())
    return {
        "batch_size": train_cfg.batch_size,
        "plan": plan.describe(),
        "wall_ms_per_step": round(1000 * wall, 1),
        "thread_ms_per_step": round(busy, 1),
        "trace": str(logdir),
        "top": [
            {"op": op, "ms_per_step": round(ms, 2), "calls_per_step": round(calls[op]), "share": round(ms / busy, 3)}
            for op, ms in kinds.most_common(top)
        ],
    }


# -- one worker against two (python -m qdcore.bench workers) ------------------------------------


def _start_workers(recipe: Path, workers: int, tmp: Path) -> list[subprocess.Popen]:
    """`qd train RECIPE` as `workers` processes on free localhost ports (TF_CONFIG for two)."""
    import os
    import socket

    socks = [socket.socket() for _ in range(workers)]
    for sock in socks:
        sock.bind(("localhost", 0))
    hosts = [f"localhost:{sock.getsockname()[1]}" for sock in socks]
    for sock in socks:
        sock.close()
    procs = []
    for i in range(workers):
        env = {**os.environ, "QD_CACHE_DIR": str(tmp / f"cache{workers}-{i}"), "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TF_CONFIG", None)
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "qdcore.cli", "train", str(recipe), "--quiet"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def bench_workers(category: str = "cat", steps: int = 60, batch_size: int = 400) -> dict:
    """Images/s of `qd train` as one process, then as two MultiWorkerMirroredStrategy workers
    on localhost, at the same global batch: the chief's own steps/s summaries (train/steps_per_s)
    after the first 20 steps (tracing, compilation). Needs QD_DATA_DIR (real data).
    One configuration at a time, each in fresh processes."""
    from ..training.summaries import FOLDER

    rows = {}
    with tempfile.TemporaryDirectory(prefix="qd-bench-workers-") as tmp:
        tmp = Path(tmp)
        for workers in (1, 2):
            recipe = tmp / f"w{workers}.yaml"
            recipe.write_text(
                f"name: w{workers}\ndataset: {{use: quickdraw, category: {category}}}\n"
                f"train: {{iterations: {steps}, batch_size: {batch_size}, checkpoint_every: {steps}, stop: budget, "
                f"distribute: {'none' if workers == 1 else 'multi-worker'}}}\n"
            )
            procs = _start_workers(recipe, workers, tmp)
            for p in procs:
                _, err = p.communicate()
                if p.returncode:
                    raise TrainingError(f"worker failed: {err.strip().splitlines()[-1:]}")
            events = next((tmp / f"cache{workers}-0" / "models").glob(f"*/{FOLDER}/events.out.tfevents.*"))
            rates = [
                float(tf.make_ndarray(v.tensor))
                for e in tf.compat.v1.train.summary_iterator(str(events))
                for v in e.summary.value
                if v.tag == "train/steps_per_s" and e.step > 20
            ]
            steps_per_s = sum(rates) / len(rates)
            rows[f"{workers}_worker{'s' if workers > 1 else ''}"] = {
                "steps_per_s": round(steps_per_s, 3),
                "images_per_s": round(steps_per_s * batch_size, 1),
            }
            print(rows, file=sys.stderr, flush=True)
    rows["ratio_2_over_1"] = round(rows["2_workers"]["images_per_s"] / rows["1_worker"]["images_per_s"], 3)
    return {"category": category, "batch_size": batch_size, "steps": steps, **rows}
