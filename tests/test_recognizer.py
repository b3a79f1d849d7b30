"""The recognizer: its hook, recipe section and figures, generate.best_of, and the built-in
`cnn` trained on the real Quick, Draw! bitmaps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qdcore import (
    Classifier,
    Drawing,
    InputError,
    PluginError,
    QdError,
    Recognizer,
    RecipeError,
    UnknownNameError,
    hookimpl,
)
from qdcore import engine, recognizer as recog
from qdcore.interfaces import Context
from qdcore.plugin_manager import build
from qdcore.recipe import load, parse

BUILTINS = "datasets,seeds,filters,writers,recognizers,generators"
TINY = {
    "categories": ["cat", "apple", "rainbow", "banana"],
    "per_class": 400,
    "holdout": 300,
    "epochs": 3,
    "width": 8,
    "features": 32,
}


# --- a recognizer with no TensorFlow: "how much ink" stands in for "how much like the category"


class InkClassifier(Classifier):
    classes = ["apple", "cat"]

    def classify(self, images):
        ink = np.asarray(images, np.float32).reshape(len(images), -1).mean(axis=1)
        p_cat = np.clip(ink * 4, 0, 1)
        return np.stack([1 - p_cat, p_cat], axis=1), np.stack([ink, ink**2], axis=1)

    def drawings(self, category):
        return np.zeros((4, 28, 28), np.float32), np.zeros((0, 28, 28), np.float32)


class InkRecognizer(Recognizer):
    def __init__(self, knows: list[str] = ["apple", "cat"]):  # noqa: B006 - read only
        self.knows = knows

    def categories(self, ctx):
        return self.knows

    def load(self, ctx):
        return InkClassifier()


class InkPlugin:
    @hookimpl
    def qd_register_recognizers(self, register):
        register("ink", InkRecognizer, description="ink coverage as the cat probability")


class RivalCNN:
    @hookimpl
    def qd_register_recognizers(self, register):
        register("cnn", InkRecognizer, description="same name as the built-in")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    return build(extra=[("inkplugin", InkPlugin())]).registry


def recipe(registry, tmp_path, **sections):
    data = {"name": "t", "dataset": {"use": "quickdraw", "category": "cat"}, **sections}
    return parse(data, tmp_path / "t.yaml", registry)


# --- the hook and the registry ------------------------------------------------------------------


def test_recognizers_are_registered_with_their_plugin(registry):
    assert registry.get("recognizers", "ink").plugin == "inkplugin"
    assert registry.get("recognizers", "cnn").plugin == "recognizers"


def test_duplicate_recognizer_names_fail_naming_both_plugins(monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    with pytest.raises(
        PluginError, match=r"recognizer 'cnn' is registered twice: by plugin 'recognizers' and by plugin 'rival'"
    ):
        build(extra=[("rival", RivalCNN())])


def test_unknown_recognizer_suggests_the_close_name(registry, tmp_path):
    with pytest.raises(UnknownNameError) as e:
        recipe(registry, tmp_path, recognizer={"use": "cnm"})
    assert "t.yaml: recognizer.use: Can't find recognizer 'cnm'. Did you mean 'cnn'?" in str(e.value)
    assert "Available: cnn, ink" in str(e.value)


# --- the recipe: `recognizer:` and generate.best_of ----------------------------------------------


def test_recognizer_parameters_are_checked_with_their_location(registry, tmp_path):
    with pytest.raises(RecipeError, match=r"recognizer.epochs: 0 is out of range"):
        recipe(registry, tmp_path, recognizer={"use": "cnn", "epochs": 0})
    with pytest.raises(RecipeError, match=r"recognizer.epoch: unknown key 'epoch'"):
        recipe(registry, tmp_path, recognizer={"use": "cnn", "epoch": 2})
    with pytest.raises(RecipeError, match=r"generate.best_of: 0 is out of range"):
        recipe(registry, tmp_path, generate={"best_of": 0})


def test_the_default_recognizer_is_cnn_and_a_recipe_may_name_another(registry, tmp_path):
    assert recipe(registry, tmp_path).recognizer.use == "cnn"
    assert recipe(registry, tmp_path, recognizer="ink").recognizer.use == "ink"


def test_best_of_needs_a_category_and_an_installed_recognizer(tmp_path, monkeypatch, registry):
    with pytest.raises(
        RecipeError, match="generate.best_of: best_of keeps the pictures most like the recipe's category"
    ):
        parse(
            {"dataset": {"use": "images", "path": str(tmp_path)}, "generate": {"best_of": 2}},
            tmp_path / "t.yaml",
            registry,
        )
    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers")
    without = build().registry
    assert recipe(without, tmp_path).recognizer is None  # not needed: the recipe still works
    with pytest.raises(UnknownNameError, match="Can't find recognizer 'cnn'"):
        recipe(without, tmp_path, generate={"best_of": 2})


def test_best_of_and_the_recognizer_leave_the_model_key_alone(registry, tmp_path):
    plain = recipe(registry, tmp_path)
    picky = recipe(registry, tmp_path, generate={"best_of": 4}, recognizer={"use": "cnn", "epochs": 2})
    assert picky.model_key() == plain.model_key()
    assert plain.with_overrides(best_of=3).generate.best_of == 3
    with pytest.raises(RecipeError, match="--best-of"):
        plain.with_overrides(best_of=65)


# --- the figures ----------------------------------------------------------------------------------


def test_best_of_keeps_the_most_confident():
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.7])
    assert recog.best_of(scores, 3).tolist() == [1, 3, 5]  # the top 3, in candidate order
    assert recog.best_of(scores, 2, group=3).tolist() == [1, 3]  # the best of each run of 3
    assert recog.best_of(np.ones(4), 2).tolist() == [0, 1]  # ties: the earlier candidates


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(400, 16)), 0)
    a[:, :3] = 0  # dead units make the covariances singular
    b = np.maximum(rng.normal(size=(400, 16)), 0)
    b[:, :3] = 0
    assert recog.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    near, far = recog.frechet_distance(a, b), recog.frechet_distance(a, b + 1.0)
    assert 0 < near < far
    assert recog.frechet_distance(b, a) == pytest.approx(near, rel=1e-6)


def test_frames_are_scaled_back_to_28_and_dark_ink_is_inverted():
    frames = np.ones((2, 84, 84), np.float32)  # white paper
    frames[:, 30:54, 30:54] = 0.0  # a dark square in the middle
    out = recog.to_bitmaps(frames)
    assert out.shape == (2, 28, 28) and out.dtype == np.float32
    assert out[:, 14, 14].tolist() == [1.0, 1.0] and out[:, 0, 0].tolist() == [0.0, 0.0]
    bright = np.zeros((1, 28, 28), np.float32)
    bright[0, 5, 5] = 0.7
    assert np.array_equal(recog.to_bitmaps(bright), bright)  # ink already bright on 0: unchanged


class StubModel:
    """Sample i of any call is a square of ink with side i % 28 (so later ones are inkier)."""

    def sample(self, n, seed=None):
        canvases = np.zeros((2, n, 28, 28), np.float32)
        for i in range(n):
            canvases[:, i, : i % 28, : i % 28] = 1.0
        return Drawing(canvases, np.zeros((2, n, 3), np.float32) + np.arange(n)[None, :, None], 5, "prior")

    def reconstruct(self, seeds, seed=None):
        canvases = np.repeat(np.asarray(seeds, np.float32)[None], 2, axis=0).copy()
        for i in range(len(seeds)):
            canvases[:, i, 0, : i % 4] = 1.0  # the k-th try at a seed image gets k - 1 extra pixels
        return Drawing(canvases, None, 5, "reconstruction")


def test_engine_best_of_keeps_the_candidates_the_recognizer_likes_best(registry, tmp_path):
    r = recipe(registry, tmp_path, generate={"n": 3, "best_of": 4}, recognizer="ink")
    built = engine.prepare(r)
    drawing = engine.draw(r, built, StubModel(), None)
    assert drawing.canvases.shape == (2, 3, 28, 28)
    assert drawing.windows[0, :, 0].tolist() == [9, 10, 11]  # the inkiest 3 of 12 prior samples
    seeds = np.zeros((3, 28, 28), np.float32)
    drawing = engine.draw(r, built, StubModel(), seeds)
    assert drawing.canvases.shape == (2, 3, 28, 28)
    assert drawing.canvases[-1, :, 0].sum(axis=1).tolist() == [3, 3, 3]  # the best of 4 tries at each seed
    # The asked-for category is a parameter: "apple" prefers the least ink.
    drawing = engine.draw(r, built, StubModel(), None, categories=["apple"])
    assert drawing.windows[0, :, 0].tolist() == [0, 1, 2]


def test_final_only_filters_just_the_finished_drawings(registry, tmp_path):
    """qd eval judges finished drawings: filtering only the last step gives what the full
    drawing's last frame shows (for a filter that treats frames alike), with or without best_of."""
    for best_of in (1, 4):
        r = recipe(
            registry, tmp_path, generate={"n": 3, "best_of": best_of}, recognizer="ink", filters=[{"use": "invert"}]
        )
        built = engine.prepare(r)
        full = engine.draw(r, built, StubModel(), None)
        final = engine.draw(r, built, StubModel(), None, final_only=True)
        assert final.canvases.shape == (1, 3, 28, 28) and final.windows.shape == (1, 3, 3)
        np.testing.assert_array_equal(final.canvases[0], full.canvases[-1])
        np.testing.assert_array_equal(final.windows[0], full.windows[-1])


