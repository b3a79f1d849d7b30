"""Datasets: loading, lookup order, downloading from a local server, and every bad-data error."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qdcore import Context, InputError, RecipeError
from qdcore.params import check
from qdcore.paths import cache_dir, data_dir
from qdplugins.datasets import QuickDraw, QuickDrawStrokes, Images, categories

# A port nothing listens on, on loopback: a download attempt fails at once and never leaves the machine.
NOWHERE = "http://127.0.0.1:9/"


def make_ctx(shape=(28, 28), quiet=True) -> Context:
    return Context(tuple(shape), np.random.default_rng(0), Path("."), data_dir(), cache_dir(), quiet=quiet)


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """An empty local mirror as QD_DATA_DIR, a private cache, and no way out to the internet."""
    root = tmp_path / "data"
    (root / "numpy_bitmap").mkdir(parents=True)
    (root / "simplified").mkdir()
    monkeypatch.setenv("QD_DATA_DIR", str(root))
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QD_DOWNLOAD_URL", NOWHERE)
    return root


def bitmaps(n=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 784), dtype=np.uint8)


# --- categories and parameters ------------------------------------------------------------------


def test_category_list_is_the_345_names():
    names = categories()
    assert len(names) == 345 == len(set(names))
    assert {"windmill", "coffee cup", "alarm clock", "The Eiffel Tower"} <= set(names)


@pytest.mark.parametrize(
    "wrong, suggestion", [("windmil", "windmill"), ("Coffee_Cup", "coffee cup"), ("aple", "apple")]
)
def test_unknown_category_suggests_close_names(wrong, suggestion):
    with pytest.raises(InputError) as e:
        QuickDraw(category=wrong)
    assert repr(wrong) in str(e.value) and repr(suggestion) in str(e.value)
    with pytest.raises(InputError):
        QuickDrawStrokes(category=["apple", wrong])


def test_parameters_validate_through_the_recipe_checker():
    out = check(
        QuickDraw, {"category": ["apple", "cat"], "limit": 10, "binarize": "threshold", "threshold": 0.3}, "dataset"
    )
    assert out == {
        "category": ["apple", "cat"],
        "limit": 10,
        "binarize": "threshold",
        "threshold": 0.3,
        "mix": "balanced",
    }
    assert check(QuickDrawStrokes, {"category": "windmill"}, "dataset")["supersample"] == 8
    for bad in ({"category": "apple", "limit": 0}, {"category": "apple", "binarize": "otsu"}, {"category": 3}, {}):
        with pytest.raises(RecipeError):
            check(QuickDraw, bad, "dataset")


def test_threshold_needs_threshold_binarization():
    with pytest.raises(RecipeError, match="binarize: threshold"):
        QuickDraw(category="apple", threshold=0.3)
    ds = QuickDraw(category="apple", binarize="dynamic")
    assert ds.binarize == "dynamic" and "binarize=dynamic" in ds.describe()


# --- numpy_bitmap -------------------------------------------------------------------------------


def test_loads_memory_mapped_images(data):
    raw = bitmaps(7)
    np.save(data / "numpy_bitmap" / "alarm clock.npy", raw)
    s = QuickDraw(category="alarm clock", limit=5).load(make_ctx())
    assert isinstance(s.images, np.memmap)  # not read into memory
    assert s.images.shape == (5, 28, 28) and s.images.dtype == np.uint8
    assert np.array_equal(s.images, raw[:5].reshape(5, 28, 28))
    assert s.name == "alarm clock" and s.binarize == "none"
    assert s.as_float().max() <= 1.0


def test_several_categories_are_concatenated(data):
    np.save(data / "numpy_bitmap" / "apple.npy", bitmaps(3, 1))
    np.save(data / "numpy_bitmap" / "cat.npy", bitmaps(4, 2))
    s = QuickDraw(category=["apple", "cat"]).load(make_ctx())
    assert s.images.shape == (7, 28, 28) and s.name == "apple+cat"
    assert np.array_equal(s.images[3:], bitmaps(4, 2).reshape(4, 28, 28))


def test_resized_when_the_model_is_not_28(data):
    img = np.zeros((28, 28), np.uint8)
    img[10:18, 10:18] = 255
    np.save(data / "numpy_bitmap" / "apple.npy", img.reshape(1, 784))
    s = QuickDraw(category="apple").load(make_ctx((56, 42)))
    assert s.images.shape == (1, 56, 42) and s.images.dtype == np.uint8
    assert s.images[0, 28, 21] > 200 and s.images[0, 2, 2] == 0
    # Not squashed: the 42x42 square sits centred, so the ink stays square.
    ys, xs = np.nonzero(s.images[0] > 128)
    assert ys.max() - ys.min() == xs.max() - xs.min() and ys.min() + ys.max() == 55
    assert not s.images[0, :7].any() and not s.images[0, -7:].any()


def test_missing_file_offline_names_the_file_and_the_fix(data):
    with pytest.raises(InputError) as e:
        QuickDraw(category="windmill").load(make_ctx())
    msg = str(e.value)
    assert "windmill.npy" in msg and str(data / "numpy_bitmap") in msg and "QD_DATA_DIR" in msg
    assert "\n" not in msg
    assert not (cache_dir() / "quickdraw" / "numpy_bitmap" / "windmill.npy").exists()


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"this is not numpy at all" * 10, "not a readable .npy"),
        ("wrong shape", "expected uint8 of shape (N, 784)"),
        ("wrong dtype", "expected uint8 of shape (N, 784)"),
        ("empty", "holds no drawings"),
    ],
)
def test_bad_files_are_input_errors(data, content, expect):
    path = data / "numpy_bitmap" / "apple.npy"
    if content == "wrong shape":
        np.save(path, np.zeros((4, 100), np.uint8))
    elif content == "wrong dtype":
        np.save(path, np.zeros((4, 784), np.float32))
    elif content == "empty":
        np.save(path, np.zeros((0, 784), np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as e:
        QuickDraw(category="apple").load(make_ctx())
    assert expect in str(e.value) and str(path) in str(e.value)
    assert "storage.googleapis.com" in str(e.value) or "127.0.0.1" in str(e.value)  # the fix: where to get it


def test_truncated_npy_is_an_input_error(data):
    path = data / "numpy_bitmap" / "apple.npy"
    np.save(path, bitmaps(50))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="not a readable .npy"):
        QuickDraw(category="apple").load(make_ctx())


def test_local_mirror_wins_over_the_cache(data):
    np.save(data / "numpy_bitmap" / "apple.npy", bitmaps(2, 1))
    cached = cache_dir() / "quickdraw" / "numpy_bitmap" / "apple.npy"
    cached.parent.mkdir(parents=True)
    np.save(cached, bitmaps(3, 2))
    assert len(QuickDraw(category="apple").load(make_ctx()).images) == 2
    (data / "numpy_bitmap" / "apple.npy").unlink()
    assert len(QuickDraw(category="apple").load(make_ctx()).images) == 3


def test_bad_cached_file_says_delete_it(data):
    cached = cache_dir() / "quickdraw" / "numpy_bitmap" / "apple.npy"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage" * 30)
    with pytest.raises(InputError, match="delete"):
        QuickDraw(category="apple").load(make_ctx())


# --- downloading, against a real HTTP server on 127.0.0.1 ----------------------------------------


class Server:
    def __init__(self, root: Path, lie_about_length: bool = False):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                outer.requests.append(self.path)
                if not lie_about_length:
                    return super().do_GET()
                body = (root / "numpy_bitmap" / "apple.npy").read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + 1000))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_into_the_cache_then_reuse(data, tmp_path, monkeypatch):
    remote = tmp_path / "bucket"
    (remote / "numpy_bitmap").mkdir(parents=True)
    raw = bitmaps(9)
    np.save(remote / "numpy_bitmap" / "alarm clock.npy", raw)
    with Server(remote) as server:
        monkeypatch.setenv("QD_DOWNLOAD_URL", server.url)
        s = QuickDraw(category="alarm clock").load(make_ctx(quiet=False))
        assert server.requests == ["/numpy_bitmap/alarm%20clock.npy"]  # the space is URL-quoted
        assert np.array_equal(s.images, raw.reshape(9, 28, 28))
        cached = cache_dir() / "quickdraw" / "numpy_bitmap" / "alarm clock.npy"
        assert cached.read_bytes() == (remote / "numpy_bitmap" / "alarm clock.npy").read_bytes()
        assert [p.name for p in cached.parent.iterdir()] == ["alarm clock.npy"]  # no temporary left
        QuickDraw(category="alarm clock").load(make_ctx())
        assert len(server.requests) == 1  # second time from the cache


def test_download_of_a_missing_file_is_an_input_error(data, tmp_path, monkeypatch):
    (tmp_path / "bucket").mkdir()
    with Server(tmp_path / "bucket") as server:
        monkeypatch.setenv("QD_DOWNLOAD_URL", server.url)
        with pytest.raises(InputError, match="HTTP 404"):
            QuickDraw(category="apple").load(make_ctx())


def test_short_download_leaves_nothing_behind(data, tmp_path, monkeypatch):
    remote = tmp_path / "bucket"
    (remote / "numpy_bitmap").mkdir(parents=True)
    np.save(remote / "numpy_bitmap" / "apple.npy", bitmaps(20))
    with Server(remote, lie_about_length=True) as server:
        monkeypatch.setenv("QD_DOWNLOAD_URL", server.url)
        with pytest.raises(InputError, match="apple.npy"):
            QuickDraw(category="apple").load(make_ctx())
    folder = cache_dir() / "quickdraw" / "numpy_bitmap"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_strokes_download_too(data, tmp_path, monkeypatch):
    remote = tmp_path / "bucket"
    (remote / "simplified").mkdir(parents=True)
    line = json.dumps({"word": "coffee cup", "drawing": [[[0, 255], [0, 255]]]})
    (remote / "simplified" / "coffee cup.ndjson").write_text(line + "\n")
    with Server(remote) as server:
        monkeypatch.setenv("QD_DOWNLOAD_URL", server.url)
        s = QuickDrawStrokes(category="coffee cup").load(make_ctx())
        assert server.requests == ["/simplified/coffee%20cup.ndjson"]
    assert s.images.shape == (1, 28, 28) and s.images.max() == 255


# --- simplified strokes -------------------------------------------------------------------------


def write_ndjson(path: Path, drawings) -> None:
    path.write_text("".join(json.dumps({"word": "x", "drawing": d}) + "\n" for d in drawings))


def test_strokes_are_rasterised_and_cached(data):
    square = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
    line = [[[0, 255], [128, 128]]]
    write_ndjson(data / "simplified" / "hexagon.ndjson", [square, line, square])
    s = QuickDrawStrokes(category="hexagon", limit=2).load(make_ctx())
    assert s.images.shape == (2, 28, 28) and s.images.dtype == np.uint8
    assert isinstance(s.images, np.memmap)  # served from the raster cache
    assert not np.array_equal(s.images[0], s.images[1])
    cache = list((cache_dir() / "quickdraw" / "raster").glob("hexagon-28x28-*.npy"))
    assert len(cache) == 1
    again = QuickDrawStrokes(category="hexagon", limit=2).load(make_ctx())
    assert np.array_equal(again.images, s.images)
    bigger = QuickDrawStrokes(category="hexagon").load(make_ctx((32, 32)))
    assert bigger.images.shape == (3, 32, 32)


def test_raster_cache_follows_the_source(data):
    path = data / "simplified" / "hexagon.ndjson"
    write_ndjson(path, [[[[0, 255], [0, 255]]]])
    first = np.array(QuickDrawStrokes(category="hexagon").load(make_ctx()).images)
    write_ndjson(path, [[[[0, 255], [0, 255]]], [[[0, 255], [255, 0]]]])
    second = QuickDrawStrokes(category="hexagon").load(make_ctx()).images
    assert len(first) == 1 and len(second) == 2


@pytest.mark.parametrize(
    "text, expect",
    [
        ("", "holds no drawings"),
        ('{"word": "x", "drawing": [[[0, 1], [0, 1]]]}\n{not json\n', "line 2"),
        ('{"word": "x"}\n', "line 1"),
        ('{"drawing": [[[0, 1, 2], [0, 1]]]}\n', "line 1"),
        ('{"drawing": [[0, 1]]}\n', "line 1"),
        # issue 17: odd coordinates were exit 1 "unexpected ValueError" with no file or line
        ('{"drawing": [[[0, 1], [0, 1]]]}\n{"drawing": [[["a", "b"], [0, 1]]]}\n', "line 2"),
        ('{"drawing": [[[[0], [1]], [0, 1]]]}\n', "line 1"),
        ('{"drawing": [[[true, 1], [0, 1]]]}\n', "line 1"),
        ('{"drawing": [[[1e300, 1], [0, 1]]]}\n', "line 1"),
        ('{"drawing": [[[NaN, 1], [0, 1]]]}\n', "line 1"),
        ("[1, 2]\n", "line 1"),
        ('"drawing"\n', "line 1"),
        ('{"drawing": ' + "[" * 5000 + "]" * 5000 + "}\n", "line 1"),
    ],
)
def test_bad_ndjson_is_an_input_error(data, text, expect):
    path = data / "simplified" / "hexagon.ndjson"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        QuickDrawStrokes(category="hexagon").load(make_ctx())
    assert expect in str(e.value) and str(path) in str(e.value)


@pytest.mark.realdata
def test_strokes_dataset_matches_the_bitmap_dataset(quickdraw_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("QD_DATA_DIR", str(quickdraw_dir))
    monkeypatch.setenv("QD_DOWNLOAD_URL", NOWHERE)
    ctx = make_ctx()
    strokes = QuickDrawStrokes(category="apple").load(ctx).as_float()
    bitmap = QuickDraw(category="apple", limit=len(strokes)).load(ctx).as_float()
    assert strokes.shape == bitmap.shape == (25, 28, 28)
    assert np.abs(strokes - bitmap).mean() <= 5 / 255


@pytest.mark.realdata
def test_real_categories_with_spaces_load(quickdraw_dir, monkeypatch):
    monkeypatch.setenv("QD_DATA_DIR", str(quickdraw_dir))
    monkeypatch.setenv("QD_DOWNLOAD_URL", NOWHERE)
    s = QuickDraw(category=["alarm clock", "house plant"], limit=100).load(make_ctx())
    assert s.images.shape == (200, 28, 28)
    assert QuickDrawStrokes(category="coffee cup").load(make_ctx()).images.shape == (25, 28, 28)


# --- image folders ------------------------------------------------------------------------------


def doodle(size, dark_on_light: bool) -> np.ndarray:
    """A filled square in the middle, ink value 1, as a float image of `size` (h, w)."""
    h, w = size
    ink = np.zeros(size, np.float32)
    ink[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 1.0
    return 1.0 - ink if dark_on_light else ink


def save(path: Path, img: np.ndarray, mode: str) -> None:
    grey = Image.fromarray(np.round(img * 255).astype(np.uint8))
    if mode == "RGBA-transparent":
        # Black ink on a fully transparent background: the background must count as paper.
        rgba = Image.new("RGBA", grey.size, (0, 0, 0, 0))
        rgba.putalpha(Image.fromarray(np.round((1 - img) * 255).astype(np.uint8)))
        rgba.save(path)
    else:
        grey.convert(mode).save(path)


def test_images_of_any_mode_and_size_become_ink_bright(data, tmp_path):
    folder = tmp_path / "doodles"
    folder.mkdir()
    save(folder / "a.png", doodle((90, 60), True), "RGB")
    save(folder / "b.jpg", doodle((40, 40), True), "L")
    save(folder / "c.png", doodle((28, 28), False), "L")
    save(folder / "d.png", doodle((50, 70), True), "RGBA-transparent")
    save(folder / "e.png", doodle((33, 33), True), "P")
    (folder / "notes.txt").write_text("ignored")
    s = Images(path=folder).load(make_ctx((28, 28)))
    assert s.images.shape == (5, 28, 28) and s.images.dtype == np.float32
    assert s.images.min() >= 0 and s.images.max() <= 1
    centre, corner = s.images[:, 14, 14], s.images[:, 1, 1]
    assert (centre > 0.8).all() and (corner < 0.1).all(), (centre, corner)


def test_images_glob_limit_and_invert_options(data, tmp_path):
    folder = tmp_path / "doodles"
    folder.mkdir()
    for i in range(3):
        save(folder / f"{i}.png", doodle((40, 40), False), "L")
    s = Images(path=folder / "*.png", limit=2).load(make_ctx((20, 20)))
    assert s.images.shape == (2, 20, 20)
    flipped = Images(path=folder / "0.png", invert="always").load(make_ctx((20, 20)))
    assert flipped.images[0, 10, 10] < 0.1 and flipped.images[0, 0, 0] > 0.9


def test_images_pad_keeps_the_aspect_ratio(data, tmp_path):
    img = np.ones((20, 80), np.float32)  # a wide all-ink image
    save(tmp_path / "wide.png", img, "L")
    padded = Images(path=tmp_path / "wide.png", invert="never").load(make_ctx((28, 28))).images[0]
    stretched = Images(path=tmp_path / "wide.png", invert="never", fit="stretch").load(make_ctx((28, 28))).images[0]
    assert padded[0].max() < 0.05 and padded[14].min() > 0.95
    assert stretched.min() > 0.95


@pytest.mark.parametrize(
    "make, expect", [("missing", "does not exist"), ("empty", "no .png"), ("broken", "not a readable image")]
)
def test_images_errors(data, tmp_path, make, expect):
    folder = tmp_path / "doodles"
    if make != "missing":
        folder.mkdir()
    if make == "broken":
        (folder / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=expect):
        Images(path=folder).load(make_ctx())
    if make != "broken":  # a wrong path is caught when the recipe is built, before training
        with pytest.raises(InputError, match=expect):
            Images(path=folder)


# --- documentation ------------------------------------------------------------------------------


def test_every_builtin_parameter_is_documented_in_its_section():
    """docs/builtins.md keeps a row for every parameter of every built-in, in that
    component's own section, with its default."""
    import inspect
    import re

    import qdplugins.filters
    import qdplugins.seeds
    import qdplugins.writers
    from qdcore.params import parameters
    from qdplugins import datasets

    doc = (Path(__file__).resolve().parent.parent / "docs" / "builtins.md").read_text()
    hooks = [
        (datasets, "qd_register_datasets"),
        (qdplugins.seeds, "qd_register_seed_strategies"),
        (qdplugins.filters, "qd_register_filters"),
        (qdplugins.writers, "qd_register_writers"),
    ]
    seen = 0
    for module, hook in hooks:
        found = []
        getattr(module, hook)(lambda name, factory, description="": found.append((name, factory)))
        for name, factory in found:
            match = re.search(rf"^### `{re.escape(name)}`.*?(?=^##)", doc + "\n##", re.M | re.S)
            assert match, f"no section for {name}"
            section = match.group(0)
            for param, p in parameters(factory).items():
                row = re.search(rf"^\| `{param}` \|([^|]*)\|([^|]*)\|", section, re.M)
                assert row, f"{name}.{param} is not documented"
                default = p.default
                if default is inspect.Parameter.empty:
                    assert "required" in row.group(2), f"{name}.{param} should say required"
                elif default is None:
                    assert "null" in row.group(2), f"{name}.{param}: default null"
                else:
                    shown = str(default).lower() if isinstance(default, bool) else str(default)
                    assert shown in row.group(2), f"{name}.{param}: default {default!r} not in {row.group(2)!r}"
                seen += 1
    assert seen > 30
