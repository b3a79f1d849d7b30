"""Recipe parsing and validation against component signatures, with no built-ins loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest

from qdcore import Dataset, Filter, Range, RecipeError, SeedStrategy, UnknownNameError, Writer, hookimpl
from qdcore.config import ModelConfig, TrainConfig
from qdcore.params import check, coerce
from qdcore.plugin_manager import build
from qdcore.recipe import load


class Data(Dataset):
    def __init__(self, category: str, limit: Optional[int] = None):
        self.category = category


class Source(SeedStrategy):
    is_source = True

    def __init__(self, image: Optional[Path] = None):
        self.image = image


class Nudge(SeedStrategy):
    def __init__(self, p: Annotated[float, Range(0, 1)] = 0.1):
        self.p = p


class Scale(Filter):
    def __init__(self, scale: Annotated[int, Range(1, 16)] = 2, method: Literal["nearest", "lanczos"] = "nearest"):
        self.scale = scale


class Gif(Writer):
    def __init__(self, duration: float = 0.1, frames: Literal["samples", "steps"] = "samples"):
        pass


class Components:
    @hookimpl
    def qd_register_datasets(self, register):
        register("data", Data)

    @hookimpl
    def qd_register_seed_strategies(self, register):
        register("source", Source)
        register("prior", Source)
        register("nudge", Nudge)

    @hookimpl
    def qd_register_filters(self, register):
        register("scale", Scale)

    @hookimpl
    def qd_register_writers(self, register):
        register("gif", Gif)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", "")
    return build(extra=[("test", Components())]).registry


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_recipe_gets_documented_defaults(tmp_path, registry):
    r = load(write(tmp_path, "dataset: {use: data, category: cat}\n"), registry)
    assert r.name == "r" and r.seed == 0
    assert r.model == ModelConfig() and r.train == TrainConfig()
    assert [s.use for s in r.seeds] == ["prior"] and r.filters == [] and r.output.use == "gif"
    assert r.dataset.params == {"category": "cat", "limit": None}
    assert r.output_path is None


def test_full_recipe_in_order_with_short_step_form(tmp_path, registry):
    r = load(
        write(
            tmp_path,
            """
