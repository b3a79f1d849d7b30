"""The step plan's timing child: qd's training step on synthetic data, timed in a fresh process.

`plan.time_plan` runs `python -m qdcore.training.timing SPEC` (`plan.run_child`) for each
candidate: TensorFlow's thread pools are fixed once it starts and a plan sets its own
(`plan.apply`), so each one is timed in a process of its own. The benchmarks (qdcore/bench/)
time qd's step through this module too, beside their reference model; nothing here imports
them, so `precision: auto` needs no benchmark code.

Imports TensorFlow only inside the functions that time a step: the cost model
(`gflop_per_step`) stays cheap to import.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

import numpy as np

from ..config import ModelConfig, TrainConfig
from .plan import StepPlan

WARMUP_STEPS = 3
CALL_WARMUP = 1  # a call of several steps (train.steps_per_call) is traced and compiled on its first


def gflop_per_step(cfg: ModelConfig, batch: int) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward), in GFLOP.

    Counts the LSTM, latent, output and attention matmuls; elementwise work is ignored
    (it is a few percent at these sizes).
    """
    H, W = cfg.height, cfg.width
    if cfg.attention:
        rn, wn = cfg.read_n, cfg.write_n
        read_in = 2 * rn * rn
        write_out = wn * wn + 10
        attention = 2 * (rn * H * W + rn * W * rn) * 2 + (W * wn * wn + H * wn * W)
    else:
        read_in, write_out, attention = 2 * H * W, H * W, 0
    per_image_step = (
        (read_in + cfg.dec_size + cfg.enc_size) * 4 * cfg.enc_size  # encoder LSTM
        + cfg.enc_size * 2 * cfg.z_size  # mu, log sigma
        + (cfg.z_size + cfg.dec_size) * 4 * cfg.dec_size  # decoder LSTM
        + cfg.dec_size * write_out  # write + windows
        + attention
    )
    return 3 * 2 * per_image_step * cfg.T * batch / 1e9


def synthetic(n: int, cfg: ModelConfig) -> np.ndarray:
    # Blobs of ink rather than white noise so the loss is a drawing-like workload.
    rng = np.random.default_rng(0)
    x = rng.random((n, cfg.height, cfg.width), dtype=np.float32)
    return (x > 0.8).astype(np.uint8) * 255


def timed(
    run_step: Callable[[], object], iterations: int, batch: int, cfg: ModelConfig, name: str, warmup: int = WARMUP_STEPS
) -> dict:
    for _ in range(warmup):
        run_step()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - t0)
    seconds, median = sum(times), float(np.median(times))
    gflop = gflop_per_step(cfg, batch)
    return {
        "name": name,
        "batch_size": batch,
        "steps": iterations,
        "seconds": round(seconds, 3),
        "steps_per_s": round(iterations / seconds, 3),
        "images_per_s": round(iterations * batch / seconds, 1),
        # The median step is what plans are ranked by: a burst of someone else's load
        # moves the mean of a few steps much more than the median.
        "images_per_s_median": round(batch / median, 1),
        "gflop_per_step": round(gflop, 3),
        "achieved_gflop_per_s": round(gflop * iterations / seconds, 2),
    }


def run_qd(cfg: ModelConfig, train_cfg: TrainConfig, iterations: int, plan: StepPlan | None = None) -> dict:
    """qd's own step and input pipeline, exactly as train() drives them (minus checkpoints)."""
    from ..interfaces import ImageSet
    from .train import Batches, call_bounds, new_training, split, steps_per_call  # TensorFlow lives behind this

    choice, _, _, step = new_training(cfg, train_cfg, plan)
    plan = choice.plan
    data = ImageSet(synthetic(4000, cfg), "synthetic")
    train_idx, _ = split(len(data.images), train_cfg)
    batches = Batches(data, train_idx, train_cfg.batch_size, train_cfg.seed)
    per_call = steps_per_call(train_cfg.batch_size, plan) if getattr(step, "many", None) is not None else 1
    name = f"qd (batch {train_cfg.batch_size}, {plan.describe()})"
    if per_call > 1:  # as training runs it: several steps a call (train.make_multi_step)
        many, calls = step.many(), -(-iterations // per_call)
        bounds = call_bounds(0, (CALL_WARMUP + calls) * per_call, per_call, [])
        it = iter(batches.calls(bounds, per_call))

        def run_call():
            ks, xs, ys, n = next(it)
            *_, ok, ran = (v.numpy() for v in many(xs, ks, ys, n))
            assert ok.all() and ran == per_call

        row = timed(run_call, calls, train_cfg.batch_size * per_call, cfg, name, warmup=CALL_WARMUP)
        row = {**row, "batch_size": train_cfg.batch_size, "steps": calls * per_call, "steps_per_call": per_call}
        row["steps_per_s"] = round(row["steps"] / row["seconds"], 3)
    else:
        it = iter(batches.dataset(0, WARMUP_STEPS + iterations))

        def run_step():
            k, x, _ = next(it)
            lx, lz, _, ok = (v.numpy() for v in step(x, k))
            assert ok

        row = timed(run_step, iterations, train_cfg.batch_size, cfg, name)
    return {**row, "plan": plan.name, "precision": plan.precision, "xla": plan.jit_compile, "streams": plan.streams}


def in_this_process(spec: dict, threads: list[int] | tuple[int, int] | None, run: Callable[[], dict]) -> dict:
    """`run()`'s row, measured under `threads` (intra-op, inter-op; None: TensorFlow's
    defaults), which only a fresh process can still set; named spec["name"] if given."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    row = run()
    if spec.get("name"):
        row["name"] = spec["name"]
    row["threads"] = [
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    ]
    return row


def measure(spec: dict) -> dict:
    """Time qd's step under spec["plan"] (a StepPlan as a dict) in this (fresh) process."""
    plan = StepPlan.from_dict(spec["plan"])
    cfg = ModelConfig(**spec.get("model", {}))
    train_cfg = TrainConfig(batch_size=spec.get("batch_size", TrainConfig.batch_size), precision=plan.precision)
    return in_this_process(
        spec, spec.get("threads") or plan.threads, lambda: run_qd(cfg, train_cfg, spec["iterations"], plan)
    )


def measure_group(spec: dict) -> dict:
    """Time qd's step under each of spec["plans"] (StepPlans as dicts, all with the same
    thread pools) one after another in this (fresh) process: {"rows": [row or {"error"}]}."""
    plans = [StepPlan.from_dict(p) for p in spec["plans"]]
    cfg = ModelConfig(**spec.get("model", {}))
    rows = []
    for i, plan in enumerate(plans):
        train_cfg = TrainConfig(batch_size=spec.get("batch_size", TrainConfig.batch_size), precision=plan.precision)
        try:
            threads = plan.threads if i == 0 else None  # the pools are set once, by the first
            rows.append(in_this_process({}, threads, lambda: run_qd(cfg, train_cfg, spec["iterations"], plan)))
        except Exception as e:  # noqa: BLE001 - one plan that cannot run here loses; the others are timed
            rows.append({"name": plan.name, "error": f"{type(e).__name__}: {e}"})
    return {"rows": rows}


if __name__ == "__main__":  # one measurement, for plan.run_child()
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure_group(spec) if spec.get("kind") == "group" else measure(spec)))
