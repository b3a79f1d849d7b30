"""The studio's HTTP API (Starlette's TestClient): every endpoint, and every error as a 4xx
with one `Error:` line, never a traceback. Generation uses the tiny model trained once per
session (conftest.tiny_model); real training and cancelling run in the browser test."""

from __future__ import annotations

import base64
import io
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
from PIL import Image

from starlette.testclient import TestClient  # noqa: E402

from qdcore import Filter, hookimpl, sources  # noqa: E402
from qdcore.plugin_manager import build  # noqa: E402
from qdcore.studio.server import MAX_BODY, create_app  # noqa: E402
from qdcore.studio.session import DEFAULT_RECIPE, Job, Studio  # noqa: E402

ORIGIN = "http://testserver"


def _glow_plugin():
    """A third-party plugin made in the test: a filter, and one that crashes."""
    mod = types.ModuleType("qdtest_studio_glow")

    class Glow(Filter):
        def __init__(self, radius: float = 2.0):
            self.radius = radius

        def apply(self, frames, ctx):
            return frames

    class Boom(Filter):
        def __init__(self):
            pass

        def apply(self, frames, ctx):
            raise RuntimeError("the boom filter always fails\nsecond line")

    @hookimpl
    def qd_register_filters(register):
        register("glow", Glow, description="a soft halo (test plugin)")
        register("boom", Boom, description="always fails (test plugin)")

    mod.qd_register_filters = qd_register_filters
    return mod


