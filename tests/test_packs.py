"""Model packs (real data, a tiny model): a model trained here is exported as one file,
imported into a fresh cache and drawn by a recipe's `model.from`; a plugin provides a pack
through `qd_register_models`, found after the user's cache; every damaged, foreign, oversized
or hostile pack is refused with one line and exit 2, leaving the cache exactly as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import cache_dir_set

from qdcore import InputError, PluginError, RecipeError, engine, packs
from qdcore.plugin_manager import build
from qdcore.recipe import load
from qdcore.training.mixing import split, stream_labels

QD = str(Path(sys.executable).parent / "qd")
BUILTINS = "datasets,seeds,filters,writers"
ZOO = """name: tiny-zoo
dataset: {use: quickdraw, category: [cat, apple, fish], limit: 100}
model: {T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}
train: {iterations: 6, batch_size: 30, checkpoint_every: 3}
"""
CAT = """name: pack-cat
dataset: {use: quickdraw, category: %s, limit: 100}
model: {from: %s, if_missing: %s, T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}
train: {iterations: 2, batch_size: 30}
generate: {n: 4}
seeds: [prior]
output: {use: gif, frames: samples}
"""
PLUGIN = """
from qdcore import hookimpl

@hookimpl
def qd_register_models(register):
    register("tiny-zoo", %r, description="a test pack")
"""


def qd(*args, cache: Path, extra_env=None):
    env = {**os.environ, "QD_LOAD_PLUGINS": BUILTINS, "QD_CACHE_DIR": str(cache), **(extra_env or {})}
    return subprocess.run([QD, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def tree(folder: Path) -> dict:
    """Every path under `folder` with its bytes (folders as None): what "unchanged" means."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, quickdraw_dir):
    """The tiny zoo trained (and evaluated) into cache A, exported by the CLI as one file."""
    from qdcore import models
    from qdcore.training import train

    root = tmp_path_factory.mktemp("packs")
    cache = root / "cache-a"
    recipe = root / "zoo.yaml"
    recipe.write_text(ZOO)
    with cache_dir_set(cache):
        r = load(recipe, build().registry)
        data = engine.load_data(r, engine.prepare(r))
        trained = engine.ensure_model(r, data)
        figures = train.evaluate(trained, data, r.train)
        models.record_evaluation(trained.workdir, {"step": trained.step, **figures})
    file = root / "tiny-zoo.qdpack"
    out = qd("models", "export", "tiny-zoo", file, cache=cache)
    assert out.returncode == 0, out.stderr
    return {"file": file, "cache": cache, "recipe": recipe, "workdir": trained.workdir, "bound": figures["bound"]}


