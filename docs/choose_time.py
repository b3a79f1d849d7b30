"""docs/performance.md's "Choosing the plan in seconds": how long `qd train` spends choosing
its step plan from an empty cache, for a long run at BATCH.

    .venv/bin/python docs/choose_time.py 400       # the plan its CPU's flags predict, timed alone
    QD_PLAN_MEASURE=all .venv/bin/python docs/choose_time.py 400   # every candidate timed
    QD_PLAN_NO_BF16=1 .venv/bin/python docs/choose_time.py 23      # as a float32-only CPU chooses

TensorFlow is imported and the devices listed before the clock starts, as the trainer has
them when it chooses. Prints one JSON line: seconds, the winner, each timed plan's images/s.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import tensorflow as tf  # noqa: F401 - started before the clock, as in `qd train`

from qdcore.config import ModelConfig, TrainConfig
from qdcore.reporter import Reporter
from qdcore.training import plan as P


def main() -> None:
    batch = int(sys.argv[1])
    os.environ["QD_CACHE_DIR"] = tempfile.mkdtemp()  # nothing measured yet
    P.gpu_names()
    cfg = TrainConfig(batch_size=batch, iterations=10 * P.MEASURE_MIN_IMAGES // batch)
    t0 = time.perf_counter()
    choice = P.choose(ModelConfig(), cfg, say=Reporter.to_stderr().note, busy=False)
    seconds = round(time.perf_counter() - t0, 1)
    mode = os.environ.get(P.MEASURE_ENV) or "finalists"
    row = {"batch": batch, "mode": mode, "seconds": seconds, "winner": choice.plan.name, "rows": choice.rows}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
