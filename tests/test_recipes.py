"""Every recipe in recipes/ runs (real data from QD_DATA_DIR, at most 3 pictures, zoo-345
also two training steps) and writes the GIF it promises: frame count, pixel size and frame
durations read back with imageio."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

from qdcore import engine
from qdcore.plugin_manager import build
from qdcore.recipe import load

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# recipe -> training steps in the test (the rest: none). whale and windmill redraw the
# trainer's last batch (`training-batch, pick: last`), so they need a step to have one.
TRAINED = {"zoo-345": 2, "whale": 1, "windmill": 1}


def promised(recipe) -> tuple[int, tuple[int, int], list[int]]:
    """Frame count, (height, width) and durations in ms that the recipe's writer promises."""
    out = recipe.output.params
    sizes = [f.params["size"] for f in recipe.filters if f.use in ("upscale", "ink") and f.params.get("size")]
    cell = sizes[-1] if sizes else recipe.model.height
    n, T = recipe.generate.n, recipe.model.T
    mode = recipe.mode.params if recipe.mode is not None else {}
    if recipe.mode is not None and recipe.mode.use == "complete":  # the partial drawings, then T steps
        n, T = n * mode["tries"], T + 1
    elif recipe.mode is not None and recipe.mode.use == "morph":  # there and back, each end once
        T = 2 * mode["frames"] - 2 if mode["forth_and_back"] else mode["frames"]
    if out["frames"] == "samples":
        count, size = n, (cell, cell)
    else:
        shown = 1 if out["sample"] is not None else n
        cols = min(shown, out["columns"]) if out["columns"] else math.ceil(math.sqrt(shown))
        rows = math.ceil(shown / cols)
        s = out["spacing"]
        count, size = T, (rows * cell + (rows - 1) * s, cols * cell + (cols - 1) * s)
    durations = [round(out["duration"] * 1000)] * count
    if out["hold_last"] is not None:
        durations[-1] = round(out["hold_last"] * 1000)
    return count, size, durations


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_writes_the_gif_it_promises(path, tmp_path, monkeypatch, quickdraw_dir):
    # Recipes that draw from the shipped pack or start their model from it (`model.from` /
    # `model.start: zoo-26`) get the pack's plugin too (the others train their own, untrained,
    # model): cat-to-dog's morph names dog, which only the pack's model knows.
    starts = {"start", "from"} & set((yaml.safe_load(path.read_text()) or {}).get("model") or {})
    plugins = "datasets,seeds,filters,writers,generators" + (",packs" if starts else "")
    monkeypatch.setenv("QD_LOAD_PLUGINS", plugins)
    recipe = load(path, build().registry)
    # At most 3 pictures: the promised layout follows from generate.n either way, and inking
    # zoo-345's 345 samples (or any recipe's 16 x T frames) would cost more than the rest.
    # zoo-345 trains 2 steps (class-conditional, balanced over 345 categories of rasterized
    # strokes: the most any recipe asks of the trainer); the others draw from their untrained
    # model (or one step's), which is all the GIF's layout needs. Training on real data
    # is tests/test_train.py's and tests/test_shared_models.py's.
    steps = TRAINED.get(path.stem, 0)
    recipe = recipe.with_overrides(iterations=steps, n=min(recipe.generate.n, 3))
    assert recipe.output.use == "gif"
    result = engine.run(recipe, out=tmp_path / f"{path.stem}.gif")
    count, size, durations = promised(recipe)
    # Read as a user's code would, through imageio: every frame as an RGB array. (A greyscale
    # GIF's later frames failed there under Pillow 13 until the GIF had one palette.)
    frames = iio.imread(result.path, index=None)
    assert frames.shape[1:] == (*size, 3)
    got = [iio.immeta(result.path, index=i)["duration"] for i in range(len(frames))]
    # Pillow stores a frame identical to the one before it once, for both durations (a
    # completion's first step can redraw the partial drawing exactly): every promised frame
    # is shown for its time, and each stored one covers a run of them.
    assert len(got) <= count and sum(got) == sum(durations)
    ends = set(np.cumsum(durations).tolist())
    assert set(np.cumsum(got).tolist()) <= ends