def test_an_exported_pack_is_a_manifest_and_named_float_arrays(exported):
    with zipfile.ZipFile(exported["file"]) as z:
        assert sorted(z.namelist()) == ["manifest.json", "weights.npz"]
        manifest = json.loads(z.read("manifest.json"))
        weights = z.read("weights.npz")
    assert manifest["format"] == "qd-model-pack" and manifest["format_version"] == 1
    assert (
        manifest["name"] == "tiny-zoo"
        and manifest["categories"] == ["cat", "apple", "fish"]
        and manifest["conditional"]
    )
    assert manifest["steps"] == 6 and manifest["model"]["enc_size"] == 16 and manifest["train"]["batch_size"] == 30
    assert manifest["files"]["weights.npz"] == {"sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights)}
    assert manifest["held_out"]["bound"] == pytest.approx(exported["bound"])
    data = manifest["data"]
    assert data["images"] == 300 and sum(data["per_category"].values()) == data["train_images"] == 270
    assert manifest["data"]["dataset"]["category"] == ["cat", "apple", "fish"]
    assert manifest["qd_version"]
    with np.load(io.BytesIO(weights), allow_pickle=False) as arrays:  # no pickle anywhere
        assert {"enc_kernel", "dec_kernel", "enc_table", "dec_table"} <= set(arrays.files)
        assert all(arrays[k].dtype == np.float32 for k in arrays.files)
    # Weights only: no Adam moments, so a pack is a fraction of the checkpoint.
    ckpt = sum(p.stat().st_size for p in (exported["workdir"] / "checkpoints").glob("ckpt-6.*"))
    assert len(weights) < ckpt / 2


def test_imported_into_a_fresh_cache_a_recipe_draws_from_it(exported, tmp_path, monkeypatch):
    from qdcore.training import train

    cache = tmp_path / "cache-b"
    out = qd("models", "import", exported["file"], cache=cache)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (cache / "packs" / "tiny-zoo").iterdir()) == ["manifest.json", "weights.npz"]
    rows = json.loads(qd("models", "--json", cache=cache).stdout)
    assert [(r["name"], r["source"], r["steps"], r["categories"]) for r in rows] == [
        ("tiny-zoo", "imported", 6, ["cat", "apple", "fish"])
    ]
    assert rows[0]["bound"] == pytest.approx(exported["bound"])
    assert "pack (imported)" in qd("models", cache=cache).stdout

    # `from: tiny-zoo` names no recipe here: the imported pack, steered to the recipe's category.
    monkeypatch.setenv("QD_CACHE_DIR", str(cache))
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    cat = load(_write(tmp_path, "cat.yaml", CAT % ("cat", "tiny-zoo", "error")), build().registry)
    lines = []
    result = engine.run(cat, out=tmp_path / "cat.gif", reporter=engine.Reporter(lines=lines.append))
    assert "model: 'cat' from the model pack 'tiny-zoo' (pack imported into the cache)" in lines
    assert not (cache / "models").exists()  # nothing trained
    frames = iio.imread(result.path, index=None)
    original = train.load(load(exported["recipe"], build().registry).model, exported["workdir"]).model
    expect = np.round(original.sample(4, seed=cat.seed, category="cat").final * 255)
    assert frames.shape[:3] == (4, 28, 28) and np.abs(frames[..., 0].astype(float) - expect).mean() < 1

    # `qd train --restart` does not retrain a pack.
    with pytest.raises(RecipeError, match="a pack is not retrained"):
        engine.ensure_model(cat, engine.load_data(cat, engine.prepare(cat)), restart=True)

    # A recipe that names the zoo's recipe finds its pack when the cache has no trained zoo.
    (tmp_path / "zoo.yaml").write_text(ZOO)
    fish = load(_write(tmp_path, "fish.yaml", CAT % ("fish", "zoo", "error")), build().registry)
    source = engine.shared_source(fish.shared)
    assert source.pack is not None and source.pack.path == cache / "packs" / "tiny-zoo"
    # qd eval scores the pack on held-out fish and leaves the pack's files alone.
    before = tree(cache)
    ev = qd("eval", tmp_path / "fish.yaml", "--quiet", cache=cache)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["step"] == 6 and tree(cache) == before
    # `qd eval --reconstruct` takes the fish the pack held out of its own three-category
    # training set (the zoo's split, its dataset found again from the manifest), never a
    # split of the fish alone, which would hand back fish the pack trained on.
    zoo_recipe = load(tmp_path / "zoo.yaml", build().registry)
    zoo_data = engine.load_data(zoo_recipe, engine.prepare(zoo_recipe))
    _, held = split(len(zoo_data.images), zoo_recipe.train, stream_labels(zoo_data))
    fish_rows = held[zoo_data.labels[held] == zoo_data.classes.index("fish")]
    with cache_dir_set(cache):
        pipeline = engine.Run(fish)
        drawings = engine.held_out_drawings(fish, pipeline.built, pipeline.model(), "fish", 10_000)
    assert len(fish_rows) > 0
    np.testing.assert_array_equal(drawings, zoo_data.as_float(fish_rows))

    # A category the pack lacks: the error names the pack and its categories.
    banana = load(_write(tmp_path, "banana.yaml", CAT % ("banana", "tiny-zoo", "error")), build().registry)
    with pytest.raises(Exception, match="model pack 'tiny-zoo'.*not trained on 'banana'.*cat, apple, fish"):
        engine.run(banana, out=tmp_path / "b.gif")


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name


