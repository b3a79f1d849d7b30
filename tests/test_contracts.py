"""Contracts between code and docs (as datasette does): every hook documented with its exact
signature and a runnable example, every hook exercised by a test, every shipped recipe valid,
the README's test command identical to what CI runs, every recipe key documented."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from qdcore import Drawing, hookspecs
from qdcore.config import GenerateConfig, ModelConfig, TrainConfig
from qdcore.engine import context, prepare
from qdcore.interfaces import Context, SeedInput
from qdcore.plugin_manager import build
from qdcore.recipe import TOP_KEYS, load

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("qd_")]
HOOK_DOC = (ROOT / "docs" / "hooks.md").read_text()


def test_there_are_seven_hooks():
    assert sorted(HOOKS) == [
        "qd_register_datasets",
        "qd_register_filters",
        "qd_register_generators",
        "qd_register_models",
        "qd_register_recognizers",
        "qd_register_seed_strategies",
        "qd_register_writers",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    assert f"## {signature}" in HOOK_DOC


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    others = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_contracts.py"]
    assert any(hook in p.read_text() for p in others), f"no test exercises {hook}"


def _examples():
    blocks = re.findall(r"```python\n(.*?)```", HOOK_DOC, re.S)
    return [b for b in blocks if "@hookimpl" in b]


def test_each_hook_has_an_example_and_every_example_runs(tmp_path, monkeypatch):
    examples = _examples()
    assert len(examples) == len(HOOKS)
    monkeypatch.setenv("QD_LOAD_PLUGINS", "")
    modules = []
    for i, code in enumerate(examples):
        ns: dict = {"__file__": str(tmp_path / f"example{i}.py")}  # as a plugin module has
        exec(compile(code, f"docs/hooks.md example {i}", "exec"), ns)
        modules.append(
            (f"example{i}", type("M", (), {k: staticmethod(v) for k, v in ns.items() if k.startswith("qd_")})())
        )
    reg = build(extra=modules).registry
    ctx = Context((12, 12), np.random.default_rng(0), tmp_path, None, tmp_path)
    data = reg.get("datasets", "squares").factory(count=4).load(ctx)
    assert data.images.shape == (4, 12, 12) and data.images.max() == 1.0
    seeds = reg.get("seed_strategies", "dropout").factory(p=0.5).apply(data.images.copy(), SeedInput(4, data), ctx)
    assert 0 < seeds.sum() < data.images.sum()
    frames = reg.get("filters", "gamma").factory().apply(np.full((2, 12, 12), 0.25, np.float32), ctx)
    assert np.allclose(frames, 0.5)
    canvases = np.random.default_rng(1).random((3, 2, 12, 12)).astype(np.float32)
    out = reg.get("writers", "npy").factory().write(Drawing(canvases, None, 5, "prior"), tmp_path / "d.npy", ctx)
    assert np.array_equal(np.load(out), canvases)
    (tmp_path / "numpy_bitmap").mkdir()
    left, right = np.zeros((6, 28, 28), np.uint8), np.zeros((6, 28, 28), np.uint8)
    left[:, :, :14], right[:, :, 14:] = 255, 255
    np.save(tmp_path / "numpy_bitmap" / "left.npy", left.reshape(6, -1))
    np.save(tmp_path / "numpy_bitmap" / "right.npy", right.reshape(6, -1))
    ctx = Context((28, 28), np.random.default_rng(0), tmp_path, tmp_path, tmp_path)
    recognizer = reg.get("recognizers", "mean-drawing").factory()
    assert recognizer.categories(ctx) == ["left", "right"]
    classifier = recognizer.load(ctx)
    probabilities, features = classifier.classify(np.concatenate([right[:2], left[:1]]).astype(np.float32) / 255)
    assert probabilities.argmax(axis=1).tolist() == [1, 1, 0] and features.shape == (3, 49)
    unseen, seen = classifier.drawings("left")
    assert len(unseen) == len(seen) == 3
    # A pack is registered by path; reading it waits until a recipe or `qd models` asks.
    assert [(n, str(reg.get("models", n).factory)) for n in reg.names("models")] == [
        ("doodles", str(tmp_path / "doodles.safetensors"))
    ]


RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_recipes_exist():
    assert {"windmill.yaml", "apple.yaml", "coffee-cup.yaml", "whale.yaml", "hexagon.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, monkeypatch):
    # packs: the shipped pack the stroke recipes start from (`model.start: zoo-26`).
    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers,generators,packs")
    recipe = load(path, build().registry)
    prepare(recipe)
    assert context(recipe, 0).image_shape == (recipe.model.height, recipe.model.width)


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^readme_test_command=(.*)$", ci, re.M).group(1)
    command = shlex.split(command)[0]
    assert command in (ROOT / "README.md").read_text()


def test_every_recipe_key_is_documented():
    doc = (ROOT / "docs" / "recipes.md").read_text()
    for key in TOP_KEYS:
        assert f"`{key}`" in doc, key
    for cls, section in ((ModelConfig, "model"), (TrainConfig, "train"), (GenerateConfig, "generate")):
        for f in dataclasses.fields(cls):
            assert re.search(rf"`{section}\.{f.name}`.*`{re.escape(repr(f.default))}`", doc) or re.search(
                rf"`{section}\.{f.name}`.*`{f.default}`", doc
            ), f"{section}.{f.name} (default {f.default}) missing"


def test_every_builtin_is_documented(monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers,recognizers,generators")
    doc = (ROOT / "docs" / "builtins.md").read_text()
    reg = build().registry
    for kind in reg.entries:
        for name in reg.names(kind):
            assert f"`{name}`" in doc, name
