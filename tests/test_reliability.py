"""Defects a hostile run found, and faults that must lose nothing (issue 11).

Each test here failed before its fix. docs/reliability.md lists them with the promise each keeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest

QD = str(Path(sys.executable).parent / "qd")
BUILTINS = "datasets,seeds,filters,writers"


def qd(*args, env=None, cwd=None, timeout=300):
    full_env = {**os.environ, "QD_LOAD_PLUGINS": BUILTINS, **(env or {})}
    return subprocess.run([QD, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid greyscale PNG of width x height that is only a few hundred KB on disk
    (every row is a zero filter byte plus zero pixels, which deflate squeezes ~1000:1)."""
    raw = zlib.compressobj(9)
    body = b"".join(raw.compress(b"\0" * (width + 1)) for _ in range(height)) + raw.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return huge_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)


def test_the_image_limit_is_one_rule_in_qdcore(bomb, tmp_path):
    from qdcore.errors import InputError
    from qdcore.images import MAX_PIXELS, open_image

    with pytest.raises(InputError, match=r"too large \(400,000,000 pixels\); the limit is [\d,]+ pixels") as e:
        with open_image(bomb):
            pass
    assert f"{MAX_PIXELS:,}" in str(e.value)
    # Bytes (an upload) go through the same rule, named by the caller.
    with pytest.raises(InputError, match=r"upload\.png is too large"):
        with open_image(bomb.read_bytes(), name="upload.png"):
            pass
    small = huge_png(tmp_path / "small.png", 40, 30)
    with open_image(small) as im:
        assert im.size == (40, 30)


def test_an_image_one_pixel_over_the_limit_is_refused(tmp_path, monkeypatch):
    import qdcore.images as images
    from qdcore.errors import InputError

    monkeypatch.setattr(images, "MAX_PIXELS", 40 * 30 - 1)
    with pytest.raises(InputError, match="40x30"):
        with images.open_image(huge_png(tmp_path / "a.png", 40, 30)):
            pass
    monkeypatch.setattr(images, "MAX_PIXELS", 40 * 30)
    with images.open_image(tmp_path / "a.png") as im:
        assert im.size == (40, 30)