@pytest.fixture
def studio(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("QD_CACHE_DIR", str(tiny_model.parent.parent / "qd-cache"))
    s = Studio(build(extra=[("glow", _glow_plugin())]), tiny_model, workdir=tmp_path / "studio")
    yield s
    s.close()


@pytest.fixture
def client(studio):
    with TestClient(create_app(studio)) as c:
        yield c


@pytest.fixture
def recipe(client):
    return client.get("/api/recipe").json()["recipe"]


def png_url(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def stroke_image() -> np.ndarray:
    img = np.full((280, 280), 255, np.uint8)
    img[60:220, 130:150] = 0  # a dark bar on white paper
    return img


def one_error(response, status: int, fragment: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    line = body["error"]
    assert line.startswith("Error: ") and "\n" not in line and "Traceback" not in line
    assert fragment in line, line
    return line


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>qd studio</title>" in page.text
    assert 'src="http' not in page.text and 'href="http' not in page.text, "no CDN: the page works offline"
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_schema_and_plugins_include_a_plugin_installed_by_the_test(client):
    schema = client.get("/api/schema").json()
    titles = [o.get("title") for o in schema["$defs"]["filter"]["anyOf"]]
    assert "glow" in titles and "sharpen" in titles
    kinds = client.get("/api/plugins").json()["kinds"]
    glow = next(f for f in kinds["filters"] if f["name"] == "glow")
    assert glow == {"name": "glow", "description": "a soft halo (test plugin)", "plugin": "glow"}
    assert {"datasets", "seed_strategies", "filters", "writers"} <= set(kinds)


def test_recipe_is_the_starting_recipe_or_the_default(client, studio, tmp_path, installed_packs):
    body = client.get("/api/recipe").json()
    assert body["recipe"]["name"] == "tiny" and body["file"].endswith("tiny.yaml")
    # no pack draws cats (the one qd ships: test_the_default_recipe_draws_cats_from_the_installed_pack)
    installed_packs()
    bare = Studio(build(), None, workdir=tmp_path / "bare")
    with TestClient(create_app(bare)) as c:
        assert c.get("/api/recipe").json() == {"recipe": DEFAULT_RECIPE, "file": None}
    bare.close()


def test_validate_ok_and_says_whether_the_model_is_trained(client, recipe):
    body = client.post("/api/validate", json={"recipe": recipe}).json()
    assert body["ok"] and body["trained"] is True and body["name"] == "tiny"
    other = {**recipe, "train": {**recipe["train"], "iterations": 31}}
    assert client.post("/api/validate", json={"recipe": other}).json()["trained"] is False


@pytest.mark.parametrize(
    "change, status, fragment",
    [
        (
            lambda r: {**r, "filters": [{"use": "sharpen", "passes": 20}]},
            400,
            "studio: filters[0].passes: 20 is out of range: must be between 1 and 10",
        ),
        (lambda r: {**r, "filters": [{"use": "sharpn"}]}, 400, "Can't find filter 'sharpn'. Did you mean 'sharpen'"),
        (
            lambda r: {**r, "filters": [{"use": "glow", "radius": "big"}]},
            400,
            "filters[0].radius: 'big' is not a number",
        ),
        (lambda r: {**r, "seeds": [{"use": "sobel-edges"}]}, 400, "needs a source before it"),
        (lambda r: {**r, "bogus": 1}, 400, "unknown section 'bogus'"),
        (
            lambda r: {**r, "seeds": [{"use": "file-image", "path": "/etc/passwd"}]},
            400,
            "studio: seeds[0].path: the studio does not open files named by the page",
        ),
        (
            lambda r: {**r, "seeds": [{"use": "file-image", "path": "../../tiny.yaml"}]},
            400,
            "does not open files named by the page",
        ),
        (
            lambda r: {**r, "dataset": {"use": "images", "path": "/etc"}},
            400,
            "studio: dataset.path: the studio does not open files",
        ),
        (lambda r: {**r, "output": {"use": "gif", "path": "/tmp/x.gif"}}, 400, "does not write where the page says"),
        (lambda r: {**r, "seeds": [{"use": "file-image", "path": "upload:" + "0" * 32}]}, 404, "is not on this server"),
        (
            lambda r: {**r, "seeds": [{"use": "file-image", "path": "upload:../../etc/passwd"}]},
            400,
            "is not an upload id",
        ),
        (lambda r: "not a recipe", 400, "the request must hold a recipe object"),
    ],
)
def test_validate_errors_are_one_line(client, recipe, change, status, fragment):
    one_error(client.post("/api/validate", json={"recipe": change(recipe)}), status, fragment)


def test_bad_bodies(client):
    one_error(client.post("/api/validate", content=b"{nope"), 400, "not JSON")
    one_error(client.post("/api/validate", json=[1, 2]), 400, "must be a JSON object")
    one_error(client.post("/api/validate", content=b"x" * (MAX_BODY + 1)), 413, "limit")
    one_error(client.get("/api/nothing-here"), 404, "no endpoint GET /api/nothing-here")
    one_error(client.get("/api/validate"), 404, "no endpoint GET /api/validate")


def test_foreign_origin_is_refused_and_own_origin_accepted(client, recipe):
    one_error(
        client.post("/api/validate", json={"recipe": recipe}, headers={"Origin": "http://evil.example"}),
        403,
        "requests from another site (http://evil.example) are refused",
    )
    one_error(client.get("/api/schema", headers={"Origin": "http://127.0.0.1.evil.example"}), 403, "refused")
    assert client.post("/api/validate", json={"recipe": recipe}, headers={"Origin": ORIGIN}).status_code == 200


def test_bound_to_loopback_only_loopback_host_names_are_served(studio, recipe):
    from qdcore.studio.server import LOOPBACK_NAMES

    with TestClient(create_app(studio, LOOPBACK_NAMES), base_url="http://127.0.0.1:8765") as c:
        assert c.get("/api/recipe").status_code == 200
        assert c.get("/api/recipe", headers={"Host": "localhost:8765"}).status_code == 200
        assert c.get("/api/recipe", headers={"Host": "[::1]:8765"}).status_code == 200
        # DNS rebinding: evil.example now resolves to 127.0.0.1, and its page is same-origin
        one_error(
            c.post(
                "/api/validate",
                json={"recipe": recipe},
                headers={"Host": "evil.example:8765", "Origin": "http://evil.example:8765"},
            ),
            403,
            "requests for host 'evil.example:8765' are refused",
        )


def test_upload_goes_through_the_file_image_rules(client, studio):
    res = client.post("/api/upload", json={"image": png_url(stroke_image())})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["ref"] == "upload:" + body["id"]
    stored = list(studio.uploads.iterdir())
    assert [p.name for p in stored] == [body["id"] + ".png"]
    assert stored[0].parent.parent == studio.tmp and (studio.tmp.stat().st_mode & 0o777) == 0o700
    preview = iio.imread(base64.b64decode(body["preview"].split(",", 1)[1]))
    assert preview.shape == (28, 28)
    # file-image's invert=auto: dark ink on white paper becomes bright ink on black
    assert preview[14, 14] > 200 and preview[0, 0] < 30
    served = client.get(f"/api/uploads/{body['id']}.png")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "image, status, fragment",
    [
        ("hello", 400, "as a data URL"),
        ("data:image/png;base64,!!!not-base64", 400, "base64 is corrupt"),
        ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), 400, "not a readable image"),
        (None, 400, "as a data URL"),
    ],
)
def test_upload_errors(client, image, status, fragment):
    one_error(client.post("/api/upload", json={"image": image}), status, fragment)


