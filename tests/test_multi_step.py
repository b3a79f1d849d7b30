"""Several training steps in one call (train.make_multi_step): the same steps as one call each."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import qdcore.training.train as train_mod
from qdcore.config import ModelConfig, TrainConfig
from qdcore.draw import Draw
from qdcore.interfaces import ImageSet
from qdcore.training import optimizer
from qdcore.training.plan import StepPlan
from qdcore.training.train import call_bounds, steps_per_call, train

TINY = ModelConfig(height=10, width=13, T=2, enc_size=16, dec_size=16, z_size=4, read_n=3, write_n=3)
CFG = TrainConfig(batch_size=6, learning_rate=3e-3, warmup=2)
K = 5


def _batches(k=K, b=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((k, b, 10, 13)) > 0.7).astype(np.float32), rng.integers(0, 3, (k, b)).astype(np.int32)


def _weights(model):
    return np.concatenate([w.numpy().ravel() for w in model.weights])


def _fresh(plan, classes=None):
    model = Draw(TINY, seed=1, classes=classes)
    opt = optimizer.make(CFG, model.weights)
    return model, train_mod.make_train_step(model, opt, CFG, plan)


@pytest.mark.parametrize(
    "xla, classes, n, streams",
    [(False, None, K, 1), (False, ["a", "b", "c"], 3, 1), (True, None, 3, 1), (True, ["a", "b", "c"], K, 1)]
    + [(False, ["a", "b", "c"], K, 2)],  # an uncompiled plan's streams run inside each step of the loop
)
def test_n_steps_in_one_call_equal_n_single_steps(xla, classes, n, streams):
    xs, ys = _batches()
    plan = StepPlan("float32", xla, streams)
    model, step = _fresh(plan, classes)
    single = [
        [v.numpy() for v in step(tf.constant(xs[i]), tf.constant(7 + i, tf.int64), tf.constant(ys[i]))]
        for i in range(n)
    ]
    many_model, many_step = _fresh(plan, classes)
    lx, lz, g, ok, ran = (
        v.numpy()
        for v in many_step.many()(tf.constant(xs), tf.constant(np.arange(7, 7 + K)), tf.constant(ys), tf.constant(n))
    )
    assert ran == n and ok[:n].all() and not ok[n:].any()  # the padding slots never ran
    np.testing.assert_allclose(np.stack([lx, lz, g], 1)[:n], np.array([s[:3] for s in single]), rtol=2e-5)
    np.testing.assert_allclose(_weights(many_model), _weights(model), rtol=1e-5, atol=1e-6)


def test_a_non_finite_step_ends_the_call_with_the_last_good_model():
    xs, ys = _batches()
    xs[2, 0, 0, 0] = np.nan  # the third step's loss is NaN: its update is refused, and no later one runs
    plan = StepPlan("float32", True)
    model, step = _fresh(plan)
    for i in range(2):
        step(tf.constant(xs[i]), tf.constant(i, tf.int64))
    many_model, many_step = _fresh(plan)
    lx, _, _, ok, ran = (
        v.numpy() for v in many_step.many()(tf.constant(xs), tf.constant(np.arange(K)), tf.constant(ys), tf.constant(K))
    )
    assert ran == 3 and list(ok[:3]) == [True, True, False] and np.isnan(lx[2])
    np.testing.assert_allclose(_weights(many_model), _weights(model), rtol=1e-5, atol=1e-6)


def test_calls_end_where_the_loop_looks_at_the_model():
    assert call_bounds(0, 23, 64, [10]) == [(0, 10), (10, 20), (20, 23)]
    assert call_bounds(7, 23, 4, [10, 5]) == [(7, 10), (10, 14), (14, 15), (15, 19), (19, 20), (20, 23)]
    assert call_bounds(5, 5, 4, [10]) == []
    # a call holds about CALL_IMAGES images; XLA streams and strategies take one step a call
    assert steps_per_call(20, StepPlan("float32", True)) > 1
    assert steps_per_call(400, StepPlan("float32", True)) == 5 and steps_per_call(4096, StepPlan("float32", True)) == 1
    assert steps_per_call(20, StepPlan("float32", True, 2)) == 1  # XLA streams: one cluster each, no loop
    assert steps_per_call(20, StepPlan("bfloat16", False, 2)) > 1


def _data(n=60):
    rng = np.random.default_rng(0)
    return ImageSet((rng.random((n, 10, 13)) > 0.7).astype(np.uint8) * 255, "synthetic")


def _checkpoint_steps(workdir):
    state = tf.train.get_checkpoint_state(str(workdir / train_mod.CHECKPOINTS))
    return sorted(int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths)


def test_training_in_calls_matches_one_step_a_call(tmp_path, monkeypatch):
    """A whole run: the same weights, checkpoints, stop-rule checks and progress as one step a call."""
    cfg = TrainConfig(
        iterations=23, batch_size=8, checkpoint_every=10, check_every=5, learning_rate=3e-3, precision="float32"
    )
    seen = {}
    runs = {}
    for per_call in (1, None):
        if per_call == 1:
            monkeypatch.setattr(train_mod, "steps_per_call", lambda *a, **k: 1)
        else:
            monkeypatch.undo()
        calls = seen.setdefault(per_call, [])
        runs[per_call] = train(TINY, cfg, _data(), tmp_path / str(per_call), on_step=lambda s, *_: calls.append(s))
    assert train_mod.steps_per_call(8, StepPlan("float32", True)) > 1  # the second run took calls
    assert runs[1].step == runs[None].step == 23
    np.testing.assert_allclose(_weights(runs[None].model), _weights(runs[1].model), rtol=1e-5, atol=1e-6)
    assert _checkpoint_steps(tmp_path / "None") == _checkpoint_steps(tmp_path / "1")
    assert seen[1] == list(range(1, 24))
    assert seen[None] == [5, 10, 15, 20, 23]  # progress at each call's end: checks, checkpoints, the end
    import json

    checks = [json.loads((tmp_path / d / "stop.json").read_text())["checks"] for d in ("1", "None")]
    assert [c[0] for c in checks[0]] == [c[0] for c in checks[1]] == [5, 10, 15, 20]
    np.testing.assert_allclose([c[1] for c in checks[1]], [c[1] for c in checks[0]], rtol=1e-6)
