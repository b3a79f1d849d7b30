"""One model folder, one trainer: a lock per folder, never stale (issue 11)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

QD = str(Path(sys.executable).parent / "qd")


def _holder(lock: Path, seconds: float) -> subprocess.Popen:
    """Another process that takes the lock, says so on stdout, then holds it."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from qdcore.training.locks import hold
        with hold(Path({str(lock)!r}), "training test"):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_the_second_waits_with_a_message_then_gets_the_lock(tmp_path):
    from qdcore.training.locks import hold

    lock = tmp_path / "model.lock"
    holder = _holder(lock, 1.5)
    said = []
    start = time.monotonic()
    with hold(lock, "training apple", on_wait=said.append):
        waited = time.monotonic() - start
        assert holder.poll() is not None  # we only got in once the holder had left
    holder.wait()
    assert waited > 0.5
    assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "training apple" in said[0], said


def test_a_lock_of_a_killed_process_never_blocks(tmp_path):
    from qdcore.training.locks import hold

    lock = tmp_path / "model.lock"
    holder = _holder(lock, 600)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock.exists()  # the file stays; the kernel dropped the lock with the process
    said = []
    start = time.monotonic()
    with hold(lock, "training", on_wait=said.append):
        assert time.monotonic() - start < 1.0
    assert said == []


def test_the_lock_is_released_on_an_exception(tmp_path):
    from qdcore.training.locks import hold

    lock = tmp_path / "m.lock"
    with pytest.raises(KeyboardInterrupt):
        with hold(lock, "x"):
            raise KeyboardInterrupt
    with hold(lock, "x", on_wait=lambda m: pytest.fail(m)):
        pass


def test_two_runs_of_one_recipe_train_once(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(
        "name: twice\ndataset: {use: quickdraw, category: apple, limit: 40}\n"
        "model: {height: 12, width: 12, T: 2, enc_size: 8, dec_size: 8, z_size: 2, read_n: 2, write_n: 2}\n"
        "train: {iterations: 6, batch_size: 8, checkpoint_every: 2, precision: bfloat16}\n"
        "generate: {n: 2}\n"
    )
    env = {**os.environ, "QD_LOAD_PLUGINS": "datasets,seeds,filters,writers", "QD_CACHE_DIR": str(tmp_path / "cache")}
    lock_dir = tmp_path / "cache" / "models"
    first = subprocess.Popen([QD, "run", recipe, "-o", tmp_path / "a.gif"], env=env, stderr=subprocess.PIPE, text=True)
    # Start the second only once the first holds the lock (its pid is in the lock file).
    deadline = time.monotonic() + 120
    while (
        not any(p.read_text().strip() == str(first.pid) for p in lock_dir.glob("*.lock")) if lock_dir.exists() else True
    ):
        assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lock"
        time.sleep(0.05)
    # Freeze the first while it holds the lock, so the second surely finds it taken.
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.Popen(
            [QD, "run", recipe, "-o", tmp_path / "b.gif"], env=env, stderr=subprocess.PIPE, text=True
        )
        seen = []
        while not seen or "waiting for" not in seen[-1]:
            line = second.stderr.readline()
            assert line, f"the second run ended without waiting: {''.join(seen)}"
            seen.append(line)
    finally:
        first.send_signal(signal.SIGCONT)
    first_err = first.communicate(timeout=300)[1]
    second_err = "".join(seen) + second.communicate(timeout=300)[1]
    assert first.returncode == 0 and second.returncode == 0, (first_err, second_err)
    assert "waiting for another qd process" in second_err and f"pid {first.pid}" in second_err
    assert "training apple" in first_err and "training apple" not in second_err
    assert "model: step 6" in second_err  # reused the finished model, trained nothing
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()