def test_a_plugin_provides_a_pack_found_after_the_cache(exported, tmp_path, monkeypatch, fake_site):
    site = fake_site("qdtest-packs", {"qdtest_packs": PLUGIN % str(exported["file"])}, {"testpacks": "qdtest_packs"})
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS + ",testpacks")
    cache = tmp_path / "cache-c"
    monkeypatch.setenv("QD_CACHE_DIR", str(cache))
    registry = build().registry
    assert registry.get("models", "tiny-zoo").plugin == "testpacks"

    cat = load(_write(tmp_path, "cat.yaml", CAT % ("cat", "tiny-zoo", "error")), registry)
    source = engine.shared_source(cat.shared)
    assert source.label == "the model pack 'tiny-zoo' (pack from plugin 'testpacks')"
    assert source.pack.path == exported["file"]
    assert engine.run(cat, out=tmp_path / "cat.gif").path.exists()
    env = {"PYTHONPATH": str(site), "QD_LOAD_PLUGINS": BUILTINS + ",testpacks"}
    rows = json.loads(qd("models", "--json", cache=cache, extra_env=env).stdout)
    assert [(r["name"], r["source"], r["plugin"], r["path"]) for r in rows] == [
        ("tiny-zoo", "plugin", "testpacks", str(exported["file"]))
    ]
    assert "pack (testpacks)" in qd("models", cache=cache, extra_env=env).stdout
    plugins = {p["name"]: p for p in json.loads(qd("plugins", "--json", cache=cache, extra_env=env).stdout)}
    assert plugins["testpacks"]["provides"]["models"] == ["tiny-zoo"]

    # The user's cache comes first: an imported pack of the same name, then a model trained here.
    assert qd("models", "import", exported["file"], cache=cache).returncode == 0
    assert engine.shared_source(cat.shared).label == "the model pack 'tiny-zoo' (pack imported into the cache)"
    zoo_recipe = _write(tmp_path, "zoo.yaml", ZOO)
    zoo = load(zoo_recipe, registry)
    engine.ensure_model(zoo, engine.load_data(zoo, engine.prepare(zoo)))
    via_recipe = load(_write(tmp_path, "cat2.yaml", CAT % ("cat", "zoo", "error")), registry)
    assert engine.shared_source(via_recipe.shared).workdir == engine.model_dir(zoo)


def test_a_plugin_must_register_a_path(fake_site, monkeypatch):
    fake_site(
        "qdtest-badpack",
        {
            "qdtest_badpack": "from qdcore import hookimpl\n\n@hookimpl\n"
            "def qd_register_models(register):\n    register('x', 42)\n"
        },
        {"badpack": "qdtest_badpack"},
    )
    monkeypatch.setenv("QD_LOAD_PLUGINS", "badpack")
    with pytest.raises(PluginError, match="register the path of its .qdpack file"):
        build()


def test_the_builtin_plugin_registers_each_shipped_pack_file_and_nothing_else(tmp_path, monkeypatch):
    from qdplugins import packs as builtin

    def registered():
        names = []
        builtin.qd_register_models(lambda name, pack, description="": names.append((name, pack)))
        return names

    assert registered() == [(p.stem, p) for p in sorted(builtin.FOLDER.glob("*.qdpack"))]
    monkeypatch.setattr(builtin, "FOLDER", tmp_path)
    assert registered() == []  # no pack file: nothing registered
    (tmp_path / "zoo-26.qdpack").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a pack")
    assert registered() == [("zoo-26", tmp_path / "zoo-26.qdpack")]


# -- refusals ---------------------------------------------------------------------------------


def _members(file: Path) -> dict:
    with zipfile.ZipFile(file) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _zip(path: Path, members: list, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            info = zipfile.ZipInfo(name)
            if name == symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, data)
    return path


def _manifest(good: dict, **changes) -> bytes:
    m = json.loads(good["manifest.json"])
    m.update(changes)
    return json.dumps(m).encode()


