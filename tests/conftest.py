"""Shared fixtures. Tests that need the real Quick, Draw! files ask for `quickdraw_dir`.

Without the data they skip on a developer's machine (with the reason) but FAIL under CI
(CI=true), so a CI run can never go green while silently skipping the real-data tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def quickdraw_dir() -> Path:
    value = os.environ.get("QD_DATA_DIR")
    path = Path(value) if value else None
    if path is None or not (path / "numpy_bitmap").is_dir() or not (path / "simplified").is_dir():
        msg = (
            f"real data missing: QD_DATA_DIR={value!r} must name a folder holding numpy_bitmap/ "
            "and simplified/ (the repo's CI points it at ../shared/data/quickdraw)"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@contextlib.contextmanager
def cache_dir_set(path):
    """QD_CACHE_DIR set to `path` for the block (a module or session fixture, where pytest's
    monkeypatch cannot reach), then as it was."""
    saved = os.environ.get("QD_CACHE_DIR")
    os.environ["QD_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("QD_CACHE_DIR", None)
        else:
            os.environ["QD_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's real cache from a test."""
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "qd-cache"))


@pytest.fixture(autouse=True)
def _fresh_cli_plugins():
    """`qd` commands run in this process (typer's CliRunner) keep the registry they built
    (cli._plugins: one process is one command). A test that ran one under a narrower
    QD_LOAD_PLUGINS would hand later tests its registry, so which tests pass would depend on
    their order (it did, under pytest-xdist). Every test starts from a fresh one."""
    import sys

    yield
    cli = sys.modules.get("qdcore.cli")
    if cli is not None:
        cli._plugins.cache_clear()


def write_distribution(
    root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "0.1"
) -> Path:
    """Make `root` look like a site-packages holding distribution `dist`: its modules plus a
    .dist-info with `qd` entry points. Put `root` on sys.path (or PYTHONPATH) to install it."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[qd]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return root


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A throwaway site folder on sys.path; returns a function that installs a distribution."""
    import importlib
    import sys

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(dist, modules, entry_points, version="0.1"):
        write_distribution(site, dist, modules, entry_points, version)
        importlib.invalidate_caches()
        return site

    yield install
    for name in [m for m in sys.modules if m.startswith("qdtest_")]:
        del sys.modules[name]


TINY_RECIPE = """\
name: tiny
dataset: {use: quickdraw, category: apple, limit: 200}
model: {T: 4, enc_size: 32, dec_size: 32, z_size: 4}
train: {iterations: 30, batch_size: 20, warmup: 0}
generate: {n: 16}
output: {use: gif, frames: steps, attention: true, duration: 0.1}
"""


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, quickdraw_dir):
    """A tiny DRAW trained for 30 steps into the tests' shared cache (the studio tests
    generate with it). Returns the recipe file; the model is in QD_CACHE_DIR's models/."""
    from qdcore import engine
    from qdcore.plugin_manager import build
    from qdcore.recipe import load

    folder = tmp_path_factory.mktemp("tiny")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    with cache_dir_set(tmp_path_factory.getbasetemp() / "qd-cache"):
        r = load(recipe, build().registry)
        engine.Run(r).model()
    return recipe


TINY_ZOO = """\
name: tiny-zoo
dataset: {use: quickdraw, category: [cat, apple, fish], limit: 100}
model: {T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}
train: {iterations: 6, batch_size: 30}
"""


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory, quickdraw_dir) -> Path:
    """A tiny class-conditional model (cat, apple, fish; 6 steps) as a model pack named
    zoo-26, standing in for the one qd ships: `<folder>/zoo-26.safetensors` (format 2).
    Install it with the `installed_packs` fixture, or import it into a cache
    (qdcore.packs.import_pack)."""
    from qdcore import engine, packs
    from qdcore.plugin_manager import build
    from qdcore.recipe import load

    root = tmp_path_factory.mktemp("tiny-pack")
    (root / "tiny-zoo.yaml").write_text(TINY_ZOO)
    with cache_dir_set(root / "cache"):
        r = load(root / "tiny-zoo.yaml", build().registry)
        engine.Run(r).model()
        packs.export("tiny-zoo", root / "tiny-zoo.safetensors", root / "cache", {})
    pack, weights = packs.read(root / "tiny-zoo.safetensors")
    (root / "shipped").mkdir()
    return packs.write(root / "shipped" / "zoo-26.safetensors", {**pack.manifest, "name": "zoo-26"}, weights)


@pytest.fixture
def installed_packs(monkeypatch, tmp_path):
    """What the built-in `packs` plugin finds in plugins/packs/, chosen by the test (the
    repository may ship a pack or not): `installed_packs()` no pack, `installed_packs(file,
    ...)` those files. Call it before plugin_manager.build(); `qd` commands run in this
    process (typer's CliRunner) build their registry again after it."""
    from qdcore import cli
    from qdplugins import packs as builtin

    def install(*files: Path) -> Path:
        folder = tmp_path / f"installed-packs-{len(list(tmp_path.glob('installed-packs-*')))}"
        folder.mkdir()
        for f in files:
            shutil.copyfile(f, folder / Path(f).name)
        monkeypatch.setattr(builtin, "FOLDER", folder)
        cli._plugins.cache_clear()
        return folder

    return install  # later tests see the repository's packs again: _fresh_cli_plugins
