"""Model packs (real data, a tiny model): a model trained here is exported as one file
(format 2, .safetensors, with its model card; format 1, .qdpack, by that suffix), imported
into a fresh cache and drawn by a recipe's `model.from`; a plugin provides a pack through
`qd_register_models`, found after the user's cache; every damaged, foreign, oversized or
hostile pack of either format is refused with one line and exit 2, leaving the cache exactly
as it was."""

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
import types

import pytest
import yaml
from conftest import cache_dir_set
from safetensors import safe_open
from safetensors.numpy import save as save_tensors

from qdcore import InputError, PluginError, RecipeError, cards, engine, packs, sources
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
    """The tiny zoo trained (and evaluated) into cache A, exported by the CLI as one file:
    `file` in format 2 (the default), `v1` in format 1 (a .qdpack name, a folder of its own:
    the two would share a card)."""
    from qdcore import models
    from qdcore.training import train

    root = tmp_path_factory.mktemp("packs")
    cache = root / "cache-a"
    recipe = root / "zoo.yaml"
    recipe.write_text(ZOO)
    with cache_dir_set(cache):
        r = load(recipe, build().registry)
        pipeline = engine.Run(r)
        data, trained = pipeline.data(), pipeline.model()
        figures = train.evaluate(trained, data, r.train)
        models.record_evaluation(trained.workdir, {"step": trained.step, **figures})
    file = root / "tiny-zoo.safetensors"
    out = qd("models", "export", "tiny-zoo", file, cache=cache)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {file} (tiny-zoo, format 2, ") and "tiny-zoo.README.md" in out.stdout
    v1 = root / "v1" / "tiny-zoo.qdpack"
    v1.parent.mkdir()
    out = qd("models", "export", "tiny-zoo", v1, cache=cache)
    assert out.returncode == 0, out.stderr
    return {
        "file": file,
        "v1": v1,
        "cache": cache,
        "recipe": recipe,
        "workdir": trained.workdir,
        "bound": figures["bound"],
    }


def _header(file: Path) -> tuple[dict, bytes]:
    """A .safetensors file's header (as JSON) and its data section, read by hand."""
    raw = file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_an_exported_pack_is_one_safetensors_file_with_the_manifest_in_its_metadata(exported):
    header, data = _header(exported["file"])
    assert set(header["__metadata__"]) == {"qd_manifest"}
    manifest = json.loads(header["__metadata__"]["qd_manifest"])
    assert manifest["format"] == "qd-model-pack" and manifest["format_version"] == 2
    names = sorted(k for k in header if k != "__metadata__")
    assert {"enc_kernel", "dec_kernel", "enc_table", "dec_table"} <= set(names)
    assert all(header[k]["dtype"] == "F32" for k in names)
    # Tensors back to back in name order, from the data section's first byte to its last ...
    spans = [header[k]["data_offsets"] for k in names]
    assert spans[0][0] == 0 and spans[-1][1] == len(data) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # ... so the checksum of the data section is that of the tensors' bytes in name order.
    assert manifest["files"] == {"tensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    with safe_open(exported["file"], framework="numpy") as f:  # what the safetensors library reads
        assert f.metadata() == header["__metadata__"]
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    canonical = b"".join(tensors[k].astype("<f4").tobytes() for k in sorted(tensors))
    assert hashlib.sha256(canonical).hexdigest() == manifest["files"]["tensors"]["sha256"]
    assert manifest["name"] == "tiny-zoo" and manifest["categories"] == ["cat", "apple", "fish"]
    assert manifest["steps"] == 6 and manifest["held_out"]["bound"] == pytest.approx(exported["bound"])
    # The same weights and manifest as format 1, but for the format fields.
    with zipfile.ZipFile(exported["v1"]) as z:
        v1 = json.loads(z.read("manifest.json"))
        with np.load(io.BytesIO(z.read("weights.npz")), allow_pickle=False) as arrays:
            assert set(arrays.files) == set(tensors)
            assert all(np.array_equal(arrays[k], tensors[k]) for k in tensors)
    fields = ("format_version", "files")
    assert {k: v for k, v in v1.items() if k not in fields} == {k: v for k, v in manifest.items() if k not in fields}


def test_export_writes_a_model_card_beside_the_pack(exported):
    card = exported["file"].with_name("tiny-zoo.README.md")
    text = card.read_text(encoding="utf-8")
    _, front_text, body = text.split("---\n", 2)
    front = yaml.safe_load(front_text)
    assert front["license"] == "cc-by-4.0" and front["datasets"] == ["quickdraw"]
    assert "Quick, Draw!" in front["attribution"] and "Google" in front["attribution"]
    assert "CC BY 4.0" in front["attribution"]
    manifest = packs.read(exported["file"], verify=False)[0].manifest
    counts = manifest["data"]["per_category"]
    train = {"steps": 6, "batch_size": 30, "images": 180, "train_drawings": sum(counts.values())}
    assert front["qd"] == {
        "pack": "tiny-zoo",
        "format_version": 2,
        "categories": 3,
        "conditional": True,
        "training": train,
    }
    (result,) = front["model-index"][0]["results"]
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert metrics["held_out.bound"] == pytest.approx(exported["bound"], abs=1e-3)
    assert "qd models import tiny-zoo.safetensors" in body and "model: {from: tiny-zoo}" in body
    for cat in ("cat", "apple", "fish"):
        bound = manifest["held_out"]["per_category"][cat]
        assert f"| {cat} | {counts[cat]:,} | {bound:.1f} |" in body
    assert "CC BY 4.0" in body and "Google" in body
    # A .qdpack export has its card too, naming that file.
    assert "qd models import tiny-zoo.qdpack" in exported["v1"].with_name("tiny-zoo.README.md").read_text()


def test_a_card_claims_no_license_for_data_that_is_not_quick_draw(exported):
    manifest = packs.read(exported["file"], verify=False)[0].manifest
    own = {**manifest, "data": {**manifest["data"], "dataset": {"use": "images", "path": "mine/*.png"}}}
    front = yaml.safe_load(cards.card_text(own, "x.safetensors").split("---\n")[1])
    assert front["license"] == "unknown" and front["datasets"] == [] and "attribution" not in front
    assert "set `license:`" in cards.card_text(own, "x.safetensors")


def test_a_qdpack_export_is_format_1_a_manifest_and_named_float_arrays(exported):
    with zipfile.ZipFile(exported["v1"]) as z:
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
    # Format 2 is kept as the file it came as, every byte of it checked.
    assert [p.name for p in (cache / "packs" / "tiny-zoo").iterdir()] == ["model.safetensors"]
    assert (cache / "packs" / "tiny-zoo" / "model.safetensors").read_bytes() == exported["file"].read_bytes()
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
        engine.Run(cat).model(restart=True)

    # A recipe that names the zoo's recipe finds its pack when the cache has no trained zoo.
    (tmp_path / "zoo.yaml").write_text(ZOO)
    fish = load(_write(tmp_path, "fish.yaml", CAT % ("fish", "zoo", "error")), build().registry)
    source = sources.shared_source(fish.shared)
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
    source = sources.shared_source(cat.shared)
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
    assert sources.shared_source(cat.shared).label == "the model pack 'tiny-zoo' (pack imported into the cache)"
    zoo_recipe = _write(tmp_path, "zoo.yaml", ZOO)
    zoo = load(zoo_recipe, registry)
    engine.Run(zoo).model()
    via_recipe = load(_write(tmp_path, "cat2.yaml", CAT % ("cat", "zoo", "error")), registry)
    assert sources.shared_source(via_recipe.shared).workdir == sources.model_dir(zoo)


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
    with pytest.raises(PluginError, match="register the path of its pack file"):
        build()


def test_the_builtin_plugin_registers_each_shipped_pack_file_and_nothing_else(tmp_path, monkeypatch):
    from qdplugins import packs as builtin

    def registered():
        names = []
        builtin.qd_register_models(lambda name, pack, description="": names.append((name, pack)))
        return names

    shipped = sorted(builtin.FOLDER.glob("*.safetensors")) + sorted(builtin.FOLDER.glob("*.qdpack"))
    assert sorted(registered()) == sorted((p.stem, p) for p in shipped)
    monkeypatch.setattr(builtin, "FOLDER", tmp_path)
    assert registered() == []  # no pack file: nothing registered
    (tmp_path / "zoo-26.qdpack").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a pack")
    (tmp_path / "zoo-26.README.md").write_text("a card")
    assert registered() == [("zoo-26", tmp_path / "zoo-26.qdpack")]
    (tmp_path / "older.qdpack").write_bytes(b"")
    (tmp_path / "zoo-26.safetensors").write_bytes(b"")  # converted in place: format 2 is served
    assert registered() == [("older", tmp_path / "older.qdpack"), ("zoo-26", tmp_path / "zoo-26.safetensors")]


def test_the_shipped_pack_is_format_2_with_its_card_and_packaged(monkeypatch):
    """plugins/packs/zoo-26.safetensors: format 2, verified whole; its card is what export
    writes from its manifest; every file there is in the wheel's package data."""
    import fnmatch
    import tomllib

    from qdplugins import packs as builtin

    assert not list(builtin.FOLDER.glob("*.qdpack"))  # moved to format 2
    pack, weights = packs.read(builtin.FOLDER / "zoo-26.safetensors")
    assert pack.version == 2 and pack.name == "zoo-26" and len(pack.categories) == 26
    # A relay's pack: the manifest's steps are its last leg's, and every leg is listed.
    legs = pack.manifest["legs"]
    assert legs[-1]["steps"] == pack.manifest["steps"] and all(leg["steps"] > 0 for leg in legs)
    assert cards.front_matter(pack.manifest)["qd"]["training"]["steps"] == sum(leg["steps"] for leg in legs)
    # `qd models` (and the studio's list) show every leg's steps, not the last leg's alone.
    entry = types.SimpleNamespace(factory=str(pack.path), plugin="packs")
    (row,) = packs.listing(builtin.FOLDER / "no-cache-here", {"zoo-26": entry})
    assert len(legs) > 1 and row["steps"] == sum(leg["steps"] for leg in legs) > pack.manifest["steps"]
    # and so do `model: step N` and the studio's "model step", which read the loaded model's.
    assert packs.load(pack).step == row["steps"]
    packs.check_weights(pack, weights.arrays(pack.path))
    card = (builtin.FOLDER / "zoo-26.README.md").read_text(encoding="utf-8")
    assert card == cards.card_text(pack.manifest, "zoo-26.safetensors"), "regenerate it: see docs/packs.md"
    root = builtin.FOLDER.parent.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["qdplugins"]
    for file in builtin.FOLDER.iterdir():
        assert any(fnmatch.fnmatch(f"packs/{file.name}", glob) for glob in data), file


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


# -- format 2: hostile .safetensors files ------------------------------------------------------


def _st(header, data: bytes, length: int | None = None) -> bytes:
    """A .safetensors file by hand: the header's length (8 bytes, little-endian), the header
    (a dict, or raw bytes), the data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def _tensors(good_file: Path) -> tuple[dict, dict]:
    """The manifest and the named arrays of a format-2 pack."""
    pack, weights = packs.read(good_file)
    return pack.manifest, {k: np.array(v) for k, v in weights.arrays(good_file).items()}


def _saved(out: Path, manifest, arrays: dict, **metadata) -> Path:
    """A well-formed file (written by the safetensors library) holding `manifest` (a dict: its
    checksum set to these arrays; or the text as it is) and `arrays`."""
    if isinstance(manifest, dict):
        data = b"".join(arrays[k].astype("<f4").tobytes() for k in sorted(arrays))
        manifest = {**manifest, "files": {"tensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}}
        manifest = json.dumps(manifest)
    out.write_bytes(save_tensors(arrays, metadata={"qd_manifest": manifest, **metadata}))
    return out


def _bad_v2(kind: str, good_file: Path, tmp: Path) -> tuple[Path, str, dict]:
    header, data = _header(good_file)
    manifest, arrays = _tensors(good_file)
    out = tmp / f"{kind}.safetensors"
    env = {}
    first = sorted(k for k in header if k != "__metadata__")[0]
    if kind == "st-header-past-end":  # the first 8 bytes promise more header than the file has
        raw = good_file.read_bytes()
        out.write_bytes(len(raw).to_bytes(8, "little") + raw[8:])
        match = "past the end of the file"
    elif kind == "st-header-100mb":  # 100 MB of header (sparse): refused before one byte of it is read
        with open(out, "wb") as f:
            f.write((100_000_000).to_bytes(8, "little") + b"{")
            f.truncate(100_000_008)
        match = "header is 100,000,000 bytes, above the 4 MB"
    elif kind == "st-short":
        out.write_bytes(b"\x10\x00\x00")
        match = "under 8 bytes"
    elif kind == "st-header-not-json":
        out.write_bytes(_st(b"{not json   ", data))
        match = "header is not JSON"
    elif kind == "st-header-nested":
        out.write_bytes(_st(b"[" * 100_000 + b"]" * 100_000, data))
        match = "header is not JSON"
    elif kind == "st-header-list":
        out.write_bytes(_st(b"[1, 2]", data))
        match = "not a JSON object"
    elif kind == "st-duplicate":  # json.loads would keep the second entry silently
        text = json.dumps(header)
        entry = json.dumps({first: header[first]})[1:-1]
        out.write_bytes(_st(("{" + entry + ", " + text[1:]).encode(), data))
        match = f"names '{first}' twice"
    elif kind == "st-overlap":  # the second tensor's bytes are the first's again
        names = sorted(k for k in header if k != "__metadata__")
        a, b = header[names[0]], header[names[1]]
        size = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size]
        out.write_bytes(_st(header, data))
        match = "no gap and no overlap"
    elif kind == "st-out-of-range":
        last = sorted(k for k in header if k != "__metadata__")[-1]
        begin, end = header[last]["data_offsets"]
        header[last]["data_offsets"] = [begin + 1024, end + 1024]
        out.write_bytes(_st(header, data))
        match = "out of the data section"
    elif kind == "st-trailing":  # bytes no tensor accounts for, after the last one
        out.write_bytes(_st(header, data + b"\0" * 64))
        match = "64 bytes after the last tensor"
    elif kind == "st-dtype":
        header[first]["dtype"] = "F64"
        out.write_bytes(_st(header, data))
        match = "'F64', not F32"
    elif kind == "st-shape-bytes":  # a shape the tensor's bytes do not hold
        header[first]["shape"] = [d + 1 for d in header[first]["shape"]]
        out.write_bytes(_st(header, data))
        match = "spans .* bytes; its shape .* needs"
    elif kind == "st-shape-negative":
        header[first]["shape"] = [-1]
        out.write_bytes(_st(header, data))
        match = "is not a list of sizes"
    elif kind == "st-shape-model":  # the same bytes, shaped otherwise than the manifest's model
        arrays["z_bias"] = arrays["z_bias"].reshape(2, -1)
        _saved(out, manifest, arrays)
        match = "z_bias is shaped \\(2, 4\\)"
    elif kind == "st-nan":  # checksum fine, the weights not
        arrays["out_bias"] = np.full_like(arrays["out_bias"], np.nan)
        _saved(out, manifest, arrays)
        match = "tensor 'out_bias' holds NaN or infinite values"
    elif kind == "st-inf":
        arrays["enc_kernel"] = arrays["enc_kernel"].copy()
        arrays["enc_kernel"][0, 0] = np.inf
        _saved(out, manifest, arrays)
        match = "tensor 'enc_kernel' holds NaN or infinite values"
    elif kind == "st-missing":
        del arrays["dec_table"]
        _saved(out, manifest, arrays)
        match = "missing dec_table"
    elif kind == "st-extra":
        arrays["backdoor"] = np.zeros(3, np.float32)
        _saved(out, manifest, arrays)
        match = "unexpected 'backdoor'"
    elif kind == "st-no-metadata":
        del header["__metadata__"]
        out.write_bytes(_st(header, data))
        match = "has no qd_manifest"
    elif kind == "st-metadata-other-key":
        _saved(out, manifest, arrays, format="pt")
        match = "holds 'format'; a qd model pack's holds only qd_manifest"
    elif kind == "st-metadata-not-text":  # safetensors metadata is text; here the manifest is an object
        header["__metadata__"] = {"qd_manifest": manifest}
        out.write_bytes(_st(header, data))
        match = "'qd_manifest' is not text"
    elif kind == "st-manifest-not-json":
        _saved(out, "{this is not json", arrays)
        match = "manifest is not JSON"
    elif kind == "st-manifest-surrogate":  # a lone surrogate: text, but no UTF-8 can hold it
        header["__metadata__"]["qd_manifest"] = "\ud800" + header["__metadata__"]["qd_manifest"]
        out.write_bytes(_st(json.dumps(header).encode(), data))
        match = "manifest is not JSON"
    elif kind == "st-manifest-types":
        _saved(out, {**manifest, "steps": "many"}, arrays)
        match = "lacks `steps`"
    elif kind == "st-manifest-no-checksum":
        _saved(out, json.dumps({k: v for k, v in manifest.items() if k != "files"}), arrays)
        match = "lacks `files.tensors`"
    elif kind == "st-version-1":  # a format-1 manifest in a format-2 file
        _saved(out, {**manifest, "format_version": 1}, arrays)
        match = "says format version 1, but it is a .safetensors file"
    elif kind == "st-version-3":
        _saved(out, {**manifest, "format_version": 3}, arrays)
        match = "format version 3; this qd .* reads versions 1 and 2"
    elif kind == "st-checksum":  # one weight changed, the header as it was: only sha256 can tell
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        out.write_bytes(_st(header, bytes(flipped)))
        match = "its tensor data does not match the sha256"
    elif kind == "st-truncated":
        raw = good_file.read_bytes()
        out.write_bytes(raw[: len(raw) // 2])
        match = "cut short"
    elif kind == "st-huge-model":  # a few KB declaring 16 GiB: refused from the header, nothing allocated
        huge = {
            **manifest["model"],
            "enc_size": 4096,
            "dec_size": 4096,
            "height": 512,
            "width": 512,
            "attention": False,
        }
        _saved(out, {**manifest, "model": huge}, arrays)
        match = "shaped|does not fit"
    elif kind == "st-too-large":
        out = good_file
        env = {packs.LIMIT_ENV: "0.01"}
        match = "above the 0.01 MB limit for a model pack"
    return out, match, env


REFUSALS_V2 = [
    "st-header-past-end",
    "st-header-100mb",
    "st-short",
    "st-header-not-json",
    "st-header-nested",
    "st-header-list",
    "st-duplicate",
    "st-overlap",
    "st-out-of-range",
    "st-trailing",
    "st-dtype",
    "st-shape-bytes",
    "st-shape-negative",
    "st-shape-model",
    "st-nan",
    "st-inf",
    "st-missing",
    "st-extra",
    "st-no-metadata",
    "st-metadata-other-key",
    "st-metadata-not-text",
    "st-manifest-not-json",
    "st-manifest-surrogate",
    "st-manifest-types",
    "st-manifest-no-checksum",
    "st-version-1",
    "st-version-3",
    "st-checksum",
    "st-truncated",
    "st-huge-model",
    "st-too-large",
]


@pytest.mark.parametrize("kind", REFUSALS + REFUSALS_V2)
def test_a_bad_pack_is_refused_with_one_line_and_the_cache_is_unchanged(kind, exported, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    packs.import_pack(exported["file"], cache)  # a cache with something in it
    before = tree(cache)
    if kind.startswith("st-"):
        bad, match, env = _bad_v2(kind, exported["file"], tmp_path)
    else:
        bad, match, env = _bad(kind, exported["v1"], tmp_path)
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
    # Export of an imported pack gives back the same file, byte for byte.
    copy = tmp_path / "copy.safetensors"
    assert qd("models", "export", "tiny-zoo", copy, cache=cache).returncode == 0
    assert copy.read_bytes() == exported["file"].read_bytes()


def test_both_formats_import_and_convert_into_each_other_by_export(exported, tmp_path):
    """Format 1 still imports (as its two members); export converts by the file's suffix, and
    a round trip through the other format gives back the same file."""
    one, two = tmp_path / "cache-1", tmp_path / "cache-2"
    assert qd("models", "import", exported["v1"], cache=one).returncode == 0
    assert qd("models", "import", exported["file"], cache=two).returncode == 0
    assert sorted(p.name for p in (one / "packs" / "tiny-zoo").iterdir()) == ["manifest.json", "weights.npz"]
    a, wa = packs.read(one / "packs" / "tiny-zoo")
    b, wb = packs.read(two / "packs" / "tiny-zoo")
    assert (a.version, b.version) == (1, 2)
    arrays_a, arrays_b = wa.arrays("a"), wb.arrays("b")
    assert set(arrays_a) == set(arrays_b) and all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
    # Format 1 -> 2: the very file a format-2 export of the trained model is.
    to_two = tmp_path / "from-1" / "tiny-zoo.safetensors"
    r = qd("models", "export", "tiny-zoo", to_two, cache=one)
    assert r.returncode == 0 and "format 2" in r.stdout, r.stderr
    assert to_two.read_bytes() == exported["file"].read_bytes()
    assert (
        to_two.with_name("tiny-zoo.README.md").read_text()
        == exported["file"].with_name("tiny-zoo.README.md").read_text()
    )
    # Format 2 -> 1: the same manifest and arrays as a format-1 export (numpy stamps its .npz with the time).
    to_one = tmp_path / "from-2" / "tiny-zoo.qdpack"
    r = qd("models", "export", "tiny-zoo", to_one, cache=two)
    assert r.returncode == 0 and "format 1" in r.stdout, r.stderr
    got, want = (json.loads(_members(f)["manifest.json"]) for f in (to_one, exported["v1"]))
    got.pop("files"), want.pop("files")  # the checksums of two .npz files of different times
    assert got == want
    back, weights = packs.read(to_one)
    assert back.version == 1 and all(np.array_equal(weights.arrays("x")[k], arrays_b[k]) for k in arrays_b)


def test_a_manifest_key_this_qd_does_not_know_is_kept_in_both_formats(exported, tmp_path):
    """A newer qd may add keys (a `legs` list of where a model started from): this one imports
    such a pack, keeps the key, and exports it again."""
    pack, weights = packs.read(exported["file"])
    legs = [{"from": "zoo-26", "steps": 6}]
    for suffix in (".safetensors", ".qdpack"):
        file = packs.write(tmp_path / f"legs{suffix}", {**pack.manifest, "legs": legs}, weights)
        imported = packs.import_pack(file, tmp_path / f"cache{suffix}")
        assert imported.manifest["legs"] == legs and packs.read(imported.path)[0].manifest["legs"] == legs
        again = packs.export("tiny-zoo", tmp_path / f"again{suffix}", tmp_path / f"cache{suffix}", {})
        assert again.manifest["legs"] == legs


def test_unknown_names_are_one_line_errors(exported, tmp_path):
    r = qd("models", "export", "nope", tmp_path / "x.safetensors", cache=exported["cache"])
    assert r.returncode == 2 and r.stderr.startswith("Error: no model named 'nope'") and "tiny-zoo" in r.stderr
    assert list(tmp_path.iterdir()) == []  # neither the pack nor its card
    missing = qd("models", "import", tmp_path / "absent.safetensors", cache=tmp_path / "c")
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
    run = engine.Run(own, engine.Reporter(lines=lines.append))
    category, source = engine.shared_category(own, run.source, run.data(), run.reporter)
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
    out = tmp_path / "described.safetensors"
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
    manifest = packs.read(out, verify=False)[0].manifest
    assert manifest["description"] == "6 steps on 300 drawings" and manifest["recognizer"]["cat"]["recognized"] == 0.5
    card = (tmp_path / "described.README.md").read_text()
    assert "6 steps on 300 drawings" in card and "type: recognizer.cat.recognized" in card
    figures.write_text("[1, 2]")
    bad = qd("models", "export", "tiny-zoo", tmp_path / "no.safetensors", "--figures", figures, cache=exported["cache"])
    assert bad.returncode == 2 and "one JSON object" in bad.stderr
    assert not (tmp_path / "no.safetensors").exists() and not (tmp_path / "no.README.md").exists()


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
    out = tmp_path / "x.safetensors"
    with pytest.raises(InputError, match="not exported: `qd models import` would refuse it: .*not a finite number"):
        packs.export("tiny-zoo", out, cache, {})
    assert not out.exists() and not (tmp_path / "x.README.md").exists()
