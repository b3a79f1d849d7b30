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
