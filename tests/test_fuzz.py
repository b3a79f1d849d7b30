"""A fuzzer that keeps qd's contract (issue 11), with Hypothesis.

Random recipe documents, random seed images and random parameters for every registered
plugin, drawn from the plugin's own signature (qdcore/params.py). The contract: exit 0, 1 or 2;
at most one `Error:` line; no traceback; nothing written but the output and the cache.
Whole YAML documents and JSON bodies (issue 17) against `qd validate`, `qd run` with the
tests' tiny model and every studio POST endpoint: there, exit 0 or 2 (a 4xx) only.
In-process and bounded (max_examples below) so the whole fuzzer stays near a minute.
"""

from __future__ import annotations

import io
import json
import typing
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdcore import Context, Drawing, QdError
from qdcore.params import Range, check, parameters

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- random recipe documents ----------------------------------------------------------------------

KEYS = [
    "name",
    "seed",
    "dataset",
    "model",
    "train",
    "generate",
    "seeds",
    "filters",
    "output",
    "use",
    "category",
    "limit",
    "path",
    "T",
    "height",
    "width",
    "iterations",
    "batch_size",
    "learning_rate",
    "n",
    "frames",
    "duration",
    "size",
    "passes",
    "p_one",
    "count",
    "attention",
    "binarize",
    "précision",
    "🎨",
]
NAMES = [
    "quickdraw",
    "quickdraw-strokes",
    "images",
    "file-image",
    "training-batch",
    "prior",
    "sobel-edges",
    "random-pixels",
    "sharpen",
    "upscale",
    "anti-alias",
    "invert",
    "gif",
    "png-sheet",
    "apple",
    "nope",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 1e308, -1e308, 1e-320, float("nan"), float("inf"), 2**63, 28, 0.5]),
    st.text(max_size=20),
    st.sampled_from(NAMES),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=25,
)
recipe_like = st.fixed_dictionaries(
    {
        "dataset": st.one_of(
            documents,
            st.fixed_dictionaries(
                {"use": st.sampled_from(NAMES)}, optional={"category": documents, "limit": documents}
            ),
        )
    },
    optional={k: documents for k in ["name", "seed", "model", "train", "generate", "seeds", "filters", "output"]},
)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Error:")]


def files_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def run_cli(argv, capsys) -> tuple[int, str]:
    from qdcore.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.err


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers")
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QD_DOWNLOAD_URL", "http://127.0.0.1:9/")  # never leaves the machine
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_contract(code, err, before, after, allowed=()):
    assert code in (0, 1, 2), err
    assert len(error_lines(err)) <= 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert (code == 0) == (error_lines(err) == []), err
    assert after - before <= set(allowed), sorted(after - before)


@FUZZ
@given(doc=st.one_of(recipe_like, documents))
def test_random_recipe_documents_keep_the_contract(sandbox, capsys, doc):
    recipe = sandbox / "fuzz.yaml"
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    recipe.write_text(text, encoding="utf-8")
    before = files_in(sandbox)
    code, err = run_cli(["validate", recipe], capsys)
    assert_contract(code, err, before, files_in(sandbox))


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.sampled_from(
            [
                "&a [*a, *a]",
                "a: &x [1]\nb: *x\n",
                "!!binary AAAA",
                "? [a]\n: b",
                "dataset: !!python/name:os.system\n",
                "%YAML 1.1\n---\n",
                "\t\x00",
            ]
        ),
    )
)
def test_random_recipe_text_keeps_the_contract(sandbox, capsys, text):
    recipe = sandbox / "fuzz.yaml"
    recipe.write_bytes(text.encode("utf-8", "surrogatepass"))
    before = files_in(sandbox)
    code, err = run_cli(["validate", recipe], capsys)
    assert_contract(code, err, before, files_in(sandbox))
    assert code != 0 or text.strip()  # an empty recipe is never valid


# --- random seed images ---------------------------------------------------------------------------

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]


@st.composite
def image_files(draw):
    from PIL import Image

    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"]))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    im = Image.fromarray(pixels, "L").convert(mode)
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        im.convert("RGB").save(buf, format=fmt)
    data = buf.getvalue()
    cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    flip = draw(st.one_of(st.none(), st.integers(0, max(len(data) - 1, 0))))
    data = bytearray(data[:cut])
    if flip is not None and flip < len(data):
        data[flip] ^= 0xFF
    return bytes(data), fmt.lower()


