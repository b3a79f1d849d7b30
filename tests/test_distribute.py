"""tf.distribute for real: two `qd train` worker processes on localhost (CPU, free ports, TF_CONFIG).

Each worker gets a cache folder of its own, as on two machines, so "only the chief wrote the
cache" is a question of which folder holds files, and resuming proves the chief's checkpoint
reached the other worker through the strategy, not through a shared disk.

Tolerance: the two-worker run sums the same per-image losses and gradients in a different
order (two halves all-reduced, against one batch), so results agree to float32 rounding
carried through a few Adam steps: L^x and L^z within 1e-3 relative, weights within 1e-3 in
relative norm. A wrong split (double-counted rows, mis-scaled loss, two replicas on the same
rows, a gradient summed twice) is off by far more.

Every subprocess has a timeout; a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from qdcore.training import summaries  # noqa: E402

DEADLINE = 480  # seconds for any one group of worker processes (startup included; a busy machine is slow)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _recipe(folder: Path, distribute: str, iterations: int, checkpoint_every: int) -> Path:
    path = folder / f"tiny-{distribute}-{iterations}.yaml"
    path.write_text(f"""
name: tiny
dataset: {{use: quickdraw, category: cat, limit: 300}}
model: {{T: 2, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}}
train: {{iterations: {iterations}, batch_size: 16, checkpoint_every: {checkpoint_every}, learning_rate: 0.003,
        warmup: 0, precision: float32, distribute: {distribute}}}