def test_upload_limits(client, monkeypatch):
    import qdcore.studio.session as server

    big = png_url(np.zeros((2000, 2000), np.uint8))
    monkeypatch.setattr(server, "MAX_PIXELS", 1000 * 1000)
    one_error(client.post("/api/upload", json={"image": big}), 400, "the image is 2000x2000 pixels")
    monkeypatch.setattr(server, "MAX_UPLOAD", 1000)
    noisy = png_url(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))
    one_error(client.post("/api/upload", json={"image": noisy}), 413, "the limit is")


def test_uploads_folder_keeps_the_newest(client, studio, monkeypatch):
    import qdcore.studio.session as server

    monkeypatch.setattr(server, "KEEP_UPLOADS", 3)
    ids = [client.post("/api/upload", json={"image": png_url(stroke_image())}).json()["id"] for _ in range(5)]
    assert sorted(p.stem for p in studio.uploads.iterdir()) == sorted(ids[-3:])


def test_upload_file_errors(client):
    one_error(client.get("/api/uploads/..%2F..%2Fetc%2Fpasswd"), 404, "no endpoint")
    one_error(client.get("/api/uploads/..passwd.png"), 400, "is not an upload id")
    one_error(client.get("/api/uploads/" + "a" * 32 + ".png"), 404, "is not on this server")


def test_models_lists_the_cached_model(client, recipe):
    body = client.get("/api/models").json()
    tiny = [m for m in body["models"] if m["folder"].startswith("tiny-")]
    assert tiny and tiny[0]["finished"] and tiny[0]["step"] == 30
    assert tiny[0]["recipe"]["dataset"] == recipe["dataset"] and tiny[0]["recipe"]["model"]["T"] == 4


def test_generate_prior_plays_every_step_with_write_windows(client, recipe):
    res = client.post("/api/generate", json={"recipe": recipe, "n": 5})
    assert res.status_code == 200, res.text
    g = res.json()
    assert (g["steps"], g["n"], g["height"], g["width"]) == (4, 5, 28, 28) and g["source"] == "prior"
    assert len(g["frames"]) == 4 and np.asarray(g["windows"]).shape == (4, 5, 3) and g["write_n"] == 5
    strip = iio.imread(base64.b64decode(g["frames"][-1].split(",", 1)[1]))
    assert strip.shape == (28, 28 * 5)


def test_generate_from_an_upload_with_filters_and_download(client, recipe):
    ref = client.post("/api/upload", json={"image": png_url(stroke_image())}).json()["ref"]
    r = {
        **recipe,
        "seeds": [{"use": "file-image", "path": ref}, {"use": "random-pixels"}],
        "filters": [{"use": "glow"}, {"use": "upscale", "size": 56}],
    }
    g = client.post("/api/generate", json={"recipe": r, "n": 3}).json()
    assert g["source"] == "reconstruction" and (g["height"], g["width"]) == (56, 56)
    gif = client.get(f"/api/generations/{g['id']}.gif")
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    assert 'filename="tiny.gif"' in gif.headers["content-disposition"]
    frames = iio.imread(gif.content, index=None)
    assert frames.shape[0] >= 2 and frames.shape[-1] == 3, "steps with red attention boxes"
    sheet = client.get(f"/api/generations/{g['id']}.png")
    assert sheet.status_code == 200 and iio.imread(sheet.content).ndim >= 2
    copied = client.post("/api/recipe.yaml", json={"recipe": r}).json()
    data = yaml.safe_load(copied["yaml"])
    assert data["seeds"][0]["path"].startswith("studio-seed-") and data["filters"] == r["filters"]
    assert copied["files"][0]["url"] == f"/api/uploads/{ref[7:]}.png"
    assert copied["model_key"] == client.post("/api/validate", json={"recipe": recipe}).json()["model_key"]


