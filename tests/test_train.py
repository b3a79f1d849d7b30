"""The cycling trainer: splits, cycles, binarization, learning, checkpoints, resume, the NaN guard."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import qdcore.training.train as train_mod
from qdcore.config import ModelConfig, TrainConfig
from qdcore.draw import Draw
from qdcore.errors import QdError, TrainingError
from qdcore.interfaces import ImageSet
from qdcore.training import optimizer
from qdcore.training.plan import candidates as plan_candidates, cpu_count
from qdcore.training.step import split_sizes
from qdcore.training.train import Batches, evaluate, load, split, train

TINY = ModelConfig(height=10, width=13, T=2, enc_size=16, dec_size=16, z_size=4, read_n=3, write_n=3)


def _images(n=60, h=10, w=13, seed=0):
    rng = np.random.default_rng(seed)
    return ImageSet((rng.random((n, h, w)) > 0.7).astype(np.uint8) * 255, "synthetic")


def _cfg(**kw):
    return TrainConfig(**{"iterations": 4, "batch_size": 8, "checkpoint_every": 2, "learning_rate": 3e-3, **kw})


def _spy_steps(monkeypatch, before_step=None):
    """Wrap the compiled step so a test can count steps or tamper with the model first."""
    taken = []
    real = train_mod.make_train_step

    def make(model, opt, cfg, *args, **kw):
        step = real(model, opt, cfg, *args, **kw)

        def wrapped(x, k, *labels):
            if before_step:
                before_step(model, int(k))
            taken.append(int(k))
            return step(x, k, *labels)

        return wrapped

    monkeypatch.setattr(train_mod, "make_train_step", make)
    return taken


def test_split_is_deterministic_disjoint_and_complete():
    cfg = TrainConfig(holdout=0.1, seed=3)
    tr, held = split(1000, cfg)
    tr2, held2 = split(1000, cfg)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(held, held2)
    assert len(held) == 100 and not set(tr) & set(held)
    assert sorted(set(tr) | set(held)) == list(range(1000))
    assert not np.array_equal(held, split(1000, TrainConfig(holdout=0.1, seed=4))[1])


def test_every_example_once_per_cycle_reshuffled_each_cycle():
    data = _images(13)
    train_idx = np.arange(3, 13)
    b = Batches(data, train_idx, batch_size=3, seed=0)
    stream = np.concatenate([b.indices(k) for k in range(10)])  # 30 positions = 3 cycles
    cycles = stream.reshape(3, 10)
    for c in cycles:
        assert sorted(c) == list(train_idx)
    assert not np.array_equal(cycles[0], cycles[1]) and not np.array_equal(cycles[1], cycles[2])
    np.testing.assert_array_equal(b.indices(4), Batches(data, train_idx, 3, 0).indices(4))


def test_binarization_threshold_and_dynamic():
    grey = np.full((4, 10, 13), 128, np.uint8)
    grey[:, :, :5] = 200
    ind = np.arange(4)
    th = Batches(ImageSet(grey, "g", binarize="threshold", threshold=0.6), ind, 4, 0)(0)
    np.testing.assert_array_equal(th, (grey / 255 > 0.6).astype(np.float32))
    dyn = Batches(ImageSet(grey, "g", binarize="dynamic"), ind, 4, 0)
    first, again = dyn(0), dyn(1)  # batch 1 revisits the same four images in a new cycle
    assert set(np.unique(first)) == {0.0, 1.0}
    assert not np.array_equal(first, again)
    assert abs(first[:, :, 5:].mean() - 128 / 255) < 0.1
    plain = Batches(ImageSet(grey, "g"), ind, 4, 0)(0)
    np.testing.assert_allclose(plain, grey / 255, atol=1e-7)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_loss_falls_on_real_quickdraw_data(quickdraw_dir, tmp_path, precision):
    images = np.load(quickdraw_dir / "numpy_bitmap" / "cat.npy", mmap_mode="r").reshape(-1, 28, 28)[:1000]
    data = ImageSet(images, "quickdraw:cat")
    cfg = ModelConfig(T=4, enc_size=64, dec_size=64, z_size=8)
    before = evaluate(train(cfg, _cfg(iterations=0), data, tmp_path / "a"), data, _cfg())
    after = evaluate(
        train(
            cfg,
            _cfg(iterations=40, batch_size=32, checkpoint_every=100, precision=precision),
            data,
            tmp_path / "b",
        ),
        data,
        _cfg(),
    )
    assert before["n_images"] == after["n_images"] == 100
    assert after["targets"] == "greyscale"
    assert np.isfinite(after["bound"]) and after["bound"] == pytest.approx(after["lx"] + after["lz"])
    assert after["bound"] < before["bound"] - 50, (before, after)


def test_forced_precision_picks_that_arithmetic_without_measuring(monkeypatch):
    """auto is measured (tests/test_plan.py); a forced precision still decides the arithmetic."""
    import qdcore.training.plan as plan_mod

    monkeypatch.setattr(plan_mod, "time_plan", lambda *a, **kw: pytest.fail("a forced short run measured"))
    monkeypatch.setattr(plan_mod, "time_plans", lambda *a, **kw: pytest.fail("a forced short run measured"))
    f32 = train_mod.plan_step(TINY, TrainConfig(precision="float32", iterations=10)).plan
    assert f32 == train_mod.StepPlan("float32", False, 1, name="float32")  # short: nothing compiled
    bf16 = train_mod.plan_step(
        TINY, TrainConfig(precision="bfloat16")
    ).plan  # the one bfloat16 plan: nothing to measure
    assert bf16.precision == "bfloat16" and not bf16.jit_compile and bf16.streams >= 1


def test_step_plans():
    assert plan_candidates(400, cpu_count(), True, [], "float32")[0] == train_mod.StepPlan(
        "float32", True, 1, name="float32-xla"
    )
    plan = plan_candidates(400, cpu_count(), True, [], "bfloat16")[0]
    assert plan.precision == "bfloat16" and not plan.jit_compile and plan.streams >= 1
    # A stream never gets fewer than MIN_STREAM images.
    assert plan_candidates(8, cpu_count(), True, [], "bfloat16")[0].streams == 1
    assert split_sizes(7, 3) == [3, 2, 2]


@pytest.mark.parametrize(
    "precision, xla, rtol, atol",
    [("float32", False, 1e-5, 1e-6), ("bfloat16", False, 1e-3, 1e-4), ("float32", True, 1e-5, 1e-6)],
)
def test_streams_split_the_batch_without_changing_the_step(precision, xla, rtol, atol):
    """Splitting the batch reorders sums only: same loss, gradient norm and update. With XLA
    each stream is its own compiled cluster, compared with the uncompiled single stream
    (XLA draws the step's noise differently inside one cluster)."""
    cfg = _cfg(batch_size=7, precision=precision)
    x = tf.constant(_images(7).as_float(np.arange(7)))
    k = tf.constant(3, tf.int64)
    out = {}
    for streams in (1, 3):
        model = Draw(TINY, seed=1)
        plan = train_mod.StepPlan(precision, xla and streams > 1, streams)
        opt = optimizer.make(cfg, model.weights)
        # The learning rate follows the optimizer's step count (Keras' convention): put it
        # at step 3, the batch this test feeds, as a run reaching that batch would have it.
        opt.iterations.assign(3)
        step = train_mod.make_train_step(model, opt, cfg, plan)
        lx, lz, gnorm, ok = (v.numpy() for v in step(x, k))
        assert ok
        out[streams] = np.array([lx, lz, gnorm]), np.concatenate([w.numpy().ravel() for w in model.weights])
    np.testing.assert_allclose(out[3][0], out[1][0], rtol=rtol)
    # Weights after the update: bfloat16 rounds each stream's weight gradient on its own,
    # so there the sums differ in the last bits. Adam's first update is about +-learning_rate
    # whatever the gradient's size, so a gradient component within rounding of zero may take
    # either sign, depending on how TensorFlow's threads happened to sum it (a loaded machine
    # sums differently): such a weight moves at most 2 x 1.07 learning rates apart (the bias
    # corrections at step 3). Every other weight agrees within the tolerance; those fragile
    # ones are a property of the data, a few in a thousand, not of the load.
    got, want = out[3][1], out[1][1]
    apart = np.abs(got - want) > atol + rtol * np.abs(want)
    assert apart.mean() <= (0.01 if precision == "bfloat16" else 0.001), f"{apart.sum()} of {apart.size} weights differ"
    assert np.abs(got - want).max() <= 2.2 * cfg.learning_rate


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    trained = train(TINY, _cfg(), _images(), tmp_path)
    loaded = load(TINY, tmp_path)
    assert loaded.step == trained.step == 4
    np.testing.assert_array_equal(trained.model.sample(3, seed=5).canvases, loaded.model.sample(3, seed=5).canvases)
    x = _images(2).as_float()
    np.testing.assert_array_equal(
        trained.model.reconstruct(x, seed=1).canvases, loaded.model.reconstruct(x, seed=1).canvases
    )
    np.testing.assert_array_equal(loaded.last_batch, trained.last_batch)
    assert loaded.last_batch.shape == (8, 10, 13)


def test_finished_model_is_reused_and_restart_retrains(tmp_path, monkeypatch):
    train(TINY, _cfg(), _images(), tmp_path)
    taken = _spy_steps(monkeypatch)
    again = train(TINY, _cfg(), _images(), tmp_path)
    assert again.step == 4 and taken == []
    train(TINY, _cfg(), _images(), tmp_path, restart=True)
    assert taken == [0, 1, 2, 3]


def test_load_without_a_finished_model_is_a_clear_error(tmp_path):
    with pytest.raises(QdError, match="no finished model"):
        load(TINY, tmp_path)


def test_resume_continues_step_count_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data, cfg = _images(), _cfg(iterations=6, checkpoint_every=3)

    def crash(model, k):
        if k == 4:
            raise KeyboardInterrupt

    _spy_steps(monkeypatch, crash)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, cfg, data, tmp_path / "resumed")
    with pytest.raises(QdError):
        load(TINY, tmp_path / "resumed")
    monkeypatch.undo()
    taken = _spy_steps(monkeypatch)
    resumed = train(TINY, cfg, data, tmp_path / "resumed")
    assert taken == [3, 4, 5] and resumed.step == 6
    straight = train(TINY, cfg, data, tmp_path / "straight")
    for a, b in zip(resumed.model.weights, straight.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_non_finite_loss_raises_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    def poison(model, k):
        if k == 3:
            model.out_kernel.assign(tf.fill(model.out_kernel.shape, np.nan))

    _spy_steps(monkeypatch, poison)
    with pytest.raises(TrainingError, match="non-finite loss at step 4"):
        train(TINY, _cfg(iterations=6), _images(), tmp_path)
    assert not (tmp_path / train_mod.FINISHED).exists()
    latest = tf.train.latest_checkpoint(str(tmp_path / train_mod.CHECKPOINTS))
    assert latest.endswith("-2")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_evaluate_names_binarized_targets(tmp_path):
    data = _images()
    data.binarize = "threshold"
    trained = train(TINY, _cfg(iterations=1), data, tmp_path)
    result = evaluate(trained, data, _cfg())
    assert result["targets"] == "binarized (threshold)" and result["n_images"] == 6
    with pytest.raises(QdError, match="holdout is 0"):
        evaluate(trained, data, _cfg(holdout=0.0))


def test_an_old_run_with_the_hand_written_adam_resumes_exactly(tmp_path, monkeypatch):
    """tests/data/legacy-adam: the checkpoint at step 3 of a 6-step run made by qd before it
    used Keras' Adam (commit d06c7d0), and that version's weights after all 6 steps straight.
    Resuming it now moves the old Adam moments into Keras' slots and ends on the same weights."""
    import shutil
    from pathlib import Path

    # That version ran this short run's step under XLA; the same plan gives the same rounding.
    monkeypatch.setenv("QD_STEP_PLAN", "float32-xla")

    legacy = Path(__file__).parent / "data" / "legacy-adam"
    shutil.copytree(legacy, tmp_path / train_mod.CHECKPOINTS, ignore=shutil.ignore_patterns("*.npz"))
    data, cfg = _images(), _cfg(iterations=6, checkpoint_every=3)
    resumed = train(TINY, cfg, data, tmp_path)
    assert resumed.step == 6
    expected = np.load(legacy / "expected_weights.npz")
    for i, w in enumerate(resumed.model.weights):
        np.testing.assert_allclose(w.numpy(), expected[f"arr_{i}"], rtol=1e-5, atol=1e-6)
    # Its new checkpoints are Keras' layout: a later resume takes the ordinary path.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / train_mod.CHECKPOINTS)))
    assert not optimizer.is_legacy(reader)


def test_summaries_hold_losses_learning_rate_and_a_prior_sheet(tmp_path):
    from qdcore.training import summaries

    train(TINY, _cfg(iterations=20, checkpoint_every=10), _images(), tmp_path)
    tags, images = {}, []
    for f in (tmp_path / summaries.FOLDER).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "images":
                    images.append(tf.io.decode_png(tf.make_ndarray(v.tensor)[2]).numpy())
                else:
                    tags.setdefault(v.tag, []).append(event.step)
    assert {"loss/L^x", "loss/L^z", "train/learning_rate", "train/gradient_norm", "train/steps_per_s"} <= set(tags)
    assert sorted(tags["loss/L^x"]) == [10, 20]
    assert len(images) == 2 and images[0].shape == (4 * 10, 4 * 13, 1)  # a 4 x 4 sheet at each checkpoint


def test_mirrored_strategy_trains_like_the_single_device_step(tmp_path):
    """train.distribute: mirrored runs the strategy step (sharded dataset, all-reduce, Keras
    Adam on mirrored variables); over this machine's one device it must agree with the
    single-device step to float32 rounding."""
    data = _images()
    plain = train(TINY, _cfg(iterations=4, distribute="none"), data, tmp_path / "none")
    mirrored = train(TINY, _cfg(iterations=4, distribute="mirrored"), data, tmp_path / "mirrored")
    assert mirrored.step == plain.step == 4
    for a, b in zip(plain.model.weights, mirrored.model.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        np.load(tmp_path / "none" / train_mod.LAST_BATCH), np.load(tmp_path / "mirrored" / train_mod.LAST_BATCH)
    )


def _labelled(n=60, classes=("cat", "dog", "fish"), seed=0):
    data = _images(n, seed=seed)
    labels = (np.arange(n) % len(classes)).astype(np.int64)
    return ImageSet(data.images, "labelled", labels=labels, classes=list(classes))


def test_each_replica_gets_its_rows_labels():
    """Under a strategy a replica loads rows lo:lo+B/R of batch k: its labels must be those
    same rows' labels, so every replica conditions its part of the batch on the right classes."""
    from qdcore.training import distribute

    data = _labelled(n=30)
    batches = Batches(data, np.arange(30), batch_size=6, seed=2)

    class TwoReplicas:  # what the strategy does with the per-pipeline function, for 2 local replicas
        num_replicas_in_sync = 2

        def distribute_datasets_from_function(self, fn):
            return fn(tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2))

    elements = list(distribute.dataset(distribute.Placement("mirrored", TwoReplicas()), batches, 1, 4))
    assert len(elements) == 6  # 3 batches x 2 replicas
    for e in elements:
        k, lo = int(e["k"]), int(e["lo"])
        assert lo in (0, 3)
        np.testing.assert_array_equal(e["x"].numpy(), batches(k)[lo : lo + 3])
        np.testing.assert_array_equal(e["y"].numpy(), batches.labels_of(k)[lo : lo + 3])
    assert any(e["y"].numpy().any() for e in elements)  # real labels, not an unlabelled set's zeros


def test_mirrored_strategy_trains_a_conditional_model_like_the_single_device_step(tmp_path):
    """Labels travel with the strategy's batches: a class-conditional model trained by the
    strategy step ends where the single-device step does, conditioning rows included, and
    its finished.json names the classes."""
    import json

    data = _labelled()
    plain = train(TINY, _cfg(iterations=4, distribute="none"), data, tmp_path / "none")
    mirrored = train(TINY, _cfg(iterations=4, distribute="mirrored"), data, tmp_path / "mirrored")
    assert plain.model.classes and mirrored.model.classes
    for a, b in zip(plain.model.weights, mirrored.model.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "mirrored" / "finished.json").read_text())["classes"] == ["cat", "dog", "fish"]
    assert mirrored.last_by_class is not None