def test_best_of_fails_before_training_when_the_recognizer_cannot_know_the_category(registry, tmp_path):
    r = recipe(registry, tmp_path, generate={"best_of": 2}, recognizer={"use": "ink", "knows": ["apple", "dog"]})
    with pytest.raises(InputError, match="recognizer 'ink' knows no category 'cat'"):
        engine.check_best_of(r, engine.prepare(r))


# --- the built-in cnn on real data ----------------------------------------------------------------


def _ctx(quickdraw_dir: Path, cache: Path) -> Context:
    return Context((28, 28), np.random.default_rng(0), cache, quickdraw_dir, cache, quiet=True)


@pytest.fixture(scope="module")
def trained(quickdraw_dir, tmp_path_factory):
    from qdplugins.recognizers import CNN

    cache = tmp_path_factory.mktemp("recognizer-cache")
    spec = CNN(**TINY)
    return spec, spec.load(_ctx(quickdraw_dir, cache)), cache


def test_cnn_beats_chance_by_a_wide_margin_on_drawings_it_never_saw(trained):
    spec, clf, _ = trained
    assert clf.classes == sorted(TINY["categories"])
    correct = total = 0
    for label, cat in enumerate(clf.classes):
        unseen, seen = clf.drawings(cat)
        assert len(seen) == TINY["per_class"] and len(unseen) >= TINY["holdout"]
        probabilities, features = clf.classify(recog.as_float(unseen[:300]))
        assert features.shape == (len(probabilities), TINY["features"])
        assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
        correct += int((probabilities.argmax(axis=1) == label).sum())
        total += len(probabilities)
    assert correct / total > 0.6  # chance is 0.25
    assert clf.held_out_accuracy > 0.6