def test_generate_errors(client, recipe, studio):
    untrained = {**recipe, "train": {**recipe["train"], "iterations": 31}}
    one_error(client.post("/api/generate", json={"recipe": untrained}), 409, "is not trained yet: press Train")
    one_error(client.post("/api/generate", json={"recipe": recipe, "n": "many"}), 400, "n must be a whole number")
    line = one_error(
        client.post("/api/generate", json={"recipe": recipe, "n": 0}), 400, "studio: generate.n: 0 is out of range"
    )
    assert "--" not in line, "the page has no command-line flags"
    one_error(
        client.post("/api/generate", json={"recipe": {**recipe, "filters": ["boom"]}}),
        500,
        "Error: unexpected RuntimeError: the boom filter always fails second line",
    )
    one_error(client.get("/api/generations/" + "f" * 32 + ".gif"), 404, "that generation is gone")
    g = client.post("/api/generate", json={"recipe": recipe, "n": 2}).json()
    one_error(client.get(f"/api/generations/{g['id']}.jpg"), 404, "downloads are .gif or .png")


def test_one_training_job_per_model(client, recipe, studio):
    from qdcore.recipe import parse

    key = str(sources.model_dir(parse(recipe, studio.base_path, studio.registry)))
    studio.jobs[key] = Job(key=key, name="tiny", total=30, state="running", step=3)
    one_error(
        client.post("/api/train", json={"recipe": recipe}),
        409,
        "is already training (step 3 of 30): one training job per model",
    )
    one_error(client.post("/api/generate", json={"recipe": recipe}), 409, "training right now")
    assert client.post("/api/validate", json={"recipe": recipe}).json()["training"] is True
    jobs = client.get("/api/jobs").json()["jobs"]
    assert [j["state"] for j in jobs] == ["running"] and jobs[0]["key"] == key
    assert client.post("/api/jobs/cancel", json={"key": key}).json()["state"] == "running"
    assert studio.jobs[key].stop.is_set(), "the trainer's on_step sees the request and stops"
    studio.jobs[key].state = "cancelled"
    one_error(client.post("/api/jobs/cancel", json={"key": key}), 409, "the job is not running (it is cancelled)")
    one_error(client.post("/api/jobs/cancel", json={"key": "nope"}), 404, "no such training job")
    one_error(
        client.post("/api/train", json={"recipe": {**recipe, "model": {"T": 0}}}), 400, "model.T: 0 is out of range"
    )


def test_a_finished_model_trains_nothing_and_the_job_reports_done(client, recipe):
    res = client.post("/api/train", json={"recipe": recipe})
    assert res.status_code == 202 and res.json()["total"] == 30
    import time

    for _ in range(200):
        job = client.get("/api/jobs").json()["jobs"][0]
        if job["state"] not in ("starting", "running"):
            break
        time.sleep(0.05)
    assert job["state"] == "done" and job["step"] == 30 and job["error"] is None


def test_serve_refuses_a_port_in_use_with_one_line(studio):
    import socket

    from qdcore.errors import InputError
    from qdcore.studio.server import is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(None, host="127.0.0.1", port=port, open_browser=False, plugins=studio.plugins)


