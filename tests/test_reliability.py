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
        text = f"dataset: {{use: quickdraw, category: apple, limit: 20}}\nseeds: [{{use: file-image, path: {folder / 'bomb.png'}}}]\n"
    else:
        text = f"dataset: {{use: images, path: {folder}}}\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text + "model: {T: 2, enc_size: 8, dec_size: 8, z_size: 2, read_n: 2, write_n: 2}\n"
                      "train: {iterations: 1, batch_size: 4, holdout: 0}\ngenerate: {n: 2}\n")
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
    from qdcore.train import train

    model_cfg, cfg, data = _tiny_run()
    workdir = tmp_path_factory.mktemp("finished") / "model"
    trained = train(model_cfg, cfg, data, workdir, quiet=True)
    return workdir, _weights(trained), trained.last_batch


@pytest.fixture
def workdir(finished, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(finished[0], copy)
    return copy


def test_a_damaged_newest_checkpoint_falls_back_and_retrains_the_rest(finished, workdir):
    from qdcore.train import train

    model_cfg, cfg, data = _tiny_run()
    _damage(_data_file(workdir, 4))
    with pytest.warns(UserWarning, match=r"ckpt-4 .*damaged.*step 2") as caught:
        trained = train(model_cfg, cfg, data, workdir, quiet=True)
    assert len([w for w in caught if "ckpt-4" in str(w.message)]) == 1
    assert trained.step == 4
    # Steps 3 and 4 are a pure function of (seed, step): the redone model is the same one.
    for got, want in zip(_weights(trained), finished[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with warnings_as_errors():  # healed: the next run loads quietly
        assert train(model_cfg, cfg, data, workdir, quiet=True).step == 4


def test_load_falls_back_past_a_damaged_checkpoint(workdir):
    from qdcore.train import load

    model_cfg, _, _ = _tiny_run()
    _damage(_data_file(workdir, 4))
    with pytest.warns(UserWarning, match="ckpt-4"):
        assert load(model_cfg, workdir).step == 2


@pytest.mark.parametrize("part", ["data", "index"])
def test_every_checkpoint_damaged_retrains_from_scratch(finished, workdir, part):
    from qdcore.train import train

    model_cfg, cfg, data = _tiny_run()
    for step in (2, 4):
        _damage(_data_file(workdir, step) if part == "data" else workdir / "checkpoints" / f"ckpt-{step}.index", step)
    with pytest.warns(UserWarning, match="damaged"):
        trained = train(model_cfg, cfg, data, workdir, quiet=True)
    assert trained.step == 4
    for got, want in zip(_weights(trained), finished[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("content", [b"", b'{"step": 4', b"\xff\xfe", b'["not", "a", "record"]'])
def test_a_damaged_finished_marker_is_detected(finished, workdir, content):
    from qdcore.train import train

    model_cfg, cfg, data = _tiny_run()
    (workdir / "finished.json").write_bytes(content)
    with pytest.warns(UserWarning, match="finished.json"):
        trained = train(model_cfg, cfg, data, workdir, quiet=True)
    assert trained.step == 4
    assert json_ok(workdir / "finished.json")


@pytest.mark.parametrize("damage", ["random", "truncated", "wrong shape", "missing"])
def test_a_damaged_last_batch_is_rebuilt_exactly(finished, workdir, damage):
    from qdcore.train import train

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
        trained = train(model_cfg, cfg, data, workdir, quiet=True)
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

RECIPE = ("name: faults\ndataset: {use: quickdraw, category: apple, limit: 40}\n"
          "model: {height: 10, width: 13, T: 2, enc_size: 8, dec_size: 8, z_size: 2, read_n: 2, write_n: 2}\n"
          "train: {iterations: 4, batch_size: 8, checkpoint_every: 2, precision: bfloat16}\n"
          "generate: {n: 2}\n")


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
    import imageio.v3 as iio

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out" / "x.gif"
    assert run_main("run", recipe, "-o", out, capsys=capsys)[0] == 0
    before = out.read_bytes()
    real = iio.imwrite

    def full_disk(path, *a, **kw):
        Path(path).write_bytes(b"GIF89a" + b"\0" * 50)  # part of the file made it to disk
        raise OSError(errno_, words, str(path))

    monkeypatch.setattr(iio, "imwrite", full_disk)
    code, err = run_main("run", recipe, "-o", out, "--seed", 3, capsys=capsys)
    assert_clean_failure(code, err, 1, str(out), words.lower())
    assert out.read_bytes() == before and leftovers(out.parent) == []
    monkeypatch.setattr(iio, "imwrite", real)


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
            raise tf.errors.ResourceExhaustedError(None, None, f"{self.directory}/ckpt-{checkpoint_number}_temp/part; No space left on device")
        return real(self, checkpoint_number=checkpoint_number, **kw)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_after_first)
    out = tmp_path / "x.gif"
    code, err = run_main("run", recipe, "-o", out, capsys=capsys)
    assert_clean_failure(code, err, 1, "checkpoint", "no space left on device", "step 2")
    assert not out.exists() and leftovers(cache) == []
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real)
    code, err = run_main("run", recipe, "-o", out, capsys=capsys)  # space freed: resumes at step 2
    assert code == 0, err
    from qdcore.train import load
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