def test_cnn_unseen_and_training_drawings_are_disjoint(trained, quickdraw_dir):
    spec, clf, _ = trained
    rows = np.load(quickdraw_dir / "numpy_bitmap" / "apple.npy")
    unseen, seen = clf.drawings("apple")
    both = np.concatenate([unseen, seen]).reshape(len(rows), -1)
    assert sorted(r.tobytes() for r in both) == sorted(r.tobytes() for r in rows)  # a partition of the file


def test_cnn_is_cached_and_reused_and_retrained_when_its_parameters_change(trained, quickdraw_dir, monkeypatch):
    from qdplugins.recognizers import CNN

    spec, clf, cache = trained
    folders = list((cache / "recognizers").iterdir())
    assert len(folders) == 1 and folders[0].stat().st_mode & 0o777 != 0o700
    assert json.loads((folders[0] / "meta.json").read_text())["classes"] == clf.classes

    def no_training(*args):
        raise AssertionError("trained again instead of reusing the cache")

    monkeypatch.setattr(CNN, "_train", no_training)
    again = CNN(**TINY).load(_ctx(quickdraw_dir, cache))
    images = recog.as_float(clf.drawings("cat")[0][:50])
    assert np.allclose(again.classify(images)[0], clf.classify(images)[0], atol=1e-6)
    with pytest.raises(AssertionError, match="trained again"):
        CNN(**{**TINY, "epochs": 2}).load(_ctx(quickdraw_dir, cache))


def test_cnn_needs_the_files_it_is_asked_for(quickdraw_dir, tmp_path):
    from qdplugins.recognizers import CNN

    with pytest.raises(InputError, match="no numpy_bitmap file for 'windmill'"):
        CNN(categories=["cat", "windmill"]).categories(_ctx(quickdraw_dir, tmp_path))
    with pytest.raises(InputError, match="at least two categories"):
        CNN().categories(_ctx(tmp_path / "empty", tmp_path))
    assert "cat" in CNN().categories(_ctx(quickdraw_dir, tmp_path))  # default: every local category


