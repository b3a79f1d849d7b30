"""The studio's Train fine-tunes a recipe that starts from a pack (`model.start`) exactly as
`qd train` does (issue 27): the page says what it starts from, shows the job's progress, and
the model it leaves is the one `qd train` makes in another cache: the same folder, the same
record of its start, the same weights. Real data (25 windmills), the shipped zoo-26 pack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_studio_browser import chromium_path, studio_process

QD = str(Path(sys.executable).parent / "qd")
RECIPE = """name: windmill-ft
dataset: {use: quickdraw-strokes, category: windmill}
model: {write_n: 10, start: zoo-26}
train: {iterations: 24, checkpoint_every: 8}
generate: {n: 4}
seeds: [prior]
output: {use: gif, frames: samples}
"""


def env_for(cache: Path) -> dict:
    env = {**os.environ, "QD_CACHE_DIR": str(cache), "QD_STEP_PLAN": "float32-streams"}
    env.pop("QD_LOAD_PLUGINS", None)  # every built-in, the shipped pack's plugin included
    return env


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, quickdraw_dir) -> Path:
    path = tmp_path_factory.mktemp("ft") / "windmill-ft.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def server(recipe, tmp_path_factory):
    yield from studio_process([str(recipe)], env_for(tmp_path_factory.mktemp("studio-cache")))


def model_folders(cache: Path) -> list[Path]:
    return [p for p in (cache / "models").glob("windmill-ft-*") if p.is_dir() and not p.name.endswith(".lock")]


def weights(folder: Path) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(folder / "checkpoints")))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith("model/")}


def test_train_in_the_studio_fine_tunes_as_qd_train_does(server, recipe, tmp_path, shots_folder):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server["url"])
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.wait_for_function(
            "document.querySelector('#model-state').innerText.includes('starts from the model pack')", timeout=60_000
        )
        assert "'zoo-26'" in page.locator("#model-state").inner_text()
        page.click("#train")
        page.wait_for_selector("#jobs .job[data-state=done]", timeout=300_000)
        job = page.locator("#jobs .job").inner_text()
        assert "windmill-ft: done" in job and "step 24 / 24" in job, job
        page.wait_for_function("document.querySelector('#model-state').innerText.includes('is trained')")
        page.screenshot(path=str(shots_folder / "studio-finetune.png"))
        browser.close()
    assert not errors, errors

    (studio_model,) = model_folders(server["cache"])
    cli_cache = tmp_path / "cli-cache"
    out = subprocess.run(
        [QD, "train", str(recipe), "--quiet"], capture_output=True, text=True, env=env_for(cli_cache), timeout=600
    )
    assert out.returncode == 0, out.stderr
    (cli_model,) = model_folders(cli_cache)
    assert cli_model.name == studio_model.name  # the same cache key: the same start, settings and data
    studio_start = json.loads((studio_model / "finished.json").read_text())["start"]
    assert studio_start == json.loads((cli_model / "finished.json").read_text())["start"]
    assert studio_start["identity"]["pack"] == "zoo-26" and set(studio_start["rows"]) == {"windmill"}
    mine, theirs = weights(studio_model), weights(cli_model)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def shots_folder(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("QD_STUDIO_SHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