def _bad(kind: str, good_file: Path, tmp: Path) -> tuple[Path, str, dict]:
    good = _members(good_file)
    m, w = good["manifest.json"], good["weights.npz"]
    out = tmp / f"{kind}.qdpack"
    env = {}
    if kind == "checksum":  # the bytes changed, the zip's own CRC recomputed: only sha256 can tell
        flipped = bytearray(w)
        flipped[-100] ^= 0xFF
        _zip(out, [("manifest.json", m), ("weights.npz", bytes(flipped))])
        match = "does not match the sha256"
    elif kind == "truncated":
        out.write_bytes(good_file.read_bytes()[: good_file.stat().st_size // 2])
        match = "damaged"
    elif kind == "traversal":
        _zip(out, [("manifest.json", m), ("../weights.npz", w)])
        match = "parent-relative path"
    elif kind == "absolute":
        _zip(out, [("manifest.json", m), ("/tmp/weights.npz", w)])
        match = "absolute"
    elif kind == "symlink":
        _zip(out, [("manifest.json", m), ("weights.npz", b"/etc/passwd")], symlink="weights.npz")
        match = "symbolic link"
    elif kind == "unexpected":
        _zip(out, [("manifest.json", m), ("weights.npz", w), ("run.py", b"print('hi')")])
        match = "unexpected member 'run.py'"
    elif kind == "foreign":
        _zip(out, [("manifest.json", _manifest(good, format="someone-elses-model")), ("weights.npz", w)])
        match = "not a qd model pack"
    elif kind == "version":
        _zip(out, [("manifest.json", _manifest(good, format_version=2)), ("weights.npz", w)])
        match = "format version 2"
    elif kind == "not-a-zip":
        out.write_text("name: cat\n")
        match = "not a qd model pack"
    elif kind == "no-weights":
        _zip(out, [("manifest.json", m)])
        match = "no weights.npz"
    elif kind == "too-large":
        out = good_file
        env = {packs.LIMIT_ENV: "0.01"}
        match = "above the 0.01 MB limit for a model pack"
    elif kind == "wrong-model":  # checksums fine, but the weights are not the manifest's model
        _zip(
            out,
            [("manifest.json", _manifest(good, model={**json.loads(m)["model"], "enc_size": 17})), ("weights.npz", w)],
        )
        match = "shaped"
    elif kind == "pickle":
        buf = io.BytesIO()
        np.savez(buf, enc_kernel=np.array([{"a": 1}], dtype=object))
        blob = buf.getvalue()
        files = {"weights.npz": {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}}
        _zip(out, [("manifest.json", _manifest(good, files=files)), ("weights.npz", blob)])
        match = "not a readable array file"
    # Hardening, round three (issue 31): every field typed, weights finite, the input a regular file.
    elif kind in ("nan-weights", "npz-text-member"):
        with np.load(io.BytesIO(w)) as z:
            arrays = {k: z[k] for k in z.files}
        buf = io.BytesIO()
        if kind == "nan-weights":
            arrays["out_bias"] = np.full_like(arrays["out_bias"], np.nan)
            np.savez(buf, **arrays)
            match = "holds NaN or infinite values"
        else:
            with zipfile.ZipFile(buf, "w") as z:
                z.writestr("enc_kernel.npy", b"not an array at all")
            match = "not a readable array file"
        blob = buf.getvalue()
        files = {"weights.npz": {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}}
        _zip(out, [("manifest.json", _manifest(good, files=files)), ("weights.npz", blob)])
    elif kind == "huge-model":  # 16 GiB of weights declared by a few bytes: refused before anything is built
        huge = {**json.loads(m)["model"], "enc_size": 4096, "dec_size": 4096, "height": 512, "width": 512}
        _zip(out, [("manifest.json", _manifest(good, model=huge, attention=False)), ("weights.npz", w)])
        match = "shaped|does not fit"
    elif kind == "deep-manifest":
        _zip(out, [("manifest.json", b"[" * 100_000 + b"]" * 100_000), ("weights.npz", w)])
        match = "not JSON"
    elif kind == "steps-text":
        _zip(out, [("manifest.json", _manifest(good, steps="many")), ("weights.npz", w)])
        match = "lacks `steps`"
    elif kind == "bound-nan":
        _zip(out, [("manifest.json", _manifest(good, held_out={"bound": float("nan")})), ("weights.npz", w)])
        match = "not a finite number"
    elif kind == "name-newline":
        _zip(out, [("manifest.json", _manifest(good, name="tiny-zoo\n")), ("weights.npz", w)])
        match = "is not a pack name"
    elif kind == "device":
        out = Path("/dev/zero")
        match = "not a regular file"
    return out, match, env


REFUSALS = [
    "checksum",
    "truncated",
    "traversal",
    "absolute",
    "symlink",
    "unexpected",
    "foreign",
    "version",
    "not-a-zip",
    "no-weights",
    "too-large",
    "wrong-model",
    "pickle",
    "nan-weights",
    "npz-text-member",
    "huge-model",
    "deep-manifest",
    "steps-text",
    "bound-nan",
    "name-newline",
    "device",
]


@pytest.mark.parametrize("kind", REFUSALS)
def test_a_bad_pack_is_refused_with_one_line_and_the_cache_is_unchanged(kind, exported, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    packs.import_pack(exported["file"], cache)  # a cache with something in it
    before = tree(cache)
    bad, match, env = _bad(kind, exported["file"], tmp_path)
    r = qd("models", "import", bad, "--force", cache=cache, extra_env=env)
    assert r.returncode == 2, r.stderr
    # (Building the model to check the weights starts TensorFlow, whose start-up notices qd cannot silence.)
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith(("I0000", "WARNING: All log"))]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr
    assert re.search(match, lines[0]), lines[0]
    assert tree(cache) == before
    # Into an empty cache: not even the packs/ folder is left behind.
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    empty = tmp_path / "empty"
    with pytest.raises(InputError):
        packs.import_pack(bad, empty)
    assert not empty.exists()


def test_importing_a_name_that_exists_needs_force(exported, tmp_path):
    cache = tmp_path / "cache"
    assert qd("models", "import", exported["file"], cache=cache).returncode == 0
    before = tree(cache)
    again = qd("models", "import", exported["file"], cache=cache)
    assert again.returncode == 2 and "already imported" in again.stderr and "--force" in again.stderr
    assert tree(cache) == before
    forced = qd("models", "import", exported["file"], "--force", cache=cache)
    assert forced.returncode == 0, forced.stderr
    # The same pack again: the same two files, no leftovers (the import lock keeps its last holder's pid).
    lock = ".packs-import.lock"
    assert {k: v for k, v in tree(cache).items() if k != lock} == {k: v for k, v in before.items() if k != lock}
    # Export of an imported pack gives back the same archive, byte for byte.
    copy = tmp_path / "copy.qdpack"
    assert qd("models", "export", "tiny-zoo", copy, cache=cache).returncode == 0
    assert copy.read_bytes() == exported["file"].read_bytes()


def test_unknown_names_are_one_line_errors(exported, tmp_path):
    r = qd("models", "export", "nope", tmp_path / "x.qdpack", cache=exported["cache"])
    assert r.returncode == 2 and r.stderr.startswith("Error: no model named 'nope'") and "tiny-zoo" in r.stderr
    assert not (tmp_path / "x.qdpack").exists()
    missing = qd("models", "import", tmp_path / "absent.qdpack", cache=tmp_path / "c")
    assert missing.returncode == 2 and missing.stderr.startswith("Error: ")


def test_a_recipe_without_a_pack_says_why_and_how_long_it_trains(tmp_path, monkeypatch, quickdraw_dir):
    # A cache of its own: the session's shared one may hold a tiny-zoo another test trained
    # (tests/test_shared_models.py), and a measured speed of this model. No `packs` plugin:
    # the zoo-26 pack qd ships is not named here anyway.
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    (tmp_path / "zoo.yaml").write_text(ZOO)
    own = load(_write(tmp_path, "banana.yaml", CAT % ("banana", "zoo", "train")), build().registry)
    lines = []
    category, source = engine.shared_category(
        own, engine.load_data(own, engine.prepare(own)), engine.Reporter(lines=lines.append)
    )
    assert category is None and source is None
    assert len(lines) == 1
    line = lines[0]
    assert (
        line.startswith("model: the shared model 'tiny-zoo' is not in the cache")
        and "no model pack of that name" in line
    )
    assert "training this recipe's own model instead (if_missing: train): 2 steps of 30 = 60 images" in line
    # Nothing was measured for this tiny model here, so no time is promised.
    assert "no training speed of this model is measured here yet" in line


def test_qd_models_lists_a_damaged_import_without_failing(exported, tmp_path):
    cache = tmp_path / "cache"
    packs.import_pack(exported["file"], cache)
    broken = cache / "packs" / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    r = qd("models", "--json", cache=cache)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["tiny-zoo"]["status"] == "finished"
    assert rows["broken"]["status"] == "damaged" and "not JSON" in rows["broken"]["error"]
    table = qd("models", cache=cache).stdout
    assert "! broken:" in table and "not JSON" in table


def test_export_takes_a_description_and_recognizer_figures(exported, tmp_path):
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"cat": {"recognized": 0.5, "frechet": 12.0, "frechet_floor": 1.0}}))
    out = tmp_path / "described.qdpack"
    r = qd(
        "models",
        "export",
        "tiny-zoo",
        out,
        "--description",
        "6 steps on 300 drawings",
        "--figures",
        figures,
        cache=exported["cache"],
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads(_members(out)["manifest.json"])
    assert manifest["description"] == "6 steps on 300 drawings" and manifest["recognizer"]["cat"]["recognized"] == 0.5
    figures.write_text("[1, 2]")
    bad = qd("models", "export", "tiny-zoo", tmp_path / "no.qdpack", "--figures", figures, cache=exported["cache"])
    assert bad.returncode == 2 and "one JSON object" in bad.stderr and not (tmp_path / "no.qdpack").exists()


def test_an_import_a_kill_interrupted_leaves_nothing_that_lasts(exported, tmp_path):
    root = tmp_path / "cache" / "packs"
    old, fresh = root / ".import-old", root / ".import-fresh"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "weights.npz").write_bytes(b"half")
    os.utime(old, (0, 0))
    packs.import_pack(exported["file"], tmp_path / "cache")
    assert not old.exists() and fresh.exists()  # a recent one may be another import at work
    assert [r["name"] for r in packs.listing(tmp_path / "cache", {})] == ["tiny-zoo"]


