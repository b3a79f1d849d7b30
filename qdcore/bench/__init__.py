"""The benchmarks: `qd bench train` / `quality` (bench.py, with the reference model), `qd bench
data` (bench_data.py), `qd bench frontier` (bench_frontier.py) and the studio's figures
(bench_studio.py). An outer layer: they drive the pipeline and the trainer, and neither the
model nor the trainer imports them (tests/test_imports.py).

Imports nothing itself, so `import qdcore.bench.bench_frontier` stays free of TensorFlow.
"""
