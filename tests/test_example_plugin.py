"""The third-party example in docs/examples/qd-spiral, installed for real with pip where the
`qd` command can see it, listed by `qd plugins --json`, and used by name in a recipe run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

ROOT = Path(__file__).resolve().parents[1]
QD = str(Path(sys.executable).parent / "qd")


@pytest.fixture(scope="module")
def spiral_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    # --no-build-isolation: build with this environment's setuptools, no index needed;
    # --no-deps: qd itself is already installed here.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(ROOT / "docs" / "examples" / "qd-spiral"),
        ],
        check=True,
    )
    return site


def run_qd(args, site, cwd):
    env = {**os.environ, "PYTHONPATH": str(site), "QD_LOAD_PLUGINS": "datasets,seeds,filters,writers,spiral"}
    return subprocess.run([QD, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_qd_plugins_lists_the_installed_example(spiral_site, tmp_path):
    r = run_qd(["plugins", "--json"], spiral_site, tmp_path)
    assert r.returncode == 0, r.stderr
    spiral = [p for p in json.loads(r.stdout) if p["name"] == "spiral"]
    assert spiral == [
        {
            "name": "spiral",
            "version": "0.1.0",
            "hooks": ["qd_register_seed_strategies"],
            "provides": {
                "datasets": [],
                "seed_strategies": ["spiral"],
                "filters": [],
                "writers": [],
                "recognizers": [],
                "generators": [],
                "models": [],
            },
        }
    ]


def test_a_recipe_uses_the_example_by_name(spiral_site, tmp_path, quickdraw_dir):
    recipe = tmp_path / "spiral.yaml"
    recipe.write_text("""
name: spiral
dataset: {use: quickdraw, category: apple, limit: 200}
model: {T: 3, enc_size: 16, dec_size: 16, z_size: 4}
train: {iterations: 3, batch_size: 16, checkpoint_every: 10}
generate: {n: 4}
seeds:
  - {use: spiral, turns: 2}
  - {use: random-pixels}
output: {use: gif, frames: steps, duration: 0.2}
""")
    r = run_qd(["run", recipe, "--quiet"], spiral_site, tmp_path)
    assert r.returncode == 0, r.stderr
    gif = tmp_path / "spiral.gif"
    assert r.stdout.strip() == str(gif)
    assert len(iio.imread(gif, index=None)) == 3  # one frame per drawing step
    bad = run_qd(["validate", recipe.with_name("bad.yaml")], spiral_site, tmp_path)
    assert bad.returncode == 2


def test_the_examples_own_tests_pass_against_the_installed_package(spiral_site, tmp_path):
    tests = ROOT / "docs" / "examples" / "qd-spiral" / "test_qd_spiral.py"
    env = {**os.environ, "PYTHONPATH": str(spiral_site)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tests)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
