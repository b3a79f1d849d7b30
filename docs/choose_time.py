"""docs/performance.md's "Choosing the plan in seconds": what choosing the step plan from an
empty cache adds to a long `qd train` at BATCH, before its first step is done.

    .venv/bin/python docs/choose_time.py 400
    QD_PLAN_NO_BF16=1 .venv/bin/python docs/choose_time.py 23    # as a float32-only CPU chooses

Three fresh processes, one after another, each training the default model on synthetic
drawings until its first step (or call of steps) is done, then a few more:
  trial     an empty plan cache: the predicted plan is timed by the run's own first steps
  finalist  an empty plan cache, QD_PLAN_MEASURE=finalist: the predicted plan timed in a
            fresh process first (how qd chose before trials)
  cached    the finalist's cache: no choosing at all, only the training's own first step
TensorFlow is imported before the clock starts, as `qd train` has it when it chooses. Prints
one JSON line per process (seconds to the first step, the plan, the images/s it cached) and
a last one with what choosing added over the cached run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


def first_steps(batch: int) -> dict:
    """In this process: seconds from train() to its first step done, and the cached figure."""
    import tensorflow as tf  # noqa: F401 - started before the clock, as in `qd train`

    from qdcore.config import ModelConfig, TrainConfig
    from qdcore.errors import Cancelled
    from qdcore.interfaces import ImageSet
    from qdcore.training import plan as P
    from qdcore.training.timing import synthetic
    from qdcore.training.train import train

    P.gpu_names()
    cfg = ModelConfig()
    data = ImageSet(synthetic(4000, cfg), "synthetic")
    train_cfg = TrainConfig(batch_size=batch, iterations=10 * P.MEASURE_MIN_IMAGES // batch, checkpoint_every=100_000)
    seen: list[float] = []
    t0 = time.perf_counter()

    def on_step(step, total, lx, lz):
        seen.append(time.perf_counter() - t0)
        return len(seen) >= 14  # past a trial's two warm-up calls and ten timed steps

    workdir = tempfile.mkdtemp()
    try:
        train(cfg, train_cfg, data, workdir, on_step=on_step)
    except Cancelled:
        pass
    (path,) = (P.cache_dir() / "plans").glob("*.json")
    record = json.loads(path.read_text())
    return {"seconds_to_first_step": round(seen[0], 1), "plan": record["winner"], "rows": record["rows"]}


def main() -> None:
    if sys.argv[1] == "--child":
        print(json.dumps(first_steps(int(sys.argv[2]))))
        return
    batch, cache, rows = int(sys.argv[1]), tempfile.mkdtemp(), {}
    for mode in ("trial", "finalist", "cached"):
        env = {**os.environ, "QD_CACHE_DIR": tempfile.mkdtemp() if mode != "cached" else cache}
        env.pop("QD_PLAN_MEASURE", None)
        if mode == "finalist":
            env.update(QD_CACHE_DIR=cache, QD_PLAN_MEASURE="finalist")
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(batch)], env=env, capture_output=True, text=True, check=True
        )
        rows[mode] = {"mode": mode, "batch": batch, **json.loads(out.stdout.splitlines()[-1])}
        print(json.dumps(rows[mode]), flush=True)
    base = rows["cached"]["seconds_to_first_step"]
    added = {m: round(rows[m]["seconds_to_first_step"] - base, 1) for m in ("trial", "finalist")}
    print(json.dumps({"batch": batch, "choosing_added_seconds": added}))


if __name__ == "__main__":
    main()