def test_the_studio_page_never_waits_for_tensorflow():
    """Listing models and validating must not import TensorFlow (seconds at startup)."""
    import subprocess
    import sys

    code = (
        "import sys; from qdcore.plugin_manager import build; from qdcore.studio.server import Studio, create_app; "
        "from starlette.testclient import TestClient; s = Studio(build(), None); c = TestClient(create_app(s)); "
        "r = c.get('/api/recipe').json()['recipe']; "
        "assert c.post('/api/validate', json={'recipe': r}).status_code == 200; "
        "c.get('/api/models'); c.get('/api/schema'); c.get('/api/plugins'); s.close(); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def test_qd_studio_warns_when_not_on_loopback_and_bad_recipe_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    qd = str(Path(sys.executable).parent / "qd")
    p = subprocess.Popen(
        [qd, "studio", "--host", "0.0.0.0", "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        warning = p.stderr.readline()
        address = p.stdout.readline()
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert warning.startswith("Warning: qd studio is listening on 0.0.0.0, reachable from other machines")
    assert address.startswith("qd studio: http://0.0.0.0:")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {use: quickdraw, category: cat}\nfilters: [sharpn]\n")
    import os

    env = {**os.environ, "QD_LOAD_PLUGINS": "datasets,seeds,filters,writers"}
    r = subprocess.run([qd, "studio", str(bad), "--no-browser"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"Error: {bad}: filters[0].use: Can't find filter 'sharpn'. Did you mean 'sharpen'? "
        "Available: anti-alias, edge-enhance, ink, invert, sharpen, upscale"
    ]


# --- issue 17: the studio reads nothing it was not given; no "unexpected" error from a page ----


def test_model_from_never_opens_a_recipe_the_page_names(client, recipe, tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text('dataset: {use: "SECRET"}\n')
    # A bare name is refused unless a finished model of that name is in the cache (other tests
    # in the same run may train one called zoo-26, which the page may then name), so the name
    # here is one no test trains.
    for source in (
        str(secret),
        "../" * 12 + str(secret)[1:],
        str(secret.with_suffix("")),
        "zoo-26-never-cached",
        7,
        None,
    ):
        body = {**recipe, "model": {**recipe["model"], "from": source}}
        line = one_error(
            client.post("/api/validate", json={"recipe": body}),
            400,
            "studio: model.from: the studio does not open recipes named by the page",
        )
        assert "SECRET" not in line


def test_model_from_may_name_a_model_in_the_cache(client, recipe, studio):
    folder = next(m["folder"] for m in client.get("/api/models").json()["models"] if m["folder"].startswith("tiny-"))
    for source in (folder, "tiny"):
        body = {**recipe, "model": {"from": source}}
        res = client.post("/api/validate", json={"recipe": body})
        assert res.status_code == 200 and res.json()["ok"], res.text
    # The rebuilt recipe lives in the studio's private folder, never beside a page-named path.
    names = [p.name for p in (studio.tmp / "shared").iterdir()]
    assert f"{folder}.yaml" in names and all(n.startswith("tiny-") for n in names), names


def test_model_from_of_the_starting_recipe_is_allowed(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("QD_CACHE_DIR", str(tiny_model.parent.parent / "qd-cache"))
    (tmp_path / "tiny.yaml").write_text(tiny_model.read_text())
    start = tmp_path / "apple.yaml"
    start.write_text("dataset: {use: quickdraw, category: apple, limit: 200}\nmodel: {from: tiny, if_missing: train}\n")
    s = Studio(build(), start, workdir=tmp_path / "studio")
    try:
        with TestClient(create_app(s)) as c:
            given = c.get("/api/recipe").json()["recipe"]
            assert c.post("/api/validate", json={"recipe": given}).status_code == 200
            other = {**given, "model": {"from": "../tiny", "if_missing": "train"}}
            one_error(c.post("/api/validate", json={"recipe": other}), 400, "does not open recipes named by the page")
    finally:
        s.close()


def test_a_cmyk_jpeg_upload_is_accepted(client):
    buf = io.BytesIO()
    Image.fromarray(stroke_image()).convert("CMYK").save(buf, format="JPEG")
    res = client.post(
        "/api/upload", json={"image": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()}
    )
    assert res.status_code == 200, res.text
    preview = iio.imread(base64.b64decode(res.json()["preview"].split(",", 1)[1]))
    assert preview.max() > 200, "the bar survives as ink"


def test_deep_json_and_negative_seeds_are_400(client, recipe):
    deep = b'{"recipe": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    one_error(client.post("/api/validate", content=deep), 400, "the request body: is nested more than 32 levels deep")
    value = 1
    for _ in range(40):
        value = [value]
    nested = {"recipe": {**recipe, "generate": {"n": value}}}
    one_error(client.post("/api/validate", json=nested), 400, "nested more than 32 levels deep")
    one_error(
        client.post("/api/validate", json={"recipe": {**recipe, "seed": -1}}), 400, "studio: seed: -1 is out of range"
    )
    one_error(
        client.post("/api/generate", json={"recipe": {**recipe, "seed": -1}}), 400, "studio: seed: -1 is out of range"
    )
    train = {**recipe, "train": {**recipe["train"], "seed": -1}}
    one_error(client.post("/api/train", json={"recipe": train}), 400, "studio: train.seed: -1 is out of range")


def test_error_lines_carry_no_object_reprs(client):
    line = one_error(
        client.post(
            "/api/upload", json={"image": "data:image/png;base64," + base64.b64encode(b"GIF89a junk").decode()}
        ),
        400,
        "not a readable image",
    )
    assert " at 0x" not in line and "<_io" not in line
    from qdcore.studio.session import one_line

    assert one_line("cannot read <_io.BytesIO object at 0x7f3a2c1b9e50>\nnext") == "cannot read the data next"


# --- the studio draws what `qd run` draws: one pipeline (engine.Run) --------------------------

ZOO = """name: tiny-zoo
dataset: {use: quickdraw, category: [cat, apple, fish], limit: 100}
model: {T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}
train: {iterations: 6, batch_size: 30}
"""
FROM_ZOO = """name: tiny-apple
dataset: {use: quickdraw, category: apple, limit: 100}
model: {from: zoo, if_missing: error, T: 3, enc_size: 16, dec_size: 16, z_size: 4, read_n: 3, write_n: 3}
generate: {n: 4}
output: {use: gif, frames: steps, attention: true, duration: 0.1}
"""
BEST_OF = """
generate: {n: 4, best_of: 3}
recognizer: {use: cnn, categories: [cat, apple, rainbow], per_class: 200, epochs: 1, width: 4, features: 16}
"""


def _frames(gif: bytes) -> np.ndarray:
    return iio.imread(gif, index=None)


def _qd_run(recipe: Path, out: Path, *args: str) -> np.ndarray:
    from typer.testing import CliRunner

    from qdcore.cli import app

    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(out), "--quiet", *args])
    assert res.exit_code == 0, res.output
    return _frames(out.read_bytes())


def _studio_and_qd_run(start: Path, tmp_path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The studio's GIF download of the starting recipe, and `qd run` of its "copy as recipe"
    YAML saved beside the starting recipe (where its `model.from` resolves) as copied.yaml."""
    s = Studio(build(), start, workdir=tmp_path / "studio")
    try:
        with TestClient(create_app(s)) as c:
            given = c.get("/api/recipe").json()["recipe"]
            checked = c.post("/api/validate", json={"recipe": given}).json()
            g = c.post("/api/generate", json={"recipe": given})
            assert g.status_code == 200, g.text
            gif = c.get(f"/api/generations/{g.json()['id']}.gif")
            assert gif.status_code == 200, gif.text
            copied = c.post("/api/recipe.yaml", json={"recipe": given}).json()["yaml"]
    finally:
        s.close()
    (start.parent / "copied.yaml").write_text(copied)
    return _frames(gif.content), _qd_run(start.parent / "copied.yaml", tmp_path / "run.gif"), checked


def test_the_studio_draws_a_model_from_recipe_as_qd_run_does(tmp_path, quickdraw_dir, monkeypatch):
    from qdcore import engine
    from qdcore.recipe import load

    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "zoo.yaml").write_text(ZOO)
    engine.Run(load(tmp_path / "zoo.yaml", build().registry)).model()
    start = tmp_path / "apple.yaml"
    start.write_text(FROM_ZOO)
    assert not sources.model_dir(load(start, build().registry)).exists(), "the recipe has no model of its own"
    studio, ran, checked = _studio_and_qd_run(start, tmp_path)
    assert checked["trained"] is True
    assert studio.shape == ran.shape and studio.shape[0] >= 3  # one frame per step, at least
    assert np.array_equal(studio, ran)
    # The comparison sees a difference in the pictures: another seed's differ.
    assert not np.array_equal(studio, _qd_run(tmp_path / "copied.yaml", tmp_path / "other.gif", "--seed", "2"))
    # A category the shared model does not know falls back to the recipe's own model: not trained.
    start.write_text(
        FROM_ZOO.replace("category: apple", "category: banana").replace("if_missing: error", "if_missing: train")
    )
    s = Studio(build(), start, workdir=tmp_path / "studio2")
    try:
        with TestClient(create_app(s)) as c:
            given = c.get("/api/recipe").json()["recipe"]
            assert c.post("/api/validate", json={"recipe": given}).json()["trained"] is False
            one_error(c.post("/api/generate", json={"recipe": given}), 409, "is not trained yet: press Train")
    finally:
        s.close()


def test_the_studio_honours_best_of_as_qd_run_does(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("QD_CACHE_DIR", str(tiny_model.parent.parent / "qd-cache"))
    start = tmp_path / "tiny.yaml"
    start.write_text(tiny_model.read_text().replace("generate: {n: 16}\n", "") + BEST_OF)
    studio, ran, _ = _studio_and_qd_run(start, tmp_path)
    assert np.array_equal(studio, ran)
    # best_of changed the pictures: the same recipe without it draws others.
    plain = tmp_path / "plain.yaml"
    plain.write_text(start.read_text().replace("best_of: 3", "best_of: 1"))
    assert not np.array_equal(studio, _qd_run(plain, tmp_path / "plain.gif"))


def test_the_session_raises_qd_errors_that_carry_their_status(studio):
    """session.py has no HTTP in it: it raises qd's errors, and each names its status."""
    from qdcore.errors import Conflict, NotFound, QdError, TooLarge
    from qdcore.studio import session
    from qdcore.studio.session import MAX_UPLOAD

    with pytest.raises(NotFound) as missing:
        studio.cancel("no-such-job")
    assert isinstance(missing.value, QdError) and missing.value.status == 404
    with pytest.raises(NotFound):
        studio.upload_path("0" * 32)
    big = "data:image/png;base64," + base64.b64encode(b"x" * (MAX_UPLOAD + 1)).decode()
    with pytest.raises(TooLarge) as large:
        studio.upload(big, (28, 28))
    assert large.value.status == 413 and Conflict.status == 409
    assert "starlette" not in open(session.__file__).read()


# --- the pack qd ships: the studio lists it and its first page draws from it ----------------


def test_the_default_recipe_draws_cats_from_the_installed_pack(tmp_path, tiny_pack, installed_packs, monkeypatch):
    from qdcore.studio.session import DEFAULT_PACK

    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))  # a fresh install: nothing trained
    installed_packs(tiny_pack)  # as plugins/packs/zoo-26.safetensors
    s = Studio(build(), None, workdir=tmp_path / "studio")
    try:
        with TestClient(create_app(s)) as c:
            body = c.get("/api/recipe").json()
            given = body["recipe"]
            assert body["file"] is None and DEFAULT_PACK == "zoo-26"
            assert given == {**DEFAULT_RECIPE, "model": {"from": "zoo-26", "if_missing": "train"}}
            listed = c.get("/api/models").json()
            assert listed["models"] == []
            assert [(p["name"], p["source"], p["plugin"], p["categories"], p["steps"]) for p in listed["packs"]] == [
                ("zoo-26", "plugin", "packs", ["cat", "apple", "fish"], 6)
            ]
            checked = c.post("/api/validate", json={"recipe": given}).json()
            assert (
                checked["trained"] is True
                and checked["draws_from"] == "the model pack 'zoo-26' (pack from plugin 'packs')"
            )
            g = c.post("/api/generate", json={"recipe": given, "n": 4})
            assert g.status_code == 200, g.text
            g = g.json()
            # The pack's T = 3 glimpses, inked at the default recipe's 84 px, drawn from the prior.
            assert (g["steps"], g["n"], g["height"], g["model_step"], g["source"]) == (3, 4, 84, 6, "prior")
            gif = c.get(f"/api/generations/{g['id']}.gif").content
            copied = c.post("/api/recipe.yaml", json={"recipe": {**given, "generate": {"n": 4}}}).json()["yaml"]
    finally:
        s.close()
    assert not (tmp_path / "cache" / "models").exists(), "nothing was trained"
    # "Copy as recipe" names the pack, and `qd run` draws the same cats from it.
    assert yaml.safe_load(copied)["model"] == {"from": "zoo-26", "if_missing": "train"}
    (tmp_path / "copied.yaml").write_text(copied)
    assert np.array_equal(_frames(gif), _qd_run(tmp_path / "copied.yaml", tmp_path / "run.gif"))


def test_the_page_may_name_a_pack_and_the_default_trains_without_one(
    tmp_path, tiny_pack, installed_packs, monkeypatch, studio
):
    installed_packs(tiny_pack)
    s = Studio(build(), studio.base_path, workdir=tmp_path / "studio")  # the tiny recipe, its cache
    try:
        with TestClient(create_app(s)) as c:
            recipe = c.get("/api/recipe").json()["recipe"]
            assert c.get("/api/models").json()["packs"][0]["name"] == "zoo-26"
            cat = {
                **recipe,
                "dataset": {"use": "quickdraw", "category": "cat", "limit": 100},
                "model": {"from": "zoo-26"},
            }
            checked = c.post("/api/validate", json={"recipe": cat}).json()
            assert checked["trained"] and checked["draws_from"].startswith("the model pack 'zoo-26'")
            line = one_error(
                c.post("/api/validate", json={"recipe": {**cat, "model": {"from": "zoo-27"}}}),
                400,
                "does not open recipes named by the page",
            )
            assert "'zoo-26'" in line, "the refusal names the packs the page may use"
    finally:
        s.close()
    # A pack that does not draw cats (or none at all) leaves the default recipe training its own model.
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    from qdcore import packs

    apple_only = tmp_path / "fruit.safetensors"
    pack, weights = packs.read(tiny_pack)
    # (as many categories as the tiny pack's class rows: export refuses a pack import would refuse)
    packs.write(apple_only, {**pack.manifest, "name": "fruit", "categories": ["apple", "fish", "banana"]}, weights)
    installed_packs(apple_only)
    bare = Studio(build(), None, workdir=tmp_path / "bare")
    try:
        assert bare.base_data == DEFAULT_RECIPE
    finally:
        bare.close()


def test_copy_as_recipe_names_the_recipe_of_a_cached_model_qd_run_resolves(tmp_path, quickdraw_dir, monkeypatch):
    """`model.from` naming a cached model by its folder (tiny-zoo-<key>) is copied as the name
    of the recipe that trained it: `qd run` finds that recipe beside the copy, or its pack."""
    from qdcore import engine, packs
    from qdcore.recipe import load

    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tiny-zoo.yaml").write_text(ZOO)
    engine.Run(load(tmp_path / "tiny-zoo.yaml", build().registry)).model()
    start = tmp_path / "apple.yaml"
    start.write_text(FROM_ZOO.replace("from: zoo,", "from: tiny-zoo,"))
    s = Studio(build(), start, workdir=tmp_path / "studio")
    try:
        with TestClient(create_app(s)) as c:
            folder = next(m["folder"] for m in c.get("/api/models").json()["models"])
            given = c.get("/api/recipe").json()["recipe"]
            page = {**given, "model": {**given["model"], "from": folder}}
            g = c.post("/api/generate", json={"recipe": page}).json()
            gif = c.get(f"/api/generations/{g['id']}.gif").content
            copied = c.post("/api/recipe.yaml", json={"recipe": page}).json()["yaml"]
    finally:
        s.close()
    assert folder.startswith("tiny-zoo-") and yaml.safe_load(copied)["model"]["from"] == "tiny-zoo"
    assert f"qd models export {folder} tiny-zoo.safetensors" in copied
    (tmp_path / "copied.yaml").write_text(copied)  # beside tiny-zoo.yaml
    assert np.array_equal(_frames(gif), _qd_run(tmp_path / "copied.yaml", tmp_path / "run.gif"))
    # Elsewhere, with the model moved as the pack the comment says how to make: the same apples.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "copied.yaml").write_text(copied)
    packs.export(folder, tmp_path / "tiny-zoo.safetensors", tmp_path / "cache", {})
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache-b"))
    packs.import_pack(tmp_path / "tiny-zoo.safetensors", tmp_path / "cache-b")
    moved = _qd_run(elsewhere / "copied.yaml", tmp_path / "moved.gif")
    assert moved.shape == _frames(gif).shape and np.abs(moved.astype(float) - _frames(gif)).mean() < 1