@FUZZ
@given(
    image=image_files(),
    shape=st.tuples(st.integers(2, 40), st.integers(2, 40)),
    invert=st.sampled_from(["auto", "always", "never"]),
    fit=st.sampled_from(["pad", "stretch"]),
    normalize=st.booleans(),
)
def test_random_seed_images_load_or_fail_cleanly(tmp_path, image, shape, invert, fit, normalize):
    from qdplugins.datasets import load_image

    data, ext = image
    path = tmp_path / f"seed.{ext}"
    path.write_bytes(data)
    try:
        out = load_image(path, shape, invert, fit, normalize)
    except QdError as e:
        assert e.exit_code == 2 and "\n" not in str(e)
        return
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


# --- random parameters for every registered plugin, from its signature -----------------------------


def valid_value(tp, name: str):
    """A strategy of values that `tp` accepts (kept small where a value sets a size)."""
    origin = get_origin(tp)
    if origin is typing.Annotated:
        base, *extra = get_args(tp)
        rng = next((e for e in extra if isinstance(e, Range)), Range())
        if base is int:
            lo = int(rng.lo) if rng.lo is not None else -50
            hi = int(rng.hi) if rng.hi is not None else lo + 100
            return st.integers(lo, min(hi, lo + 96))
        lo = rng.lo if rng.lo is not None else -10.0
        hi = rng.hi if rng.hi is not None else lo + 100.0
        return st.floats(lo, hi, allow_nan=False)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is Union:
        return st.one_of([valid_value(a, name) if a is not type(None) else st.none() for a in get_args(tp)])
    if origin in (list, tuple):
        return st.lists(valid_value(get_args(tp)[0], name), min_size=1, max_size=3)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-1000, 1000)
    if tp is float:
        return st.floats(-10, 10)
    if tp is Path:
        return st.sampled_from(["seed.png", "nowhere.png", "doodles", "*.png", ""])
    if tp is str:
        return st.sampled_from(["apple", "cat", "coffee cup", "x"])
    return scalars


@st.composite
def plugin_params(draw, factory):
    params = {}
    for name, p in parameters(factory).items():
        required = p.default is p.empty
        if not required and draw(st.booleans()):
            continue
        params[name] = draw(st.one_of(valid_value(p.annotation, name), valid_value(p.annotation, name), scalars))
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.text(min_size=1, max_size=6))] = draw(scalars)  # an unknown key
    return params


def registered():
    from qdcore.plugin_manager import build

    reg = build().registry
    return [
        (kind, name, reg.get(kind, name).factory)
        for kind in ("datasets", "seed_strategies", "filters", "writers")
        for name in reg.names(kind)
    ]


def ctx(tmp_path, shape=(12, 12)) -> Context:
    return Context(shape, np.random.default_rng(0), tmp_path, None, tmp_path / "cache", quiet=True)


def drawing(shape=(12, 12), T=2, n=3) -> Drawing:
    rng = np.random.default_rng(1)
    windows = np.concatenate([rng.uniform(0, 12, (T, n, 2)), rng.uniform(0.5, 3, (T, n, 1))], axis=2)
    return Drawing(
        canvases=rng.random((T, n) + shape, dtype=np.float32),
        windows=windows.astype(np.float32),
        write_n=2,
        source="prior",
    )


