"""`python -m qdcore.bench side SPEC | ablation | workers | profile [auto|float32|bfloat16]`:
one measurement in this process (`side`, for bench.run_child), or the figures of
docs/performance.md and docs/distributed.md as one JSON line."""

from __future__ import annotations

import json
import sys

from .bench import _side, ablation, bench_workers, profile

if sys.argv[1:2] == ["side"]:  # one measurement, for bench.run_child()
    print(json.dumps(_side(json.loads(sys.argv[2]))))
elif sys.argv[1:2] == ["ablation"]:
    print(json.dumps(ablation()))
elif sys.argv[1:2] == ["workers"]:
    print(json.dumps(bench_workers()))
elif sys.argv[1:2] == ["profile"]:
    print(json.dumps(profile(*sys.argv[2:3])))
else:
    print("usage: python -m qdcore.bench ablation | workers | profile [auto|float32|bfloat16]", file=sys.stderr)
    sys.exit(2)
