"""Fine-tuning from a pack (`model.start`, issue 27): a recipe's own training starts from another
model's weights. The start must be the same model (checked before any work); its identity is in
the cache key (a new pack retrains, the same one does not); a resumed run restores its own
checkpoint; a large set stops on its held-out bound; a conditional start gives a category it does
not know the row closest to its drawings (real data, tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cache_dir_set

from qdcore import InputError, RecipeError, engine, packs, sources
from qdcore.config import ModelConfig
from qdcore.errors import Cancelled
from qdcore.interfaces import ImageSet
from qdcore.plugin_manager import build
from qdcore.recipe import load

BUILTINS = "datasets,seeds,filters,writers"
TINY = "T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3"
ZOO = f"""name: tiny-zoo
seed: %d
dataset: {{use: quickdraw, category: [cat, apple, fish], limit: 100}}
model: {{{TINY}}}
train: {{iterations: 6, batch_size: 30, checkpoint_every: 3, seed: %d}}
"""
BANANA = f"""name: banana-ft
dataset: {{use: quickdraw, category: banana, limit: %d}}
model: {{start: tiny-zoo, {TINY}}}
train: {{iterations: %d, batch_size: 20, checkpoint_every: 2 %s}}
generate: {{n: 4}}
seeds: [prior]
output: {{use: gif, frames: samples}}
"""


def _pack(root: Path, seed: int) -> Path:
    """The tiny zoo trained with `seed` into a cache of its own, exported as one pack file."""
    cache = root / f"cache-{seed}"
    recipe = root / f"zoo-{seed}.yaml"
    recipe.write_text(ZOO % (seed, seed))
    with cache_dir_set(cache):
        r = load(recipe, build().registry)
        engine.Run(r).model()
        file = root / f"tiny-zoo-{seed}.safetensors"
        packs.export("tiny-zoo", file, cache, {})
    return file


@pytest.fixture(scope="module")
def zoo_packs(tmp_path_factory, quickdraw_dir):
    root = tmp_path_factory.mktemp("warm")
    return _pack(root, 0), _pack(root, 1)


@pytest.fixture
def cache(tmp_path, monkeypatch, zoo_packs):
    """A fresh cache holding the first tiny-zoo pack, imported."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QD_CACHE_DIR", str(cache))
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    packs.import_pack(zoo_packs[0], cache)
    return cache


def _recipe(tmp_path: Path, limit: int = 100, iterations: int = 4, extra: str = "", name: str = "banana.yaml"):
    path = tmp_path / name
    path.write_text(BANANA % (limit, iterations, extra))
    return load(path, build().registry)


def _weights(model) -> dict:
    return {v.name.split(":")[0]: v.numpy() for v in model.weights}