""")
    return path


def _env(cache: Path, quickdraw_dir: Path, tf_config: dict | None) -> dict:
    env = {
        **os.environ,
        "QD_CACHE_DIR": str(cache),
        "QD_DATA_DIR": str(quickdraw_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "QD_COLLECTIVE_TIMEOUT": "60",
    }
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(recipe: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qdcore.cli", "train", str(recipe), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _workers(recipe: Path, caches: list[Path], quickdraw_dir: Path) -> list[subprocess.Popen]:
    hosts = [f"localhost:{p}" for p in _free_ports(len(caches))]
    return [
        _start(
            recipe, _env(cache, quickdraw_dir, {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        )
        for i, cache in enumerate(caches)
    ]


def _finish(procs: list[subprocess.Popen], timeout: float = DEADLINE) -> list[tuple[int, str, str]]:
    end = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, end - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def _model_dir(cache: Path) -> Path:
    (found,) = [p for p in (cache / "models").iterdir() if p.is_dir()]  # not the training lock beside it
    return found


def _scalars(model_dir: Path, only_newest: bool = False) -> dict[str, dict[int, float]]:
    files = sorted((model_dir / summaries.FOLDER).glob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime)
    values: dict[str, dict[int, float]] = {}
    for f in files[-1:] if only_newest else files:
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
    return values


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith("model/") and "noise" not in k
    }


def _check(results, who: str):
    for i, (code, _, stderr) in enumerate(results):
        assert code == 0, f"{who} {i} exited {code}:\n{stderr[-3000:]}"


def test_two_workers_match_one_process_and_only_the_chief_writes(tmp_path, quickdraw_dir):
    one = _recipe(tmp_path, "none", 20, 10)
    two = _recipe(tmp_path, "multi-worker", 20, 10)
    caches = [tmp_path / "worker0", tmp_path / "worker1"]
    procs = [_start(one, _env(tmp_path / "single", quickdraw_dir, None))] + _workers(two, caches, quickdraw_dir)
    results = _finish(procs)
    _check(results, "process")

    single, chief = _model_dir(tmp_path / "single"), _model_dir(caches[0])
    assert single.name == chief.name  # train.distribute stays out of the cache key
    assert (chief / "finished.json").exists() and (chief / "last_batch.npy").exists()
    assert not caches[1].exists() or not any(caches[1].rglob("*")), sorted(caches[1].rglob("*"))
    assert json.loads((chief / "finished.json").read_text())["step"] == 20

    a, b = _scalars(single), _scalars(chief)
    for tag in ("loss/L^x", "loss/L^z", "train/gradient_norm", "train/learning_rate"):
        assert sorted(a[tag]) == sorted(b[tag]) == [10, 20], (tag, a.get(tag), b.get(tag))
        for step in (10, 20):
            assert b[tag][step] == pytest.approx(a[tag][step], rel=1e-3), (tag, step)
    wa, wb = _weights(single), _weights(chief)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert np.linalg.norm(wa[k] - wb[k]) <= 1e-3 * np.linalg.norm(wa[k]) + 1e-6, k
    # The last batch is the whole global batch, as a one-process run leaves it.
    np.testing.assert_array_equal(np.load(single / "last_batch.npy"), np.load(chief / "last_batch.npy"))


def test_a_dead_worker_stops_the_survivor_and_a_restart_resumes(tmp_path, quickdraw_dir):
    recipe = _recipe(tmp_path, "multi-worker", 200, 10)
    caches = [tmp_path / "worker0", tmp_path / "worker1"]
    procs = _workers(recipe, caches, quickdraw_dir)
    try:
        end = time.monotonic() + DEADLINE
        checkpoints = caches[0] / "models"
        while not list(checkpoints.glob("*/checkpoints/ckpt-*.index")):
            assert time.monotonic() < end, "no checkpoint from the chief in time"
            assert all(p.poll() is None for p in procs), _finish(procs)
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        code, _, stderr = _finish(procs[:1], timeout=120)[0]
        waited = time.monotonic() - t0
    finally:
        _finish(procs, timeout=5)
    assert code == 1, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "lost contact with another worker" in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr and "resume" in lines[0]
    assert waited < 90  # a bounded wait (QD_COLLECTIVE_TIMEOUT=60 here), not a hang

    chief = _model_dir(caches[0])
    saved = int(tf.train.latest_checkpoint(str(chief / "checkpoints")).rsplit("-", 1)[1])
    assert 10 <= saved < 200 and not (chief / "finished.json").exists()

    results = _finish(_workers(recipe, caches, quickdraw_dir))
    _check(results, "restarted worker")
    assert json.loads((chief / "finished.json").read_text())["step"] == 200
    resumed = _scalars(chief, only_newest=True)["loss/L^x"]
    # The restarted run's first summary comes after the checkpoint it resumed from: a run
    # started again from step 0 would write step 10 first.
    assert saved < min(resumed) <= saved + summaries.EVERY, (saved, sorted(resumed)[:3])
    assert not caches[1].exists() or not any(caches[1].rglob("*"))


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path, quickdraw_dir):
    recipe = _recipe(tmp_path, "multi-worker", 2, 1)
    code, _, stderr = _finish([_start(recipe, _env(tmp_path / "cache", quickdraw_dir, None))])[0]
    assert code == 2 and "Error: train.distribute is multi-worker but TF_CONFIG is not set" in stderr, stderr[-2000:]


# Keys computed by qd before train.distribute existed (commit d06c7d0): a recipe that does not
# set the new key must find the models cached by earlier versions.
KEYS_BEFORE_DISTRIBUTE = {
    "dataset: {use: quickdraw, category: cat}": "d2e21ea1ade04d3a",
    (
        "dataset: {use: quickdraw, category: cat}\ntrain: {iterations: 2500, batch_size: 100, precision: float32}"
    ): "ab249997a54355cd",
}


@pytest.mark.parametrize("text", sorted(KEYS_BEFORE_DISTRIBUTE))
def test_distribute_leaves_model_keys_unchanged(text):
    import yaml

    from qdcore.plugin_manager import build
    from qdcore.recipe import parse

    registry = build().registry
    recipe = parse(yaml.safe_load(text), Path("/nowhere/r.yaml"), registry)
    assert recipe.train.distribute == "auto"
    assert recipe.model_key() == KEYS_BEFORE_DISTRIBUTE[text]
    for mode in ("none", "mirrored", "multi-worker"):
        data = yaml.safe_load(text)
        data.setdefault("train", {})["distribute"] = mode
        assert parse(data, Path("/nowhere/r.yaml"), registry).model_key() == KEYS_BEFORE_DISTRIBUTE[text]
    data = yaml.safe_load(text)
    data.setdefault("train", {})["seed"] = 1  # a setting that does decide the weights still counts
    assert parse(data, Path("/nowhere/r.yaml"), registry).model_key() != KEYS_BEFORE_DISTRIBUTE[text]
