"""The cycling trainer and its machinery (docs/architecture.md, "Files"):

    train.py        the loop: resume, the steps, the held-out bound, the final writes
    step.py         the pieces both step kinds share (noise, summed losses, the clip)
    distribute.py   tf.distribute: the strategy step, who is chief, the sharded dataset
    plan.py         the step plan, measured by timing.py's child processes and cached
    optimizer.py, checkpoints.py, mixing.py, summaries.py, stopping.py, locks.py

Imports nothing itself: `from qdcore.training import plan` stays free of TensorFlow. Nothing
here imports the studio or the benchmarks (tests/test_imports.py).
"""