def test_frechet_distance_in_cnn_features_separates_categories(trained):
    _, clf, _ = trained
    rng = np.random.default_rng(0)
    cats = recog.real_sets(clf, "cat", 200, rng)
    rainbows = recog.real_sets(clf, "rainbow", 200, rng)
    feats = {k: clf.classify(v)[1] for k, v in {"a": cats.a, "b": cats.b, "r": rainbows.a}.items()}
    assert recog.frechet_distance(feats["a"], feats["a"]) == pytest.approx(0, abs=1e-3)
    floor = recog.frechet_distance(feats["a"], feats["b"])
    assert recog.frechet_distance(feats["a"], feats["r"]) > 5 * floor
    assert cats.held_out == 400  # both sets are drawings the recognizer never saw


def test_figures_of_real_drawings_sit_at_the_floor(trained):
    _, clf, _ = trained
    rng = np.random.default_rng(1)
    real = recog.real_sets(clf, "rainbow", 150, np.random.default_rng(2))
    f = recog.figures(clf, real.a, "rainbow", rng)
    assert f["n"] == 150 and f["recognized"] > 0.6 and f["recognized_real"] > 0.6
    assert f["frechet"] < 3 * f["frechet_floor"]
    with pytest.raises(InputError, match="needs .* real drawings"):
        recog.real_sets(clf, "cat", 10_000, rng)


def test_real_figures_judge_a_display_chain_on_real_drawings(trained):
    _, clf, _ = trained
    same = recog.real_figures(clf, "cat", 150, np.random.default_rng(3), lambda x: x)
    assert same["raw"] == same["filtered"] and same["n"] == 150 and same["real_held_out"] == 300
    assert same["raw"]["frechet"] == same["frechet_floor"] > 0 and same["raw"]["frechet_over_floor"] == 1.0
    faded = recog.real_figures(clf, "cat", 150, np.random.default_rng(3), lambda x: 0.3 * x)
    assert faded["raw"] == same["raw"]  # the same real sets for the same seed
    assert faded["filtered"]["ink"] == pytest.approx(0.3 * same["raw"]["ink"], rel=1e-4)
    assert faded["filtered"]["frechet_over_floor"] > 2
    with pytest.raises(QdError, match="shaped"):
        recog.real_figures(clf, "cat", 150, np.random.default_rng(3), lambda x: x[:, :14])


def test_the_shipped_chain_keeps_real_drawings_recognizable(trained, registry):
    """recipes/cat.yaml's display chain against the old pen, judged on drawings the
    recognizer never trained on (docs/quality.md measures the full-size recognizer)."""
    _, clf, _ = trained
    root = Path(__file__).resolve().parents[1]

    def judged(sets=()):
        r = load(root / "recipes" / "cat.yaml", registry, sets)
        built = engine.prepare(r)
        return recog.real_figures(
            clf, "cat", 200, np.random.default_rng(4), lambda x: engine.filtered_bitmaps(r, built, x)
        )

    shipped, pen = judged(), judged(["filters[0]={use: ink, size: 84, width: 3}"])
    assert abs(shipped["filtered"]["recognized"] - shipped["raw"]["recognized"]) <= 0.1 * shipped["raw"]["recognized"]
    assert shipped["filtered"]["frechet_over_floor"] < 1.5
    assert pen["filtered"]["frechet_over_floor"] > 2 * shipped["filtered"]["frechet_over_floor"]


def test_real_sets_leave_out_the_drawings_being_reconstructed():
    """qd eval --reconstruct compares reconstructions with real drawings other than their originals."""

    class Pool(InkClassifier):
        def drawings(self, category):
            rng = np.random.default_rng(0)
            images = (rng.random((12, 28, 28)) > 0.7).astype(np.uint8) * 255
            return images[:8], images[8:]

    clf = Pool()
    unseen, seen = clf.drawings("cat")
    gone = np.concatenate([unseen[[1, 5]], seen[[2]]]).astype(np.float32) / 255
    real = recog.real_sets(clf, "cat", 4, np.random.default_rng(1), exclude=gone)
    kept = {img.tobytes() for img in (np.concatenate([real.a, real.b]) * 255).round().astype(np.uint8)}
    assert len(kept) == 8 and not kept & {img.tobytes() for img in (gone * 255).astype(np.uint8)}
    assert len(real.unseen) == 6  # the recognizer's unseen drawings, less the two excluded
    with pytest.raises(InputError, match="needs 10 real drawings"):  # 12 less 3 is too few for two sets of 5
        recog.real_sets(clf, "cat", 5, np.random.default_rng(1), exclude=gone)
