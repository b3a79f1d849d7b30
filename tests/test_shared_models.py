"""One shared model, many recipes (real data, tiny models): `model: {from: ...}` reuses a
trained multi-category model, fails clearly when it is not cached, falls back when asked to;
`qd models` lists the cache; the shipped one-category recipes keep their cache keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from qdcore import InputError, RecipeError
from qdcore import engine, sources
from qdcore.plugin_manager import build
from qdcore.recipe import load

ROOT = Path(__file__).resolve().parents[1]
QD = str(Path(sys.executable).parent / "qd")
TINY = """model: {T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}
train: {iterations: 6, batch_size: 30, checkpoint_every: 3}
"""
ZOO = "name: tiny-zoo\ndataset: {use: quickdraw, category: [cat, apple, fish], limit: 100}\n" + TINY
CAT = """name: tiny-cat
dataset: {use: quickdraw, category: %s, limit: 100}
model: {from: zoo, if_missing: %s, T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}
train: {iterations: 2, batch_size: 30}
generate: {n: 4}
seeds: [%s]
output: {use: gif, frames: samples}
"""


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers")
    return build().registry


def write(tmp_path, name, text) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def qd(*args, env):
    return subprocess.run(
        [QD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QD_LOAD_PLUGINS": "datasets,seeds,filters,writers", **env},
    )


def test_shipped_one_category_recipes_keep_their_cache_keys(registry):
    # Keys computed by the code before conditioning, `mix` and `model.from` existed. cat.yaml's
    # `train:` changed on purpose to 2,000 steps (docs/quality.md): its key is the one the old
    # code gives cat-quality.yaml at --iterations 2000, so both share one trained model.
    # windmill's own model now starts from the shipped pack (`model.start`): a new key on purpose.
    before = {"cat": "d4b2dae6e60b0825", "apple": "641825f978c339b9"}
    for name, key in before.items():
        r = load(ROOT / "recipes" / f"{name}.yaml", registry)
        assert r.model_key() == key, name
    r = load(ROOT / "recipes" / "cat.yaml", registry)
    assert r.shared is not None and r.shared.recipe.name == "zoo-26" and r.shared.if_missing == "train"
    w = load(ROOT / "recipes" / "windmill.yaml", registry)
    assert w.shared.recipe.name == "zoo-345"


def test_from_reuses_the_shared_model_and_says_how_to_build_it(tmp_path, registry, quickdraw_dir, monkeypatch):
    zoo_path = write(tmp_path, "zoo.yaml", ZOO)
    cat_path = write(tmp_path, "cat.yaml", CAT % ("cat", "error", "prior"))
    cat = load(cat_path, registry)
    with pytest.raises(InputError) as e:
        engine.prepare(cat)  # before any data is read or anything trained
    assert "not in the cache" in str(e.value) and f"qd train {zoo_path}" in str(e.value)

    zoo = load(zoo_path, registry)
    engine.Run(zoo).model()
    looked = []
    find = sources.shared_source
    monkeypatch.setattr(sources, "shared_source", lambda shared: looked.append(shared.name) or find(shared))
    result = engine.run(cat, out=tmp_path / "cat.gif")
    assert looked == ["tiny-zoo"]  # one run looks up where its model comes from once (sources.resolve)
    monkeypatch.setattr(sources, "shared_source", find)
    assert result.model_dir == sources.model_dir(zoo) and result.trained_steps == 6
    assert not sources.model_dir(cat).exists()  # nothing trained for the cat recipe
    assert iio.imread(result.path, index=None).shape[:3] == (4, 28, 28)

    # The same drawings as the shared model sampled for "cat" directly.
    from qdcore.training import train

    model = train.load(zoo.model, sources.model_dir(zoo)).model
    frames = iio.imread(result.path, index=None)
    expect = np.round(model.sample(4, seed=cat.seed, category="cat").final * 255)
    assert np.abs(frames[..., 0].astype(float) - expect).mean() < 3

    # training-batch `pick: last` gets the last cats the shared model trained on.
    last = load(write(tmp_path, "last.yaml", CAT % ("fish", "error", "{use: training-batch, pick: last}")), registry)
    trained = engine.Run(last).model()
    assert trained.model.category == "fish" and 0 < len(trained.last_batch) <= 16
    engine.run(last, out=tmp_path / "fish.gif")

    # A category the shared model never saw: an error naming its categories, or its own model.
    banana = load(write(tmp_path, "banana.yaml", CAT % ("banana", "error", "prior")), registry)
    with pytest.raises(InputError, match="not trained on 'banana'.*cat, apple, fish"):
        engine.run(banana, out=tmp_path / "b.gif")
    own = load(write(tmp_path, "banana2.yaml", CAT % ("banana", "train", "prior")), registry)
    assert engine.run(own, out=tmp_path / "b.gif").model_dir == sources.model_dir(own)


def test_from_needs_a_recipe_and_one_category(tmp_path, registry, quickdraw_dir):
    # Reading the recipe opens nothing under the cache: a name that is no recipe is a pack to
    # look for when it runs, and `qd validate` (sources.resolve, as engine.Run does) or the run says it is nowhere.
    nowhere = load(
        write(tmp_path, "a.yaml", "dataset: {use: quickdraw, category: cat}\nmodel: {from: nowhere}\n"), registry
    )
    with pytest.raises(InputError, match="model.from: no recipe nowhere.yaml is beside the recipe and no model named"):
        sources.resolve(nowhere)
    with pytest.raises(RecipeError, match="model.from: no recipe 'x.yaml'"):
        load(write(tmp_path, "b.yaml", "dataset: {use: quickdraw, category: cat}\nmodel: {from: x.yaml}\n"), registry)
    with pytest.raises(RecipeError, match="neither a recipe beside this one .* nor a model pack name"):
        load(write(tmp_path, "c.yaml", "dataset: {use: quickdraw, category: cat}\nmodel: {from: a b}\n"), registry)
    write(tmp_path, "zoo.yaml", ZOO)
    two = load(
        write(
            tmp_path,
            "two.yaml",
            "dataset: {use: quickdraw, category: [cat, fish]}\nmodel: {from: zoo, if_missing: train}\n",
        ),
        registry,
    )
    with pytest.raises(RecipeError, match="draws one category"):
        engine.Run(two).model()


def test_qd_models_lists_the_cache_and_the_cli_error(tmp_path, quickdraw_dir):
    env = {"QD_CACHE_DIR": str(tmp_path / "cache"), "QD_DATA_DIR": str(quickdraw_dir)}
    zoo = write(tmp_path, "zoo.yaml", ZOO)
    cat = write(tmp_path, "cat.yaml", CAT % ("cat", "error", "prior"))
    assert "no trained models" in qd("models", env=env).stdout
    r = qd("run", cat, "--out", tmp_path / "x.gif", env=env)
    assert r.returncode == 2 and r.stderr.startswith("Error: ") and "qd train" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.gif").exists()

    assert qd("train", zoo, "--quiet", env=env).returncode == 0
    ev = qd("eval", zoo, "--quiet", env=env)
    assert ev.returncode == 0, ev.stderr
    figures = json.loads(ev.stdout)
    assert set(figures["per_category"]) == {"cat", "apple", "fish"}
    rows = json.loads(qd("models", "--json", env=env).stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["name"] == "tiny-zoo" and row["categories"] == ["cat", "apple", "fish"] and row["steps"] == 6
    assert row["bound"] == pytest.approx(figures["bound"]) and row["size_bytes"] > 0
    assert Path(row["path"]).is_dir() and row["status"] == "finished"
    table = qd("models", env=env).stdout
    assert "tiny-zoo" in table and "3: cat, apple, fish" in table and row["path"] in table

    # Scoring one category with the shared model does not overwrite the shared model's figures.
    one = qd("eval", cat, "--quiet", env=env)
    assert one.returncode == 0, one.stderr
    assert "per_category" not in json.loads(one.stdout)
    assert json.loads(qd("models", "--json", env=env).stdout)[0]["bound"] == pytest.approx(figures["bound"])
    # The same held-out cats under the same class; only the one-sample noise differs.
    assert json.loads(one.stdout)["bound"] == pytest.approx(figures["per_category"]["cat"], abs=1.0)