@pytest.mark.parametrize("kind, name, factory", registered(), ids=lambda v: v if isinstance(v, str) else "")
def test_random_plugin_parameters_keep_the_contract(tmp_path, monkeypatch, kind, name, factory):
    from PIL import Image

    monkeypatch.setenv("QD_DOWNLOAD_URL", "http://127.0.0.1:9/")
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.eye(20, dtype=np.uint8) * 255).save(tmp_path / "seed.png")
    (tmp_path / "doodles").mkdir(exist_ok=True)
    Image.fromarray(np.eye(20, dtype=np.uint8) * 255).save(tmp_path / "doodles" / "a.png")

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(params=plugin_params(factory))
    def one(params):
        before = files_in(tmp_path)
        out = tmp_path / "out" / "x.gif"
        try:
            component = factory(**check(factory, params, name, tmp_path))
            c = ctx(tmp_path)
            if kind == "seed_strategies":
                from qdcore import ImageSet, SeedInput

                data = ImageSet(np.random.default_rng(2).random((5, 12, 12), dtype=np.float32), "synthetic")
                source = np.random.default_rng(3).random((3, 12, 12), dtype=np.float32)
                given_ = SeedInput(n=3, dataset=data, last_batch=source)
                first = None if getattr(component, "is_source", False) else source
                seeds = component.apply(first, given_, c)
                assert seeds is None or (np.asarray(seeds).shape == (3, 12, 12) and np.isfinite(seeds).all())
            elif kind == "filters":
                frames = component.apply(np.random.default_rng(4).random((6, 12, 12), dtype=np.float32), c)
                frames = np.asarray(frames)
                assert frames.ndim == 3 and frames.shape[0] == 6 and np.isfinite(frames).all()
            elif kind == "writers":
                written = Path(component.write(drawing(), out, c) or out)
                assert written.is_file() and written.stat().st_size > 0
                written.unlink()
        except QdError as e:
            assert e.exit_code in (1, 2) and "\n" not in str(e), e
        after = files_in(tmp_path)
        # Nothing left behind but the cache and the output folder (now empty).
        assert {p for p in after - before if "cache" not in p.parts and p != out.parent} == set()

    one()


# --- whole documents (issue 17): YAML recipes and JSON bodies, hostile at every key ----------------
#
# A valid recipe, with the value at one key (any depth) replaced by a hostile fragment written as
# text: an alias bomb, nesting thousands deep, numbers beyond any range, every odd type, a key
# given twice, or a path to an odd file. Written as text, not dumped, so the document holds
# exactly what an attacker would type (PyYAML's emitter would recurse on deep nesting itself).

BASE = {
    "name": "tiny",
    "seed": 3,
    "dataset": {"use": "quickdraw", "category": "apple", "limit": 200},
    "model": {"T": 4, "enc_size": 32, "dec_size": 32, "z_size": 4},
    "train": {"iterations": 30, "batch_size": 20, "warmup": 0},
    "generate": {"n": 2, "best_of": 1},
    "seeds": [{"use": "prior"}],
    "filters": [{"use": "sharpen", "passes": 1}, {"use": "anti-alias"}],
    "output": {"use": "gif", "frames": "steps", "sample": 0, "attention": True, "duration": 0.1},
}
# ODD is replaced by the absolute path of the odd_files fixture's folder.
ODD_FILES = [
    "ODD/secret.yaml",
    "ODD/secret",
    "ODD/folder",
    "ODD/empty.png",
    "ODD/text.png",
    "ODD/cut.png",
    "ODD/loop.png",
    "ODD/fifo.png",
    "/dev/zero",
    "/dev/null",
    "/proc/self/environ",
    "../../../../etc/passwd",
    "odd/text.png",
    "odd/secret",
]


