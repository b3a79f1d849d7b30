"""The stop rule (qdcore/training/stopping.py): the rule on sequences of figures, and the trainer
stopping by it, saying why, resuming, and keeping the cache keys of recipes written before it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qdcore.training import stopping
from qdcore.config import TrainConfig
from qdcore.training.stopping import Plateau

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _run(values, patience=3, min_gain=1.0):
    """The step of the first stop (checks every 10 steps), or None."""
    rule = Plateau(patience, min_gain)
    for i, v in enumerate(values):
        if rule.observe(10 * (i + 1), v):
            return 10 * (i + 1)
    return None


def test_a_flat_figure_stops_after_patience_checks():
    assert _run([120.0, 100.0, 99.8, 100.3, 99.5, 99.9]) == 50  # best 100 at step 20, three checks since
    assert "flat for 3 checks" in _reason([120.0, 100.0, 99.8, 100.3, 99.5])


def _reason(values, patience=3):
    rule = Plateau(patience, 1.0, stopping.TRAINING)
    for i, v in enumerate(values):
        rule.observe(10 * (i + 1), v)
    return rule.reason()


def test_a_figure_still_improving_does_not_stop():
    assert _run([200.0 - 1.5 * i for i in range(100)]) is None
    # noisy, but every window of 3 checks gains more than 1 nat
    assert _run([200.0 - 0.6 * i + (0.5 if i % 2 else 0.0) for i in range(100)]) is None


def test_a_creep_below_the_margin_counts_as_flat():
    # 0.3 nats per check: the best moves only once the gain reaches 1 nat, every 4th check
    assert _run([100.0 - 0.3 * i for i in range(20)], patience=4) is None
    assert _run([100.0 - 0.3 * i for i in range(20)], patience=3) == 40


def test_a_worse_figure_is_flat_and_a_zero_margin_takes_any_gain():
    assert _run([100.0, 101.0, 102.0, 103.0]) == 40
    assert _run([100.0 - 0.01 * i for i in range(50)], min_gain=0.0) is None


def test_resumed_replays_the_recorded_checks_of_the_same_rule_only():
    cfg = TrainConfig(patience=3, min_gain=1.0, check_every=10, decay_left=1.0)
    record = {
        "rule": stopping.rule_of(cfg),
        "signal": stopping.TRAINING,
        "checks": [[10, 100.0], [20, 100.5], [30, 99.9], [40, 100.2]],
    }
    rule = Plateau.resumed(cfg, stopping.TRAINING, record, upto=35)
    assert rule.checks == [(10, 100.0), (20, 100.5), (30, 99.9)] and rule.flat == 2 and rule.best_step == 10
    assert rule.observe(40, 100.2)
    other = TrainConfig(patience=4, min_gain=1.0, check_every=10, decay_left=1.0)
    assert Plateau.resumed(other, stopping.TRAINING, record, upto=35).checks == []
    assert Plateau.resumed(cfg, stopping.HELDOUT, record, upto=35).checks == []


def test_a_stop_is_final_only_under_the_rule_that_made_it():
    cfg = TrainConfig()
    stopped = {"step": 700, "stopped": {"step": 700, "reason": "r", "rule": stopping.rule_of(cfg)}}
    assert not stopping.needs_more(stopped, cfg)
    assert stopping.needs_more(stopped, TrainConfig(stop="budget"))
    assert stopping.needs_more(stopped, TrainConfig(patience=cfg.patience + 1))
    assert not stopping.needs_more({"step": 10_000}, TrainConfig(stop="budget"))  # trained to its budget
    assert not stopping.needs_more({"step": 10_000}, cfg)


def test_flat_checks_count_only_in_the_last_part_of_the_decay():
    # cosine: a quarter of the decay is left at 2/3 of the iterations
    assert stopping.watch_from(TrainConfig(iterations=10_000)) == 6667
    assert stopping.watch_from(TrainConfig(iterations=10_000, decay_left=0.5)) == 5000
    assert stopping.watch_from(TrainConfig(iterations=10_000, decay_left=1.0)) == 0
    assert stopping.watch_from(TrainConfig(iterations=10_000, decay_left=0.0)) == 10_000  # never stops early
    assert stopping.watch_from(TrainConfig(iterations=10_000, lr_schedule="constant")) == 0  # nothing to wait for
    rule = Plateau(3, 1.0, watch_from=45)
    flat = [120.0, 100.0, 99.8, 100.3, 99.5, 99.9, 100.1, 99.7, 100.2]  # checks at steps 10..90
    stops = [step for step, v in zip(range(10, 100, 10), flat) if rule.observe(step, v)]
    assert stops[0] == 70  # flat checks at 50, 60, 70; those at 30 and 40 did not count
    assert "since step 20" in rule.reason()


def test_a_stop_under_an_older_rule_trains_on_to_the_new_one():
    """A model stopped before decay_left existed (its recorded rule lacks it) trains on."""
    old = {"stop": "plateau", "check_every": 100, "patience": 5, "min_gain": 1.0}
    assert stopping.needs_more({"step": 4000, "stopped": {"step": 4000, "reason": "r", "rule": old}}, TrainConfig())


def test_the_held_out_bound_is_watched_only_where_enough_images_are_held_out():
    assert stopping.signal_for(stopping.TRUSTED_HOLDOUT, one_device=True) == stopping.HELDOUT
    assert stopping.signal_for(stopping.TRUSTED_HOLDOUT - 1, one_device=True) == stopping.TRAINING
    assert stopping.signal_for(10_000, one_device=False) == stopping.TRAINING


# --- cache keys ---------------------------------------------------------------------------

# TrainConfig().key_dict() before the stop rule existed; every model cached before it was keyed
# with this section, so it must not change (models.md: a changed key retrains silently).
OLD_TRAIN_KEY = {
    "batch_size": 400,
    "beta1": 0.5,
    "checkpoint_every": 1000,
    "clip_norm": 5.0,
    "holdout": 0.1,
    "iterations": 10000,
    "learning_rate": 0.002,
    "lr_final_fraction": 0.05,
    "lr_schedule": "cosine",
    "precision": "auto",
    "seed": 0,
    "warmup": 200,
}


def test_the_stop_settings_stay_out_of_the_train_key():
    assert TrainConfig().key_dict() == OLD_TRAIN_KEY
    assert (
        TrainConfig(stop="budget", check_every=7, patience=2, min_gain=0.25, decay_left=0.5).key_dict() == OLD_TRAIN_KEY
    )
    assert TrainConfig(iterations=5).key_dict() != OLD_TRAIN_KEY  # what is learned still counts


# The shipped recipes' model keys computed before the stop rule existed. The stroke recipes
# (coffee-cup, crooked-triangle, hexagon, whale, windmill) left this list when they began to
# fine-tune the shipped pack (`model.start: zoo-26`), and zoo-26 when its model took a 10x10
# write patch (docs/quality.md): another model, so another key on purpose.
OLD_KEYS = {
    "apple-quality": "ad2e9b480674766a",
    "apple": "641825f978c339b9",
    "cat-quality": "d2e21ea1ade04d3a",
    "cat": "d4b2dae6e60b0825",
    "zoo-345": "3e9bd9fe6d6ff960",
}


@pytest.mark.parametrize("name", sorted(OLD_KEYS))
def test_shipped_recipes_keep_their_model_keys(name):
    from qdcore.plugin_manager import build
    from qdcore.recipe import load

    registry = build().registry
    recipe = load(RECIPES / f"{name}.yaml", registry)
    assert recipe.model_key() == OLD_KEYS[name]
    budget = load(RECIPES / f"{name}.yaml", registry, ["train.stop=budget", "train.patience=9"])
    assert budget.model_key() == OLD_KEYS[name]


# --- the trainer -------------------------------------------------------------------------

tf = pytest.importorskip("tensorflow")

import qdcore.training.train as train_mod  # noqa: E402
from qdcore.config import ModelConfig  # noqa: E402
from qdcore.errors import Cancelled  # noqa: E402
from qdcore.interfaces import ImageSet  # noqa: E402
from qdcore.reporter import Reporter  # noqa: E402

TINY = ModelConfig(height=10, width=13, T=2, enc_size=16, dec_size=16, z_size=4, read_n=3, write_n=3)


def _images(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return ImageSet((rng.random((n, 10, 13)) > 0.7).astype(np.uint8) * 255, "synthetic")


def _cfg(**kw):
    return TrainConfig(
        **{
            "iterations": 40,
            "batch_size": 8,
            "checkpoint_every": 8,
            "check_every": 4,
            "patience": 2,
            "min_gain": 1.0,
            "decay_left": 1.0,  # flat checks count from the start (the gate: test below)
            **kw,
        }
    )


def _loss_of(monkeypatch, loss):
    """Make the compiled step report loss(k) as L^x (L^z 0): the stop rule's figure is then
    decided by the test, whatever the tiny model learns. The update itself still runs."""
    taken = []
    real = train_mod.make_train_step

    def make(model, opt, cfg, *args, **kw):
        step = real(model, opt, cfg, *args, **kw)

        def wrapped(x, k, *labels):
            taken.append(int(k))
            _, _, gnorm, ok = step(x, k, *labels)
            return tf.constant(loss(int(k)), tf.float32), tf.constant(0.0), gnorm, ok

        return wrapped

    monkeypatch.setattr(train_mod, "make_train_step", make)
    return taken


def _flat(k):
    return 100.0 + 0.1 * (k % 3)


def _improving(k):
    return 500.0 - k  # 4 nats per check of 4 steps


def test_a_plateau_stops_the_run_says_why_and_records_it(tmp_path, monkeypatch, capsys):
    taken = _loss_of(monkeypatch, _flat)
    trained = train_mod.train(TINY, _cfg(), _images(), tmp_path, reporter=Reporter.to_stderr())
    # first check (step 4) sets the best; checks 8 and 12 are flat: patience 2
    assert trained.step == 12 and taken == list(range(12))
    err = capsys.readouterr().err
    assert "plan: " in err and "full budget 40 steps of 8 images" in err
    assert "stopped at step 12 of 40: training loss flat for 2 checks" in err
    finished = json.loads((tmp_path / "finished.json").read_text())
    assert finished["step"] == 12
    assert finished["stopped"]["step"] == 12 and "flat for 2 checks" in finished["stopped"]["reason"]
    assert [c[0] for c in json.loads((tmp_path / stopping.STATE).read_text())["checks"]] == [4, 8, 12]
    assert train_mod.load(TINY, tmp_path).step == 12  # the stop's checkpoint


def test_a_plateau_early_in_the_decay_does_not_stop_the_run(tmp_path, monkeypatch):
    taken = _loss_of(monkeypatch, _flat)
    cfg = _cfg(decay_left=0.25)  # flat checks count from step 27 (2/3 of 40)
    trained = train_mod.train(TINY, cfg, _images(), tmp_path)
    assert stopping.watch_from(cfg) == 27
    assert trained.step == 32 and taken == list(range(32))  # flat at checks 28 and 32


def test_a_run_still_improving_trains_its_whole_budget(tmp_path, monkeypatch):
    taken = _loss_of(monkeypatch, _improving)
    trained = train_mod.train(TINY, _cfg(), _images(), tmp_path)
    assert trained.step == 40 and taken == list(range(40))
    assert "stopped" not in json.loads((tmp_path / "finished.json").read_text())


def test_stop_budget_keeps_the_old_behaviour(tmp_path, monkeypatch):
    taken = _loss_of(monkeypatch, _flat)
    assert train_mod.train(TINY, _cfg(stop="budget"), _images(), tmp_path).step == 40
    assert taken == list(range(40)) and not (tmp_path / stopping.STATE).exists()


def test_a_stopped_run_is_not_trained_again_unless_the_rule_changes(tmp_path, monkeypatch):
    data = _images()
    taken = _loss_of(monkeypatch, _flat)
    train_mod.train(TINY, _cfg(), data, tmp_path)
    taken.clear()
    again = train_mod.train(TINY, _cfg(), data, tmp_path)
    assert again.step == 12 and taken == []
    # stop: budget trains on from the stop to the budget, on the same trajectory
    on = train_mod.train(TINY, _cfg(stop="budget"), data, tmp_path)
    assert on.step == 40 and taken == list(range(12, 40))
    assert "stopped" not in json.loads((tmp_path / "finished.json").read_text())
    taken.clear()
    assert train_mod.train(TINY, _cfg(), data, tmp_path).step == 40 and taken == []


def test_an_interrupted_run_resumes_and_stops_where_the_uninterrupted_one_did(tmp_path, monkeypatch):
    data = _images()
    taken = _loss_of(monkeypatch, _flat)
    with pytest.raises(Cancelled):
        train_mod.train(TINY, _cfg(), data, tmp_path, on_step=lambda step, *a: step == 10)
    taken.clear()
    resumed = train_mod.train(TINY, _cfg(), data, tmp_path)
    # checks 4 and 8 replayed from stop.json: check 12 is the second flat one
    assert resumed.step == 12 and taken == [10, 11]


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe garbage",
        b'{"rule": null, "signal": "training loss", "checks": [[4, "flat"]]}',
        b'{"rule": null, "signal": "training loss", "checks": 5}',
        b'{"rule": "plateau", "checks": []}',
        b"[1, 2, 3]",
        b'{"checks": [[4, NaN]]}',
        b'{"checks": [[-4, 1.0]]}',
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["binary", "a-string-figure", "checks-a-number", "rule-a-string", "a-list", "nan", "negative-step", "deep"],
)
def test_a_damaged_stop_record_is_set_aside_and_the_run_goes_on(tmp_path, monkeypatch, content):
    """Issue 31: a garbled stop.json made every later run of its recipe exit 1 with `unexpected`."""
    data = _images()
    _loss_of(monkeypatch, _flat)
    with pytest.raises(Cancelled):
        train_mod.train(TINY, _cfg(), data, tmp_path, on_step=lambda step, *a: step == 6)
    (tmp_path / stopping.STATE).write_bytes(content)
    with pytest.warns(UserWarning, match="stop.json is damaged"):
        resumed = train_mod.train(TINY, _cfg(), data, tmp_path)
    assert resumed.step > 6 and (tmp_path / "stop.json.damaged").read_bytes() == content
    assert stopping.read_state(tmp_path)["checks"]  # the new record, written afresh


def test_enough_held_out_images_are_judged_by_their_bound(tmp_path, monkeypatch):
    data = _images(n=3000)  # 300 held out
    _loss_of(monkeypatch, _improving)  # the training loss alone would never stop it
    trained = train_mod.train(TINY, _cfg(iterations=16, min_gain=1e6), data, tmp_path)
    state = json.loads((tmp_path / stopping.STATE).read_text())
    assert state["signal"] == stopping.HELDOUT and trained.step == 12
    bound = train_mod.evaluate(trained, data, _cfg())["bound"]
    assert state["checks"][-1][1] == pytest.approx(bound, rel=1e-5)


# --- a batch that fits the data (mixing.fit_batch) ---------------------------------------


def test_a_batch_never_holds_more_than_the_training_set():
    from qdcore.training.mixing import fit_batch, split

    small, big = _images(n=25), _images(n=1000)
    n_train = len(split(25, TrainConfig(), None)[0])
    assert n_train == 23  # windmill's 25 drawings, 2 held out
    assert fit_batch(TrainConfig(batch_size=400), small).batch_size == 23
    assert fit_batch(TrainConfig(batch_size=400), big).batch_size == 400
    assert fit_batch(TrainConfig(batch_size=16), small).batch_size == 16
    # a distributed batch must split evenly over its replicas: it is kept as the recipe says
    assert fit_batch(TrainConfig(batch_size=400, distribute="mirrored"), small).batch_size == 400


def test_the_trainer_trains_a_small_set_in_batches_of_the_whole_set(tmp_path, capsys):
    data = _images(n=12)  # 11 trained on, 1 held out
    trained = train_mod.train(
        TINY, _cfg(iterations=6, batch_size=64, stop="budget"), data, tmp_path, reporter=Reporter.to_stderr()
    )
    err = capsys.readouterr().err
    assert "batch: 11 images, the whole training set (train.batch_size 64 would hold each drawing 6 times)" in err
    assert "full budget 6 steps of 11 images" in err
    assert trained.step == 6 and len(trained.last_batch) == 11
    # loaded again: the same model, nothing trained
    assert len(train_mod.train(TINY, _cfg(iterations=6, batch_size=64, stop="budget"), data, tmp_path).last_batch) == 11