@pytest.mark.parametrize("where", ["seed", "dataset"])
def test_a_decompression_bomb_is_bad_input_exit_2(bomb, tmp_path, where):
    folder = tmp_path / "doodles"
    folder.mkdir()
    os.symlink(bomb, folder / "bomb.png")
    if where == "seed":
        text = (
            "dataset: {use: quickdraw, category: apple, limit: 20}\n"
            f"seeds: [{{use: file-image, path: {folder / 'bomb.png'}}}]\n"
        )
    else:
        text = f"dataset: {{use: images, path: {folder}}}\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        text + "model: {T: 2, enc_size: 8, dec_size: 8, z_size: 2, read_n: 2, write_n: 2}\n"
        "train: {iterations: 1, batch_size: 4, holdout: 0}\ngenerate: {n: 2}\n"
    )
    out = tmp_path / "out.gif"
    r = qd("run", recipe, "--out", out, "--quiet", env={"QD_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "too large" in errors[0] and "limit is" in errors[0], r.stderr
    assert "DecompressionBomb" not in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


# --- damaged checkpoints, finished.json and last_batch.npy --------------------------------------

TINY = dict(height=10, width=13, T=2, enc_size=8, dec_size=8, z_size=2, read_n=2, write_n=2)


def _tiny_run(**train):
    from qdcore.config import ModelConfig, TrainConfig
    from qdcore.interfaces import ImageSet

    rng = np.random.default_rng(0)
    data = ImageSet((rng.random((40, 10, 13)) > 0.7).astype(np.uint8) * 255, "synthetic")
    cfg = TrainConfig(**{"iterations": 4, "batch_size": 8, "checkpoint_every": 2, "precision": "bfloat16", **train})
    return ModelConfig(**TINY), cfg, data


def _weights(trained):
    return [w.numpy() for w in trained.model.weights]


def _damage(path: Path, seed: int = 0) -> None:
    """What a crash or a bad disk leaves: the file overwritten with 100 random bytes."""
    path.write_bytes(np.random.default_rng(seed).bytes(100))


def _data_file(workdir: Path, step: int) -> Path:
    (found,) = (workdir / "checkpoints").glob(f"ckpt-{step}.data-*")
    return found


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One trained tiny model (checkpoints at steps 2 and 4), copied fresh for each test."""
    from qdcore.training.train import train

    model_cfg, cfg, data = _tiny_run()
    workdir = tmp_path_factory.mktemp("finished") / "model"
    trained = train(model_cfg, cfg, data, workdir)
    return workdir, _weights(trained), trained.last_batch


@pytest.fixture
def workdir(finished, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(finished[0], copy)
    return copy


def test_a_damaged_newest_checkpoint_falls_back_and_retrains_the_rest(finished, workdir):
    from qdcore.training.train import train

    model_cfg, cfg, data = _tiny_run()
    _damage(_data_file(workdir, 4))
    with pytest.warns(UserWarning, match=r"ckpt-4 .*damaged.*step 2") as caught:
        trained = train(model_cfg, cfg, data, workdir)
    assert len([w for w in caught if "ckpt-4" in str(w.message)]) == 1
    assert trained.step == 4
    # Steps 3 and 4 are a pure function of (seed, step): the redone model is the same one.
    for got, want in zip(_weights(trained), finished[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with warnings_as_errors():  # healed: the next run loads quietly
        assert train(model_cfg, cfg, data, workdir).step == 4


def test_load_falls_back_past_a_damaged_checkpoint(workdir):
    from qdcore.training.train import load

    model_cfg, _, _ = _tiny_run()
    _damage(_data_file(workdir, 4))
    with pytest.warns(UserWarning, match="ckpt-4"):
        assert load(model_cfg, workdir).step == 2


@pytest.mark.parametrize("part", ["data", "index"])
def test_every_checkpoint_damaged_retrains_from_scratch(finished, workdir, part):
    from qdcore.training.train import train

    model_cfg, cfg, data = _tiny_run()
    for step in (2, 4):
        _damage(_data_file(workdir, step) if part == "data" else workdir / "checkpoints" / f"ckpt-{step}.index", step)
    with pytest.warns(UserWarning, match="damaged"):
        trained = train(model_cfg, cfg, data, workdir)
    assert trained.step == 4
    for got, want in zip(_weights(trained), finished[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"step": 4',
        b"\xff\xfe",
        b'["not", "a", "record"]',
        b'{"step": 4, "classes": "cat"}',
        b'{"step": true}',
        b'{"step": 4, "stopped": [1]}',
    ],
)
def test_a_damaged_finished_marker_is_detected(finished, workdir, content):
    from qdcore.training.train import train

    model_cfg, cfg, data = _tiny_run()
    (workdir / "finished.json").write_bytes(content)
    with pytest.warns(UserWarning, match="finished.json"):
        trained = train(model_cfg, cfg, data, workdir)
    assert trained.step == 4
    assert json_ok(workdir / "finished.json")


@pytest.mark.parametrize("damage", ["random", "truncated", "wrong shape", "missing"])
def test_a_damaged_last_batch_is_rebuilt_exactly(finished, workdir, damage):
    from qdcore.training.train import train

    model_cfg, cfg, data = _tiny_run()
    path = workdir / "last_batch.npy"
    if damage == "random":
        _damage(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:150])
    elif damage == "wrong shape":
        np.save(path, np.zeros((3, 5), np.float32))
    else:
        path.unlink()
    with pytest.warns(UserWarning, match="last_batch.npy"):
        trained = train(model_cfg, cfg, data, workdir)
    np.testing.assert_array_equal(trained.last_batch, finished[2])
    np.testing.assert_array_equal(np.load(path), finished[2])


def json_ok(path: Path) -> bool:
    import json

    return json.loads(path.read_text())["step"] == 4


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# --- full disk, read-only cache: one line, exit 1, nothing lost --------------------------------
# A full or read-only filesystem is simulated at the call that writes, raising exactly what the
# OS and TensorFlow raise there (measured once on a 256 KB tmpfs: TensorFlow's SaveV2 raises
# ResourceExhaustedError "...; No space left on device" and leaves a ckpt-N_temp folder).

RECIPE = (
    "name: faults\ndataset: {use: quickdraw, category: apple, limit: 40}\n"
    "model: {height: 10, width: 13, T: 2, enc_size: 8, dec_size: 8, z_size: 2, read_n: 2, write_n: 2}\n"
    "train: {iterations: 4, batch_size: 8, checkpoint_every: 2, precision: bfloat16}\n"
    "generate: {n: 2}\n"
)


def run_main(*argv, capsys):
    """qdcore.cli.main in this process: (exit code, stderr lines)."""
    from qdcore.cli import main

    with pytest.raises(SystemExit) as e:
        main([*map(str, argv), "--quiet"])
    err = capsys.readouterr().err
    return e.value.code, err


def assert_clean_failure(code, err, expected_code, *fragments):
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == expected_code, err
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in err and "unexpected" not in errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".part" in p.name or p.name.endswith("_temp"))


@pytest.fixture
def cache(tmp_path, monkeypatch, quickdraw_dir):
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    return tmp_path / "cache"


@pytest.mark.parametrize("errno_, words", [(28, "No space left on device"), (30, "Read-only file system")])
def test_a_failed_gif_write_keeps_the_previous_gif(tmp_path, cache, capsys, monkeypatch, errno_, words):
    import gc

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out" / "x.gif"
    assert run_main("run", recipe, "-o", out, capsys=capsys)[0] == 0
    before = out.read_bytes()
    real = Path.write_bytes

    def full_disk(self, data):
        if not self.name.endswith(".part.gif"):
            return real(self, data)
        with open(self, "wb") as f:
            f.write(data[:50])  # part of the file made it to disk
        raise OSError(errno_, words, str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    code, err = run_main("run", recipe, "-o", out, "--seed", 3, capsys=capsys)
    gc.collect()  # whatever the failed write left to be collected must not print (issue 17)
    err += capsys.readouterr().err
    assert_clean_failure(code, err, 1, str(out), words.lower())
    assert len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == before and leftovers(out.parent) == []
    monkeypatch.setattr(Path, "write_bytes", real)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, cache, capsys, monkeypatch):
    import tensorflow as tf

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("iterations: 4", "iterations: 6"))
    real = tf.train.CheckpointManager.save
    calls = []

    def full_after_first(self, checkpoint_number=None, **kw):
        calls.append(checkpoint_number)
        if len(calls) > 1:
            (Path(self.directory) / f"ckpt-{checkpoint_number}_temp").mkdir()
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{self.directory}/ckpt-{checkpoint_number}_temp/part; No space left on device"
            )
        return real(self, checkpoint_number=checkpoint_number, **kw)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_after_first)
    out = tmp_path / "x.gif"
    code, err = run_main("run", recipe, "-o", out, capsys=capsys)
    assert_clean_failure(code, err, 1, "checkpoint", "no space left on device", "step 2")
    assert not out.exists() and leftovers(cache) == []
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real)
    code, err = run_main("run", recipe, "-o", out, capsys=capsys)  # space freed: resumes at step 2
    assert code == 0, err
    from qdcore.training.train import load
    from qdcore.config import ModelConfig

    (model,) = (cache / "models").glob("faults-*[!k]")
    assert load(ModelConfig(**TINY), model).step == 6


def test_a_read_only_cache_is_one_line(tmp_path, cache, capsys, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    real_mkdir = Path.mkdir

    def read_only(self, *a, **kw):
        if cache in self.parents or self == cache:
            raise OSError(30, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", read_only)
    out = tmp_path / "x.gif"
    code, err = run_main("run", recipe, "-o", out, capsys=capsys)
    assert_clean_failure(code, err, 1, "read-only file system", "QD_CACHE_DIR")
    assert not out.exists() and not cache.exists()


def test_every_listed_test_exists():
    """docs/reliability.md lists at least 60 hostile cases, each naming a test that exists."""
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 60
    for file, name in re.findall(r"(tests/test_\w+\.py)::(test_\w+)", doc):
        assert re.search(rf"^def {name}\(", (root / file).read_text(encoding="utf-8"), re.M), f"{file}::{name}"


# --- issue 17: hardening, round two ---------------------------------------------------------------


def cli(*argv, capsys):
    """qdcore.cli.main in this process, as typed: (exit code, stderr)."""
    from qdcore.cli import main

    with pytest.raises(SystemExit) as e:
        main([*map(str, argv)])
    return e.value.code, capsys.readouterr().err


GOOD = "dataset: {use: quickdraw, category: apple, limit: 40}\n"
BOMB = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "x"] * 9) + "]\n" for i in range(10))


@pytest.mark.parametrize(
    "text, fragments",
    [
        # An alias bomb (9^10 values) under a parameter: the error once built the repr of all of it.
        (BOMB + GOOD, ("values once its aliases are expanded",)),
        ("a: &a [1, 2]\n" + GOOD, ("unknown section 'a'",)),
        (GOOD + "generate: {n: " + "[" * 20000 + "]" * 20000 + "}\n", ("nested more than 32 levels",)),
        (GOOD + "seed: -1\n", ("seed: -1 is out of range",)),
        (GOOD + "train: {seed: -1}\n", ("train.seed: -1 is out of range",)),
        (GOOD + "filters: [sharpen]\nfilters: [invert]\n", ("duplicate key 'filters'", "r.yaml:3:1:")),
        (
            GOOD + "output: {use: gif, frames: steps, sample: 5}\ngenerate: {n: 3}\n",
            ("output: gif: `sample: 5`", "generate.n draws 3"),
        ),
        ("# " + "x" * (1 << 20) + "\n" + GOOD, ("is over 1024 KiB",)),
    ],
)
def test_hostile_recipes_of_round_two_are_one_line_exit_2(tmp_path, capsys, monkeypatch, text, fragments):
    import tracemalloc

    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    tracemalloc.start()
    try:
        code, err = cli("validate", recipe, capsys=capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_clean_failure(code, err, 2, *fragments)
    assert peak < 200 << 20, f"{peak / 1e6:.0f} MB to refuse a recipe"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_alias_bombs_in_parameter_values_are_refused_without_expanding(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    levels = ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * 9) + "]" for i in range(9))
    for text in (
        f"dataset: {{use: quickdraw, category: cat}}\ngenerate: {{n: [{levels}]}}\n",
        f"dataset: {{use: quickdraw, category: [{levels}]}}\n",
    ):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(text)
        code, err = cli("validate", recipe, capsys=capsys)
        assert_clean_failure(code, err, 2, "values once its aliases are expanded")


def test_negative_seed_flag_is_refused_before_any_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    monkeypatch.setenv("QD_DATA_DIR", str(tmp_path / "no-data"))  # loading data would fail otherwise
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GOOD)
    code, err = cli("run", recipe, "--seed", "-1", "--out", tmp_path / "x.gif", capsys=capsys)
    assert_clean_failure(code, err, 2, "--seed: -1 is out of range")
    code, err = cli("validate", recipe, "-s", "train.seed=-5", capsys=capsys)
    assert_clean_failure(code, err, 2, "train.seed: -5 is out of range")


def test_model_from_itself_or_a_cycle_is_refused_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    (tmp_path / "self.yaml").write_text(GOOD + "model: {from: self}\n")
    code, err = cli("validate", tmp_path / "self.yaml", capsys=capsys)
    assert_clean_failure(code, err, 2, "model.from: 'self' is this recipe itself")
    (tmp_path / "a.yaml").write_text(GOOD + "model: {from: b}\n")
    (tmp_path / "b.yaml").write_text(GOOD + "model: {from: a.yaml}\n")
    code, err = cli("validate", tmp_path / "a.yaml", capsys=capsys)
    assert_clean_failure(code, err, 2, "a.yaml: model.from", "b.yaml itself uses `model.from`")


def test_a_seed_image_that_cannot_be_opened_fails_validation(tmp_path, capsys, monkeypatch, quickdraw_dir):
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    (tmp_path / "seed.png").write_text("not a picture\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GOOD + "seeds: [{use: file-image, path: seed.png}]\n")
    code, err = cli("validate", recipe, capsys=capsys)
    assert_clean_failure(code, err, 2, "seed.png is not a readable image")
    huge_png(tmp_path / "seed.png", 9000, 9000)
    code, err = cli("validate", recipe, capsys=capsys)
    assert_clean_failure(code, err, 2, "too large")


def test_qd_models_survives_damaged_records_and_never_follows_symlinks(tmp_path, capsys, monkeypatch):
    from qdcore import models

    root = tmp_path / "cache" / "models"
    good, bad, garbage = (root / f"{n}-{'0' * 15}{i}" for i, n in enumerate(("good", "bad", "garbage")))
    for folder in (good, bad, garbage):
        (folder / "checkpoints").mkdir(parents=True)
    (good / "finished.json").write_text('{"step": 30, "dataset": "quickdraw:cat"}')
    (good / "eval.json").write_text('{"bound": 201.5}')
    (bad / "finished.json").write_text('{"step": "thirty", "classes": [1, {"a": 2}]}')
    (bad / "eval.json").write_text('{"bound": "low"}')
    (garbage / "checkpoints" / "checkpoint").write_bytes(np.random.default_rng(0).bytes(300))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"\0" * 100_000)
    (good / "link").symlink_to(outside)  # a symlink inside a model folder
    (root / "linked-0000000000000009").symlink_to(outside, target_is_directory=True)  # a symlink as a model
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    code, err = cli("models", capsys=capsys)
    capsys.readouterr()
    assert code == 0, err
    rows = models.listing(tmp_path / "cache")
    assert [r["name"] for r in rows] == ["bad", "garbage", "good"]
    by = {r["name"]: r for r in rows}
    assert by["good"]["bound"] == 201.5 and by["good"]["size_bytes"] < 1000
    assert by["bad"]["bound"] is None and by["bad"]["steps"] is None and by["bad"]["categories"] is None
    assert by["garbage"]["status"] == "empty"
    from qdcore.sources import cached_models

    assert [r["folder"] for r in cached_models()] == sorted(p.name for p in (good, bad, garbage))


def test_a_garbage_checkpoint_state_file_is_set_aside_and_training_resumes(finished, workdir):
    import warnings

    from qdcore.training.train import load, train

    model_cfg, cfg, data = _tiny_run()
    (workdir / "finished.json").unlink()  # resume through the checkpoints
    _damage(workdir / "checkpoints" / "checkpoint")
    with pytest.warns(UserWarning, match=r"checkpoint is damaged") as caught:
        trained = train(model_cfg, cfg, data, workdir)
    assert trained.step == 4 and len([w for w in caught if "checkpoint is damaged" in str(w.message)]) == 1
    for got, want in zip(_weights(trained), finished[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (workdir / "checkpoints" / "damaged" / "checkpoint").is_file()
    _damage(workdir / "checkpoints" / "checkpoint", seed=1)  # and through load(), for generation
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert load(model_cfg, workdir).step == 4


def test_a_killed_writers_temporary_file_is_removed_by_a_later_write(tmp_path):
    import time

    from qdcore.atomic import STALE_AFTER, atomic_path

    out = tmp_path / "doodle.gif"
    stale, live, other = (
        tmp_path / ".doodle.k1ll3d.gif.part.gif",
        tmp_path / ".doodle.l1ve.gif.part.gif",
        tmp_path / ".other.x.gif.part.gif",
    )
    for p in (stale, live, other):
        p.write_bytes(b"GIF89a")
    old = time.time() - STALE_AFTER - 60
    for p in (stale, other):
        os.utime(p, (old, old))
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"GIF89a whole")
    assert out.read_bytes() == b"GIF89a whole"
    assert not stale.exists(), "left by a kill -9: removed"
    assert live.exists(), "may belong to a write running now: kept"
    assert other.exists(), "another file's: not ours"