def key_paths(value, prefix=()):
    """Every key path in `value`, at every depth (list items by index)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        yield prefix + (k,)
        yield from key_paths(v, prefix + (k,))


PATHS = list(key_paths(BASE)) + [
    ("model", "from"),
    ("seeds", 0, "path"),
    ("output", "path"),
    ("dataset", "path"),
    ("recognizer",),
    ("zzz",),
    ("train", "seed"),
    ("generate", "zzz"),
]
# The keys a `qd run` fuzz may change without training a new model (the model key is the
# name, dataset, model and train sections).
RUN_PATHS = [p for p in PATHS if p[0] not in ("name", "dataset", "model", "train")]
EDGES = ["-1", "-9223372036854775809", "9223372036854775808", str(2**70), "1e308", "-1e308", "0", "-0.0"]


def deep(depth: int, kind: str) -> str:
    return ("[" * depth + "1" + "]" * depth) if kind == "list" else ("{a: " * depth + "1" + "}" * depth)


def bomb(levels: int, width: int) -> str:
    return (
        "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * width) + "]" for i in range(levels)) + "]"
    )


yaml_fragments = st.one_of(
    st.sampled_from(
        EDGES
        + [
            ".nan",
            ".inf",
            "-.inf",
            "~",
            "true",
            "[]",
            "{}",
            "''",
            "'x'",
            "!!binary AAAA",
            "!!python/name:os.system",
            "{use: prior, use: gif}",
            "[prior, {use: sharpen, passes: 1, passes: 2}]",
        ]
    ),
    st.integers(-3, 3).map(str),
    st.text(max_size=30).map(lambda t: json.dumps(t)),
    st.sampled_from(ODD_FILES).map(json.dumps),
    st.builds(deep, st.integers(1, 3000), st.sampled_from(["list", "map"])),
    st.builds(bomb, st.integers(1, 10), st.integers(2, 10)),
)
json_fragments = st.one_of(
    st.sampled_from(
        EDGES
        + [
            "1e400",
            "-1e400",
            "NaN",
            "Infinity",
            "null",
            "true",
            "[]",
            "{}",
            '""',
            '{"use": "prior", "use": "gif"}',
            '[{"use": "sharpen", "passes": 1, "passes": 2}]',
        ]
    ),
    st.integers(-3, 3).map(str),
    st.text(max_size=30).map(lambda t: json.dumps(t)),
    st.sampled_from(ODD_FILES).map(json.dumps),
    st.integers(1, 20000).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 3000).map(lambda d: '{"a": ' * d + "1" + "}" * d),
)
# Keys that name a file, each with the fragment that names one there; half of the examples
# aim an odd file at one of them (a page must never make the studio open any).
FILE_KEYS = {
    ("model", "from"): "{}",
    ("seeds", 0): '{{"use": "file-image", "path": {}}}',
    ("dataset",): '{{"use": "images", "path": {}}}',
    ("output", "path"): "{}",
}
file_holes = st.tuples(st.sampled_from(list(FILE_KEYS)), st.sampled_from(ODD_FILES)).map(
    lambda kf: (kf[0], FILE_KEYS[kf[0]].format(json.dumps(kf[1])))
)


def holes(paths, fragments):
    """(key path, fragment): a hostile value at any key, or an odd file at a key naming one."""
    return st.one_of(
        st.tuples(st.sampled_from(paths), fragments),
        file_holes.filter(lambda h: h[0] in paths or h[0][0] in {p[0] for p in paths}),
    )


HOLE = "QD-FUZZ-HOLE"
sometimes = st.sampled_from([False, False, False, True])  # a duplicate key hides what follows it


def with_hole(path) -> dict:
    doc = json.loads(json.dumps(BASE))
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = HOLE
    return doc


def yaml_document(path, fragment: str, twice: bool, odd: Path) -> str:
    """BASE with `fragment` at `path`, in block style, the hole filled with flow YAML text."""
    text = yaml.safe_dump(with_hole(path), sort_keys=False)
    text = text.replace(HOLE, fragment.replace("\n", " ").replace("ODD/", f"{odd}/"))
    if twice:  # the first section again: a duplicate key at the top
        text += text.splitlines()[0] + "\n"
    return text


def json_body(path, fragment: str, twice: bool, odd: Path) -> str:
    text = json.dumps({"recipe": with_hole(path)}).replace(json.dumps(HOLE), fragment.replace("ODD/", f"{odd}/"))
    return text.replace('{"recipe": {', '{"recipe": {"seed": 1, ', 1) if twice else text


@pytest.fixture
def odd_files(tmp_path):
    import os

    odd = tmp_path / "odd"
    (odd / "folder").mkdir(parents=True)
    (odd / "empty.png").write_bytes(b"")
    (odd / "text.png").write_text("not an image\n")
    (odd / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (odd / "loop.png").symlink_to(odd / "loop.png")
    os.mkfifo(odd / "fifo.png")  # opening it to read would wait forever for a writer
    (odd / "secret.yaml").write_text('dataset: {use: "SECRET"}\n')
    return odd


DOCS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def assert_refused_or_ok(code, err, before, after, allowed=()):
    """Issue 17's rule: whatever the document, exit 0 or 2, one line, never "unexpected"."""
    assert code in (0, 2), err
    assert_contract(code, err, before, after, allowed)