name: demo
seed: 3
dataset: {use: data, category: cat, limit: 50}
model: {T: 4, attention: false}
train: {iterations: 7, learning_rate: 1e-3}
generate: {n: 5}
seeds: [{use: source}, {use: nudge, p: 0.5}]
filters: [{use: scale, scale: 4}, scale]
output: {use: gif, path: out/demo.gif, frames: steps}
""",
        ),
        registry,
    )
    assert (r.name, r.seed, r.model.T, r.model.attention, r.train.iterations, r.generate.n) == (
        "demo",
        3,
        4,
        False,
        7,
        5,
    )
    assert r.train.learning_rate == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string
    assert [f.params["scale"] for f in r.filters] == [4, 2]
    assert r.output.params == {"duration": 0.1, "frames": "steps"}
    assert r.output_path == tmp_path / "out" / "demo.gif"  # relative to the recipe, not the cwd


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, registry, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)
    r = load(write(sub, "dataset: {use: data, category: c}\nseeds: [{use: source, image: tri.png}]\n"), registry)
    assert r.seeds[0].params["image"] == sub.resolve() / "tri.png"


@pytest.mark.parametrize(
    "text, where, what",
    [
        (
            "dataset: {use: data, category: c}\nfilters: [{use: scale, scale: 99}]",
            "filters[0].scale",
            "between 1 and 16",
        ),
        (
            "dataset: {use: data, category: c}\nfilters: [scale, {use: scale, sclae: 2}]",
            "filters[1].sclae",
            "Allowed: scale, method",
        ),
        (
            "dataset: {use: data, category: c}\nfilters: [{use: scale, method: bicubic}]",
            "filters[0].method",
            "'nearest', 'lanczos'",
        ),
        ("dataset: {use: data, category: c}\ngenerate: {n: many}", "generate.n", "not an integer"),
        ("dataset: {use: data, category: c}\nmodel: {attention: yes please}", "model.attention", "not a boolean"),
        ("dataset: {use: data, category: c}\ntrain: {learning_rate: 3}", "train.learning_rate", "out of range"),
        ("dataset: {use: data}", "dataset", "missing required key 'category'"),
        ("dataset: {category: c}", "dataset", "missing `use:`"),
        ("dataset: {use: data, category: c}\nseeds: [{use: nudge}]", "seeds[0]", "needs a source"),
        ("dataset: {use: data, category: c}\nseeds: [prior, source]", "seeds[1]", "only the first"),
        ("dataset: {use: data, category: c}\nseeds: []", "seeds", "is empty"),
        ("dataset: {use: data, category: c}\nseeds: prior", "seeds", "must be a list"),
        ("dataset: {use: data, category: c}\nfilter: [scale]", "filter", "unknown section 'filter'"),
        ("dataset: {use: data, category: c}\nname: 5", "name", "non-empty string"),
        ("dataset: {use: data, category: c}\nfilters: [42]", "filters[0]", "a step is `use: NAME`"),
    ],
)
def test_each_validation_error_names_file_location_and_what_is_allowed(tmp_path, registry, text, where, what):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        load(path, registry)
    assert str(e.value).startswith(f"{path}: {where}"), str(e.value)
    assert what in str(e.value)


def test_unknown_component_name_says_where_and_suggests(tmp_path, registry):
    path = write(tmp_path, "dataset: {use: data, category: c}\nfilters: [scale, {use: scael}]")
    with pytest.raises(UnknownNameError) as e:
        load(path, registry)
    assert f"{path}: filters[1].use: Can't find filter 'scael'. Did you mean 'scale'?" in str(e.value)


@pytest.mark.parametrize(
    "text, what",
    [
        ("", "the recipe is empty"),
        ("dataset: [unclosed", "invalid YAML"),
        ("- just\n- a list\n", "a recipe is a mapping"),
        ("!!python/object/apply:os.system ['true']", "invalid YAML"),  # safe loading only
    ],
)
def test_bad_files(tmp_path, registry, text, what):
    with pytest.raises(RecipeError, match=what):
        load(write(tmp_path, text), registry)


def test_yaml_error_carries_line_and_column(tmp_path, registry):
    path = write(tmp_path, "name: x\ndataset: {use: data, category: c\n")
    with pytest.raises(RecipeError) as e:
        load(path, registry)
    assert str(e.value).startswith(f"{path}:3:")


def test_missing_file_and_folder(tmp_path, registry):
    with pytest.raises(RecipeError, match="not found"):
        load(tmp_path / "nope.yaml", registry)
    with pytest.raises(RecipeError, match="is a folder"):
        load(tmp_path, registry)


def test_overrides_are_validated_and_enter_the_model_key(tmp_path, registry):
    r = load(write(tmp_path, "dataset: {use: data, category: c}\n"), registry)
    r2 = r.with_overrides(iterations=5)
    assert r2.train.iterations == 5 and r.train.iterations == TrainConfig().iterations
    assert r2.model_key() != r.model_key()
    # Generation settings do not decide the weights, so they share the cached model.
    assert r.with_overrides(seed=9, n=3).model_key() == r.model_key()
    with pytest.raises(RecipeError, match="--iterations"):
        r.with_overrides(iterations=-1)


def test_model_key_is_stable_across_loads_and_sees_dataset_params(tmp_path, registry):
    a = load(write(tmp_path, "dataset: {use: data, category: c}\n", "a.yaml"), registry)
    b = load(write(tmp_path, "name: other\ndataset: {use: data, category: c}\nfilters: [scale]\n", "b.yaml"), registry)
    c = load(write(tmp_path, "dataset: {use: data, category: d}\n", "c.yaml"), registry)
    assert a.model_key() == b.model_key() != c.model_key()


def test_coerce_unit_cases():
    assert coerce(3, float, "x") == 3.0
    assert coerce(2.0, int, "x") == 2
    with pytest.raises(RecipeError, match="not an integer"):
        coerce(True, int, "x")
    with pytest.raises(RecipeError, match="not a number"):
        coerce("abc", float, "x")
    assert coerce(None, Optional[int], "x") is None
    with pytest.raises(RecipeError, match="x\\[1\\]"):
        coerce([1, "b"], list[int], "x")
    assert check(Scale, {}, "f") == {"scale": 2, "method": "nearest"}


def _cache_looks(monkeypatch, cache: Path) -> list[str]:
    """Every stat, listing or open of a path under `cache` from now on (what pathlib's
    exists/is_dir/iterdir/read_text and open() come down to)."""
    import builtins
    import io
    import os

    seen = []

    def watch(fn):
        def wrapper(path, *a, **k):
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(str(cache)):
                seen.append(os.fspath(path))
            return fn(path, *a, **k)

        return wrapper

    for name in ("stat", "lstat", "listdir", "scandir"):
        monkeypatch.setattr(os, name, watch(getattr(os, name)))
    monkeypatch.setattr(io, "open", watch(io.open))
    monkeypatch.setattr(builtins, "open", watch(builtins.open))
    return seen


def test_reading_a_recipe_opens_nothing_under_the_cache(tmp_path, monkeypatch):
    # A recipe means the same on every machine: model.from / model.start names are looked up
    # when it runs (qdcore/sources.py), never while it is read, whatever the cache holds.
    cache = tmp_path / "cache"
    (cache / "packs" / "zoo-26").mkdir(parents=True)
    (cache / "models" / "zoo-0123456789abcdef").mkdir(parents=True)
    monkeypatch.setenv("QD_CACHE_DIR", str(cache))
    registry = build().registry
    (tmp_path / "zoo.yaml").write_text("dataset: {use: quickdraw, category: [cat, dog]}\n")
    recipes = [
        "dataset: {use: quickdraw, category: cat}\nmodel: {from: zoo-26}\n",
        "dataset: {use: quickdraw, category: cat}\nmodel: {from: zoo, if_missing: train}\n",
        "dataset: {use: quickdraw, category: cat}\nmodel: {start: zoo-26}\n",
        "dataset: {use: quickdraw, category: cat}\nmodel: {start: zoo}\n",
    ]
    paths = []
    for i, text in enumerate(recipes):
        paths.append(tmp_path / f"r{i}.yaml")
        paths[-1].write_text(text)
    seen = _cache_looks(monkeypatch, cache)
    loaded = [load(p, registry) for p in paths]
    assert seen == []
    # The watch sees the cache when something does look: resolving the sources does.
    from qdcore import sources

    for r in loaded[1:2]:
        sources.resolve(r)
    assert seen