def test_a_start_that_does_not_fit_is_refused_before_any_work(cache, tmp_path, capsys):
    from qdcore.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text((BANANA % (100, 4, "")).replace("T: 3,", "T: 4,").replace("z_size: 4", "z_size: 5"))
    r = load(path, build().registry)
    with pytest.raises(RecipeError, match=r"set model\.T: 3, model\.z_size: 4 in the recipe, or drop `start`"):
        engine.prepare(r)
    with pytest.raises(SystemExit) as e:
        main(["validate", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("Error:") == 1 and "model.start" in err and "Traceback" not in err
    assert not (cache / "models").exists()
    # A name that is neither a recipe nor a pack: refused by `qd validate`, which looks in the
    # cache (reading the recipe does not), one line, exit 2.
    path.write_text((BANANA % (100, 4, "")).replace("start: tiny-zoo", "start: no-such-pack"))
    with pytest.raises(SystemExit) as e:
        main(["validate", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("Error:") == 1 and "model.start: no recipe no-such-pack.yaml" in err


def test_reading_a_recipe_opens_nothing_under_the_cache(tmp_path, monkeypatch, zoo_packs):
    """What a recipe says is decided by its file and the installed plugins, never by what the
    user happens to have cached: parsing `from:` and `start:` names looks up no cache."""
    from qdcore import paths

    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    monkeypatch.setattr(paths, "cache_dir", lambda: pytest.fail("reading a recipe looked in the cache"))
    for text in (BANANA % (100, 4, ""), "dataset: {use: quickdraw, category: cat}\nmodel: {from: tiny-zoo}\n"):
        (tmp_path / "r.yaml").write_text(text)
        r = load(tmp_path / "r.yaml", build().registry)
        assert (r.start or r.shared).name == "tiny-zoo" and (r.start or r.shared).recipe is None


def test_fine_tuning_starts_from_the_pack_and_its_key_follows_the_pack(cache, tmp_path, zoo_packs):
    r = _recipe(tmp_path)
    lines = []
    result = engine.run(r, out=tmp_path / "b.gif", reporter=engine.Reporter(lines=lines.append))
    workdir = result.model_dir
    assert workdir == sources.model_dir(r) and result.trained_steps == 4
    # The cache key holds the pack's identity: the same recipe without `start` is another model.
    plain = tmp_path / "plain.yaml"
    plain.write_text((BANANA % (100, 4, "")).replace("start: tiny-zoo, ", ""))
    assert sources.model_dir(load(plain, build().registry)) != workdir
    finished = json.loads((workdir / "finished.json").read_text())
    sha = packs.read(zoo_packs[0])[0].manifest["files"]["tensors"]["sha256"]
    assert finished["start"]["identity"] == {"pack": "tiny-zoo", "sha256": sha}
    assert finished["start"]["rows"]["banana"] in ("cat", "apple", "fish")  # the closest of the three
    recorded = json.loads((workdir / "recipe.json").read_text())["start"]
    assert recorded["identity"]["sha256"] == sha and "tiny-zoo" in recorded["from"]
    from qdcore import models

    assert models.describe(workdir)["start"] == recorded["from"]

    # The same pack imported again: the same folder, nothing retrained.
    packs.import_pack(zoo_packs[0], cache, force=True)
    again = engine.run(r, out=tmp_path / "b2.gif")
    assert again.model_dir == workdir and json.loads((workdir / "finished.json").read_text()) == finished
    # Another pack under the same name: another folder, trained from the new weights.
    packs.import_pack(zoo_packs[1], cache, force=True)
    newer = engine.run(r, out=tmp_path / "b3.gif")
    assert newer.model_dir != workdir and newer.trained_steps == 4
    sha1 = packs.read(zoo_packs[1])[0].manifest["files"]["tensors"]["sha256"]
    assert json.loads((newer.model_dir / "finished.json").read_text())["start"]["identity"]["sha256"] == sha1


def test_the_first_step_starts_from_the_packs_weights(cache, tmp_path):
    """Zero steps of fine-tuning: the model is the pack steered to the new category's row."""
    r = _recipe(tmp_path, iterations=0)
    trained = engine.Run(r).model()
    zoo = packs.load(packs.find(cache, "tiny-zoo")).model
    row = json.loads((trained.workdir / "finished.json").read_text())["start"]["rows"]["banana"]
    mine, theirs = _weights(trained.model), _weights(zoo)
    for name in ("enc_kernel", "dec_kernel", "z_kernel", "out_kernel", "out_bias", "z_bias"):
        np.testing.assert_array_equal(mine[name], theirs[name])
    i = zoo.classes.index(row)
    np.testing.assert_allclose(mine["enc_bias"], theirs["enc_bias"] + theirs["enc_table"][i], rtol=1e-6)
    np.testing.assert_allclose(mine["dec_bias"], theirs["dec_bias"] + theirs["dec_table"][i], rtol=1e-6)


def test_a_resumed_fine_tune_restores_its_own_checkpoint(cache, tmp_path, monkeypatch, zoo_packs, capsys):
    r = _recipe(tmp_path, iterations=4)
    loud = engine.Reporter(quiet=False)
    with pytest.raises(Cancelled):
        engine.Run(r, loud).model(on_step=lambda step, total, lx, lz: step == 2)
    assert "start: the weights of the model pack 'tiny-zoo'" in capsys.readouterr().err
    resumed = engine.Run(r, loud).model()
    assert resumed.step == 4 and "start:" not in capsys.readouterr().err  # its own checkpoint, not the pack
    # Its record still says where it started (kept in start.json from the first run).
    assert json.loads((resumed.workdir / "finished.json").read_text())["start"]["identity"]["pack"] == "tiny-zoo"
    # Exported, its manifest lists the relay's legs: the pack's (one leg, trained in one
    # session) and its own, in two sessions (cancelled at step 2, resumed to 4), each with
    # its seconds and machine; under another name when asked.
    pack = packs.export(resumed.workdir.name, tmp_path / "next.safetensors", cache, {}, as_name="banana-next")
    first, own = pack.manifest["legs"]
    assert pack.name == "banana-next" and first["name"].startswith("tiny-zoo-") and first["steps"] == 6
    assert [(s["from_step"], s["to_step"]) for s in first["sessions"]] == [(0, 6)]
    assert own["name"] == resumed.workdir.name and own["steps"] == 4 and "tiny-zoo" in own["start"]
    assert [(s["from_step"], s["to_step"]) for s in own["sessions"]] == [(0, 2), (2, 4)]
    assert own["cpu_s"] > 0 and own["wall_s"] == pytest.approx(sum(s["wall_s"] for s in own["sessions"]), abs=0.2)
    assert all(s["cores"] >= 1 and s["plan"] and s["cpu"] for s in own["sessions"])
    assert packs.read(tmp_path / "next.safetensors")[0].manifest["legs"] == pack.manifest["legs"]
    card = packs.card_path(tmp_path / "next.safetensors").read_text()
    assert "## Training legs" in card and f"| {own['name']} | 4 | 80 |" in card
    # The same run uninterrupted, in another cache with the same pack, ends at the same weights.
    other = tmp_path / "other"
    monkeypatch.setenv("QD_CACHE_DIR", str(other))
    packs.import_pack(zoo_packs[0], other)
    whole = engine.Run(r).model()
    assert whole.workdir.name == resumed.workdir.name
    for name, value in _weights(whole.model).items():
        np.testing.assert_allclose(_weights(resumed.model)[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_large_fine_tune_stops_on_its_held_out_bound(cache, tmp_path):
    """3,000 bananas hold out 300: the warm start's plateau rule watches that bound from the first check."""
    extra = ", check_every: 2, patience: 2, min_gain: 1000000"
    r = _recipe(tmp_path, limit=3000, iterations=40, extra=extra)
    assert r.train.decay_left == 1.0 and r.train.learning_rate == 4e-3  # the warm-start defaults
    trained = engine.Run(r).model()
    stopped = json.loads((trained.workdir / "finished.json").read_text())["stopped"]
    # The first check (step 2) sets the best; the next two are flat: stopped at step 6 of 40.
    assert trained.step == 6 and stopped["step"] == 6 and "held-out bound flat for 2 checks" in stopped["reason"]


def test_a_recipe_naming_a_recipe_whose_start_is_a_recipe_is_refused(tmp_path, cache):
    (tmp_path / "a.yaml").write_text("dataset: {use: quickdraw, category: cat}\nmodel: {start: b}\n")
    (tmp_path / "b.yaml").write_text("dataset: {use: quickdraw, category: cat}\nmodel: {start: a}\n")
    with pytest.raises(RecipeError, match="its own start must be a model pack"):
        load(tmp_path / "a.yaml", build().registry)


# --- the rows of a conditional start (no data, no training) -------------------------------------


CFG = ModelConfig(height=10, width=12, T=2, enc_size=8, dec_size=8, z_size=3, read_n=2, write_n=2)


def _start(classes=("a", "b", "c")):
    from qdcore.draw import Draw

    model = Draw(CFG, seed=7, classes=list(classes))
    rng = np.random.default_rng(3)
    for table in (model.conditioning.enc_table, model.conditioning.dec_table):
        table.assign(rng.normal(0, 1.5, table.shape).astype(np.float32))  # rows far apart
    return model


def _images(n=12, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet((rng.random((n, CFG.height, CFG.width)) > 0.7).astype(np.uint8) * 255, "shapes", classes=["new"])


def test_a_new_category_takes_the_closest_row_folded_into_the_gate_biases():
    from qdcore.draw import Draw
    from qdcore.training.warm_start import Start, initialize

    start, data = _start(), _images()
    x = data.as_float(np.arange(len(data.images)))
    scores = [
        float(np.mean(sum(start.loss(x, training=False, seed=0, labels=np.full(len(x), c, np.int32)))))
        for c in range(3)
    ]
    model = Draw(CFG, seed=1)
    done = initialize(model, Start("the test start", {"pack": "t"}, lambda: start), data, np.arange(len(x)))
    best = int(np.argmin(scores))
    assert done["rows"] == {"new": "abc"[best]} and done["identity"] == {"pack": "t"}
    # The one-category model is exactly the start steered to that row.
    lx, lz = model.loss(x, training=False, seed=5)
    slx, slz = start.loss(x, training=False, seed=5, labels=np.full(len(x), best, np.int32))
    np.testing.assert_allclose(lx.numpy(), slx.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lz.numpy(), slz.numpy(), rtol=1e-5, atol=1e-4)
    # "mean": the mean of the rows.
    mean = Draw(CFG, seed=1)
    assert initialize(mean, Start("s", {}, lambda: start, rows="mean"), data, np.arange(len(x)))["rows"] == {
        "new": "mean of rows"
    }
    table = start.conditioning.enc_table.numpy().mean(0)
    np.testing.assert_allclose(mean.enc_bias.numpy(), start.enc_bias.numpy() + table, rtol=1e-6)


def test_a_conditional_fine_tune_keeps_known_rows_by_name_and_gives_new_ones_the_closest():
    from qdcore.draw import Draw
    from qdcore.training.warm_start import Start, initialize

    start = _start()
    rng = np.random.default_rng(0)
    images = (rng.random((20, CFG.height, CFG.width)) > 0.7).astype(np.uint8) * 255
    data = ImageSet(images, "two", labels=np.repeat([0, 1], 10), classes=["c", "z"])
    model = Draw(CFG, seed=1, classes=["c", "z"])
    done = initialize(model, Start("s", {}, lambda: start), data, np.arange(20))
    assert done["rows"]["c"] == "c" and done["rows"]["z"] in ("a", "b", "c")
    got, theirs = model.conditioning.enc_table.numpy(), start.conditioning.enc_table.numpy()
    np.testing.assert_array_equal(got[0], theirs[2])
    np.testing.assert_array_equal(got[1], theirs["abc".index(done["rows"]["z"])])
    np.testing.assert_array_equal(model.enc_bias.numpy(), start.enc_bias.numpy())  # rows stay in the tables


def test_an_unknown_start_at_run_time_is_one_input_error(tmp_path, monkeypatch, quickdraw_dir):
    """A start named in the recipe that no cache or plugin has: one line when it runs."""
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    r = _recipe(tmp_path)
    with pytest.raises(InputError, match="model.start: no recipe tiny-zoo.yaml is beside the recipe and no model"):
        engine.prepare(r)


def test_a_start_may_name_a_recipe_whose_model_is_in_the_cache(zoo_packs, tmp_path, monkeypatch):
    """`start: zoo` names zoo.yaml beside the recipe: its model trained into the cache starts this one."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(zoo_packs[0].parent / "cache-0", cache)
    monkeypatch.setenv("QD_CACHE_DIR", str(cache))
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    (tmp_path / "zoo.yaml").write_text(ZOO % (0, 0))
    path = tmp_path / "banana.yaml"
    path.write_text((BANANA % (100, 2, "")).replace("start: tiny-zoo", "start: zoo"))
    r = load(path, build().registry)
    source = engine.Run(r).source.start
    zoo = load(tmp_path / "zoo.yaml", build().registry)
    assert source.workdir == sources.model_dir(zoo) and source.identity() == {"model": source.workdir.name, "step": 6}
    trained = engine.Run(r).model()
    done = json.loads((trained.workdir / "finished.json").read_text())["start"]
    assert done["from"] == "the shared model 'tiny-zoo'" and done["identity"]["step"] == 6