@DOCS
@given(hole=holes(PATHS, yaml_fragments), twice=sometimes)
def test_whole_yaml_documents_against_qd_validate(sandbox, odd_files, capsys, hole, twice):
    path, fragment = hole
    recipe = sandbox / "fuzz.yaml"
    recipe.write_text(yaml_document(path, fragment, twice, odd_files), encoding="utf-8")
    before = files_in(sandbox)
    code, err = run_cli(["validate", recipe], capsys)
    assert_refused_or_ok(code, err, before, files_in(sandbox))
    if twice:
        assert code == 2  # the duplicate key, unless something before it is refused first


@pytest.fixture
def run_sandbox(sandbox, tiny_model, monkeypatch):
    """The sandbox, with the tests' cache holding the tiny model BASE describes."""
    monkeypatch.setenv("QD_CACHE_DIR", str(tiny_model.parent.parent / "qd-cache"))
    assert yaml.safe_load(tiny_model.read_text())["model"] == BASE["model"]
    return sandbox


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(hole=holes(RUN_PATHS, yaml_fragments), twice=sometimes)
def test_whole_yaml_documents_against_qd_run_with_a_tiny_model(run_sandbox, odd_files, capsys, hole, twice):
    path, fragment = hole
    recipe = run_sandbox / "fuzz.yaml"
    recipe.write_text(yaml_document(path, fragment, twice, odd_files), encoding="utf-8")
    out = run_sandbox / "out.gif"
    out.unlink(missing_ok=True)
    before = files_in(run_sandbox)
    code, err = run_cli(["run", recipe, "--quiet", "--out", out], capsys)
    assert_refused_or_ok(code, err, before, files_in(run_sandbox), allowed={out})


@pytest.fixture
def studio_client(tmp_path, tiny_model, monkeypatch):
    from starlette.testclient import TestClient

    from qdcore.plugin_manager import build
    from qdcore.studio.server import create_app
    from qdcore.studio.session import Studio

    monkeypatch.setenv("QD_CACHE_DIR", str(tiny_model.parent.parent / "qd-cache"))
    monkeypatch.setenv("QD_DOWNLOAD_URL", "http://127.0.0.1:9/")
    studio = Studio(build(), tiny_model, workdir=tmp_path / "studio")
    # A recipe the page may train starts a job; the job's body is training (not what is fuzzed).
    monkeypatch.setattr(studio, "_train", lambda job, run: setattr(job, "state", "done"))
    with TestClient(create_app(studio)) as client:
        yield client, studio
    studio.close()


ENDPOINTS = ["/api/validate", "/api/generate", "/api/recipe.yaml", "/api/upload", "/api/train", "/api/jobs/cancel"]


@DOCS
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    hole=holes(PATHS, json_fragments),
    twice=sometimes,
    extra=st.sampled_from(
        [
            None,
            ("n", "-1"),
            ("n", "1e400"),
            ("n", '"2"'),
            ("image", '"data:image/png;base64,AAAA"'),
            ("key", "[[[]]]"),
            ("image", "[" * 5000 + "]" * 5000),
        ]
    ),
)
def test_json_bodies_against_every_studio_endpoint(studio_client, odd_files, endpoint, hole, twice, extra):
    client, studio = studio_client
    path, fragment = hole
    body = json_body(path, fragment, twice, odd_files)
    if extra is not None:
        body = body[:-1] + f', "{extra[0]}": {extra[1]}' + "}"
    before = {p for p in files_in(studio.tmp) if "uploads" not in p.parts and "shared" not in p.parts}
    res = client.post(endpoint, content=body.encode(), headers={"Content-Type": "application/json"})
    assert res.status_code in (200, 202, 400, 404, 409, 413), res.text
    if res.status_code >= 400:
        error = res.json()["error"]
        assert set(res.json()) == {"error"} and error.startswith("Error: ") and "\n" not in error, res.text
        assert "unexpected" not in error and " at 0x" not in error and "SECRET" not in error, error
    if twice:
        assert res.status_code == 400  # the duplicate key, unless something before it is refused first
    after = {p for p in files_in(studio.tmp) if "uploads" not in p.parts and "shared" not in p.parts}
    assert after <= before, sorted(after - before)