# -- hardening, round three (issue 31) ---------------------------------------------------------


def test_links_under_the_packs_folder_are_never_followed(exported, tmp_path):
    cache = tmp_path / "cache"
    packs.import_pack(exported["file"], cache)
    (cache / "packs" / "usr").symlink_to("/usr")  # was: `qd models` walked 8 GB of /usr
    (cache / "packs" / "copy").symlink_to(cache / "packs" / "tiny-zoo")
    assert [r["name"] for r in packs.listing(cache, {})] == ["tiny-zoo"]
    assert packs.imported(cache, "copy") is None and packs.imported(cache, "usr") is None
    assert packs.find(cache, "copy") is None


def test_two_imports_of_one_name_cannot_both_succeed(exported, tmp_path):
    import threading

    cache, barrier, results = tmp_path / "cache", threading.Barrier(4), []

    def one():
        barrier.wait()
        try:
            packs.import_pack(exported["file"], cache)
            results.append("imported")
        except InputError as e:
            results.append(str(e))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results)[-1] == "imported" and results.count("imported") == 1, results
    assert all("already imported" in r for r in results if r != "imported")


def test_export_refuses_to_write_a_pack_that_import_would_refuse(exported, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(exported["cache"], cache)
    (workdir,) = [p for p in (cache / "models").iterdir() if p.is_dir() and not p.name.endswith(".lock")]
    (workdir / "eval.json").write_text('{"step": 6, "bound": NaN}')  # a diverged run's record
    out = tmp_path / "x.qdpack"
    with pytest.raises(InputError, match="not exported: `qd models import` would refuse it: .*not a finite number"):
        packs.export("tiny-zoo", out, cache, {})
    assert not out.exists()