# --- hardening, round three (issue 31): modes, model packs, cache records -----------------------


MODE_BASES = {
    "complete": {**BASE, "mode": {"use": "complete", "k": 1, "tries": 2}, "seeds": [{"use": "training-batch"}]},
    "morph": {**BASE, "mode": {"use": "morph", "frames": 4, "start": None, "end": None, "forth_and_back": True}},
}
MODE_PATHS = [("mode", k) for k in ("k", "tries", "frames", "start", "end", "to", "fit", "invert", "zzz")] + [
    ("output", "columns"),
    ("output", "spacing"),
    ("output", "use"),
    ("model", "start"),
]


@DOCS
@given(base=st.sampled_from(sorted(MODE_BASES)), path=st.sampled_from(MODE_PATHS), fragment=yaml_fragments)
def test_mode_and_writer_settings_against_qd_validate(sandbox, odd_files, capsys, monkeypatch, base, path, fragment):
    """Generation modes' parameters (and the writer's, and `model.start`): checked while the recipe is,
    exit 0 or 2 with one line, nothing written."""
    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers,generators")
    doc = json.loads(json.dumps(MODE_BASES[base]))
    doc[path[0]] = {**doc[path[0]], path[1]: HOLE}
    text = yaml.safe_dump(doc, sort_keys=False).replace(
        HOLE, fragment.replace("\n", " ").replace("ODD/", f"{odd_files}/")
    )
    recipe = sandbox / "fuzz.yaml"
    recipe.write_text(text, encoding="utf-8")
    before = files_in(sandbox)
    code, err = run_cli(["validate", recipe], capsys)
    assert_refused_or_ok(code, err, before, files_in(sandbox))


manifest_values = st.one_of(documents, st.sampled_from([float("nan"), float("inf"), -1, 2**70, "", "x" * 300, [], {}]))


@pytest.fixture(scope="module")
def pack_formats(tiny_pack):
    """The tiny pack in each format: its manifest, and the weights as that format holds them
    (format 1: weights.npz's bytes; format 2: the named arrays)."""
    import io
    import zipfile

    from qdcore import packs

    pack, weights = packs.read(tiny_pack)  # format 2
    manifest_1, archive = packs.encode(pack.manifest, weights, 1)
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        npz = z.read("weights.npz")
    return {1: (manifest_1, npz), 2: (pack.manifest, weights.arrays(tiny_pack))}


def pack_file(folder, fmt: int, manifest_text: str, weights):
    """A pack file of format `fmt` holding this manifest text, as that format's writer would."""
    import zipfile

    if fmt == 1:
        file = folder / "x.qdpack"
        with zipfile.ZipFile(file, "w") as z:
            z.writestr("manifest.json", manifest_text)
            z.writestr("weights.npz", weights)
        return file
    from safetensors.numpy import save

    file = folder / "x.safetensors"
    file.write_bytes(save(weights, metadata={"qd_manifest": manifest_text}))
    return file


@FUZZ
@given(
    where=st.sampled_from(
        [
            ("name",),
            ("categories",),
            ("conditional",),
            ("steps",),
            ("model",),
            ("model", "T"),
            ("model", "enc_size"),
            ("model", "attention"),
            ("train",),
            ("train", "batch_size"),
            ("held_out",),
            ("held_out", "bound"),
            ("recognizer",),
            ("data",),
            ("description",),
            ("files",),
            ("files", "weights.npz", "bytes"),
            ("files", "tensors", "bytes"),
            ("files", "tensors", "sha256"),
            ("format",),
            ("format_version",),
            ("legs",),
            ("zzz",),
        ]
    ),  # fmt: skip
    value=manifest_values,
    drop=st.booleans(),
    fmt=st.sampled_from([1, 2]),
)
def test_random_pack_manifests_import_or_are_refused_whole(tmp_path_factory, pack_formats, where, value, drop, fmt):
    """Every manifest field typed and ranged, in a pack of either format: it imports, or
    InputError leaves the cache as it was."""
    from qdcore import InputError, packs

    m = json.loads(json.dumps(pack_formats[fmt][0]))
    node = m
    for part in where[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        if drop:
            node.pop(where[-1], None)
        else:
            node[where[-1]] = value
    folder = tmp_path_factory.mktemp("fuzzpack")
    file = pack_file(folder, fmt, json.dumps(m), pack_formats[fmt][1])
    cache = folder / "cache"
    try:
        pack = packs.import_pack(file, cache)
    except InputError as e:
        assert "\n" not in str(e)
        assert not (cache / "packs").exists() or not any(p for p in (cache / "packs").iterdir() if p.is_dir())
        return
    assert packs.read(pack.path, pack.name)[0].manifest["name"] == pack.name
    assert packs.listing(cache, {})[0]["status"] == "finished"
    # What imports exports again, with a card made from whatever the manifest holds.
    again = packs.export(pack.name, folder / "again.safetensors", cache, {})
    assert again.name == pack.name and (folder / "again.README.md").read_text().startswith("---\n")


RECORDS = ["finished.json", "stop.json", "start.json", "eval.json", "recipe.json", "checkpoints/checkpoint"]
record_contents = st.one_of(
    st.binary(max_size=200),
    documents.map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"", b"{", b"[" * 3000 + b"]" * 3000, b'{"step": "x"}', b'{"checks": [[1, "x"]]}']),
)


@FUZZ
@given(record=st.sampled_from(RECORDS), content=record_contents)
def test_random_cache_records_never_block(tmp_path_factory, tiny_model, record, content):
    """Every record qd keeps beside a model, damaged any way: `qd models` keeps its table, and the
    model loads or is retrained after one warning; nothing reaches `unexpected`."""
    import shutil
    import warnings

    from qdcore import QdError, models
    from qdcore.training import stopping
    from qdcore.training.checkpoints import read_finished, read_record

    cache = tiny_model.parent.parent / "qd-cache"  # where conftest's tiny_model trained
    source = next(p for p in sorted((cache / "models").iterdir()) if p.is_dir() and p.name.startswith("tiny-"))
    folder = tmp_path_factory.mktemp("records") / source.name
    shutil.copytree(source, folder)
    (folder / record).write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = models.describe(folder)
        assert row["status"] in ("finished", "partial", "empty")
        read_finished(folder / "finished.json")
        stopping.read_state(folder)
        read_record(folder / "start.json")
        try:
            from qdcore.config import ModelConfig
            from qdcore.training.train import load

            load(ModelConfig(**BASE["model"]), folder)
        except QdError:
            pass


@pytest.fixture(scope="module")
def pack_bytes(tiny_pack, pack_formats):
    """The tiny pack's file in each format."""
    from qdcore import packs

    return {1: packs.encode(pack_formats[1][0], pack_formats[2][1], 1)[1], 2: tiny_pack.read_bytes()}


@FUZZ
@given(
    fmt=st.sampled_from([1, 2]),
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10**9)),
    # Format 2's first 8 bytes are the header's length: any 64-bit number there, or none.
    header=st.one_of(st.none(), st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 100_000_000, 2**63])),
    in_header=st.booleans(),
)
def test_random_damage_to_a_pack_file_is_refused_whole(
    tmp_path_factory, pack_bytes, fmt, flips, cut, header, in_header
):
    """Bytes of a pack of either format flipped (a zip's headers, its central directory, the
    members; a safetensors header's length, its JSON, the tensors) or cut short: imported whole
    only if every check still passes, else one InputError and no cache."""
    from qdcore import InputError, packs

    data = bytearray(pack_bytes[fmt])
    # Half the time the flips land in the first few KB: a zip's local header and manifest, a
    # safetensors header (its manifest and every tensor's entry).
    span = min(len(data), 4096) if in_header else len(data)
    for at, xor in flips:
        data[at % span] ^= xor
    if header is not None:
        data[:8] = header.to_bytes(8, "little")
    if cut is not None:
        data = data[: cut % len(data)]
    folder = tmp_path_factory.mktemp("damaged")
    file = folder / ("x.qdpack" if fmt == 1 else "x.safetensors")
    file.write_bytes(bytes(data))
    try:
        packs.import_pack(file, folder / "cache")
    except InputError as e:
        assert "\n" not in str(e) and not (folder / "cache").exists()
