"""The studio in a real browser: `qd studio` in a subprocess, the page driven in headless
Chromium by Playwright. Playwright cannot download its own browser here, so it launches the
system Chromium (Debian package `chromium`) by path; the README's test command installs it.
These tests FAIL, never skip, when the browser is missing.

Screenshots go to $QD_STUDIO_SHOTS when set (docs/studio.md's pictures are made that way),
else to the test's temporary folder.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import write_distribution

QD = str(Path(sys.executable).parent / "qd")

GLOW = textwrap.dedent('''
    from typing import Annotated, Literal
    from qdcore import Filter, Range, hookimpl

    class Glow(Filter):
        """A soft halo around the ink."""
        def __init__(self, radius: Annotated[float, Range(0.5, 8)] = 2.0, mode: Literal["soft", "hard"] = "soft"):
            self.radius = radius
        def apply(self, frames, ctx):
            return frames

    @hookimpl
    def qd_register_filters(register):
        register("glow", Glow, description="a soft halo around the ink (installed by the browser test)")
''')


def chromium_path() -> str:
    path = os.environ.get("QD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "the studio's browser tests need the system Chromium: apt-get install chromium "
            "(the README's test command does this), or set QD_CHROMIUM to its path"
        )
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("QD_STUDIO_SHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """`qd studio tiny.yaml` with a third-party plugin installed just for this test."""
    site = write_distribution(
        tmp_path_factory.mktemp("site"), "qdtest-glow", {"qdtest_glow": GLOW}, {"glow": "qdtest_glow"}
    )
    env = {
        **os.environ,
        "QD_CACHE_DIR": str(tiny_model.parent.parent / "qd-cache"),
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        # The page's long training run would first time every step plan in fresh processes
        # (half a minute; tests/test_plan.py covers that): the page is the subject here.
        "QD_STEP_PLAN": "float32-xla",
    }
    env.pop("QD_LOAD_PLUGINS", None)
    yield from studio_process([str(tiny_model)], env)


def studio_process(args: list, env: dict):
    """`qd studio ARGS` on a free port until the module's tests are done: yields its url,
    process, start time and cache (QD_CACHE_DIR in `env`)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [QD, "studio", *args, "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    if not m:
        proc.kill()
        pytest.fail(f"qd studio did not start: {line!r} {proc.stderr.read()}")
    yield {"url": m.group(1), "proc": proc, "started": start, "cache": Path(env["QD_CACHE_DIR"])}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server["url"])
    pg.wait_for_selector("body[data-ready='1']", timeout=60_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def draw_stroke(pg, points):
    box = pg.locator("#pad").bounding_box()
    x0, y0 = box["x"], box["y"]
    pg.mouse.move(x0 + points[0][0], y0 + points[0][1])
    pg.mouse.down()
    for x, y in points[1:]:
        pg.mouse.move(x0 + x, y0 + y, steps=8)
    pg.mouse.up()


def test_page_usable_and_shows_a_plugin_installed_in_the_test(page, server, shots):
    ready = time.perf_counter() - server["started"]
    print(
        f"\nqd studio start to usable page: {ready:.1f} s "
        f"(page's own load {page.locator('body').get_attribute('data-ready-ms')} ms)"
    )
    glow = page.locator("#plugins [data-kind=filters] li[data-name=glow]")
    assert "installed by the browser test" in glow.inner_text()
    assert page.locator("#add-filter option[value=glow]").count() == 1
    assert page.locator("#model-state").inner_text().startswith('The model for "tiny" is trained')


def test_draw_choose_filter_generate_play_download(page, server, shots, tmp_path):
    page.click("#source-tabs button[data-source=draw]")
    draw_stroke(page, [(70, 60), (140, 220), (210, 60)])
    draw_stroke(page, [(90, 140), (190, 140)])
    assert page.locator("#pad").get_attribute("data-strokes") == "2"
    page.click("#undo")
    assert page.locator("#pad").get_attribute("data-strokes") == "1"
    draw_stroke(page, [(90, 140), (190, 140)])
    # choose a filter, give it a bad value (the recipe's one-line error), then a good one
    page.select_option("#add-filter", "sharpen")
    passes = page.locator("#filters .step[data-use=sharpen] input[name=passes]")
    passes.fill("20")
    passes.dispatch_event("change")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert error.inner_text() == "Error: studio: filters[0].passes: 20 is out of range: must be between 1 and 10"
    assert "invalid" in passes.get_attribute("class")
    passes.fill("2")
    passes.dispatch_event("change")
    error.wait_for(state="hidden")
    page.select_option("#add-filter", "upscale")
    size = page.locator("#filters .step[data-use=upscale] input[name=size]")
    size.fill("112")
    size.dispatch_event("change")
    page.fill("#n", "16")
    page.click("#generate")
    page.wait_for_selector("#dl-gif[aria-disabled=false]", timeout=60_000)
    assert page.locator("#player canvas").count() == 16
    print(f"\ngenerate 16 samples: {page.locator('#gen-time').inner_text()}")
    # the animation plays: the step counter moves and the pictures differ between steps
    seen, pictures = set(), {}
    deadline = time.time() + 10
    while time.time() < deadline and len(seen) < 4:
        step = int(page.locator("#player").get_attribute("data-step"))
        seen.add(step)
        pictures.setdefault(step, page.evaluate("document.querySelector('#player canvas').toDataURL()"))
        page.wait_for_timeout(60)
    assert seen == {0, 1, 2, 3}, seen
    assert len(set(pictures.values())) > 1, "the frames change from step to step"
    page.screenshot(path=str(shots / "studio-generate.png"), full_page=True)
    # download the GIF through the registered gif writer and read it back
    with page.expect_download() as info:
        page.click("#dl-gif")
    gif = tmp_path / "studio.gif"
    info.value.save_as(gif)
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] >= 2 and frames.shape[-1] == 3 and frames.shape[1] >= 112
    assert not np.array_equal(frames[0], frames[-1])
    with page.expect_download() as info:
        page.click("#dl-png")
    info.value.save_as(tmp_path / "sheet.png")
    assert iio.imread(tmp_path / "sheet.png").shape[0] >= 112
    # copy as recipe: the YAML plus the seed image reproduce the GIF with `qd run`, byte for byte
    page.click("#copy-yaml")
    page.wait_for_selector("#yaml:not([hidden])")
    text = page.locator("#yaml").input_value()
    assert "use: sharpen" in text and "passes: 2" in text and "use: file-image" in text
    assert run_copied(text, server, tmp_path) == gif.read_bytes()


def run_copied(text: str, server, folder: Path) -> bytes:
    """`qd run` the page's copied recipe, with the seed image it says to save beside it: the GIF."""
    seed = re.search(r"# Save (/api/uploads/\w+\.png) beside this file as (studio-seed-\w+\.png)", text)
    with urllib.request.urlopen(server["url"].rstrip("/") + seed.group(1)) as r:
        (folder / seed.group(2)).write_bytes(r.read())
    (folder / "copied.yaml").write_text(text)
    env = {**os.environ, "QD_CACHE_DIR": str(server["cache"])}
    run = subprocess.run(
        [QD, "run", "copied.yaml", "--out", "again.gif", "-q"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return (folder / "again.gif").read_bytes()


def test_upload_an_image_as_seed(page, tmp_path):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(img).ellipse([60, 30, 240, 170], outline="black", width=12)
    img.save(tmp_path / "circle.png")
    page.click("#source-tabs button[data-source=upload]")
    page.set_input_files("#file", str(tmp_path / "circle.png"))
    page.wait_for_selector("#upload-preview:not([hidden])")
    preview = page.locator("#upload-preview").get_attribute("src")
    seed = iio.imread(base64.b64decode(preview.split(",", 1)[1]))
    assert seed.shape == (28, 28) and seed[0, 0] < 30 and seed.max() == 255, (
        "file-image rules: inverted, padded, normalised"
    )
    page.click("#generate")
    page.wait_for_selector("#dl-gif[aria-disabled=false]", timeout=60_000)
    assert "reconstructions" in page.locator("#status").inner_text()


def test_train_progress_survives_reload_and_cancel_keeps_a_checkpoint(page, server, shots, browser):
    page.click("#source-tabs button[data-source=prior]")
    page.locator("details:has(#train-form) summary").click()
    iterations = page.locator("#train-form input[name=iterations]")
    iterations.fill("100000")
    iterations.dispatch_event("change")
    page.wait_for_function("document.querySelector('#model-state').innerText.includes('not trained yet')")
    page.click("#train")
    job = page.locator("#jobs .job")
    page.wait_for_function("Number(document.querySelector('#jobs .job')?.dataset.step) > 2", timeout=180_000)
    figures = job.locator(".figures").inner_text()
    assert re.search(r"L\^x \d+\.\d\d +L\^z \d+\.\d\d .* steps/s .* ETA \d", figures), figures
    page.screenshot(path=str(shots / "studio-train.png"))
    # a reload finds the job still running, with its progress
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("#jobs .job[data-state=running]")
    assert page.locator("#train").is_disabled()
    page.click("#jobs .job[data-state=running] .cancel")
    page.wait_for_selector("#jobs .job[data-state=cancelled]", timeout=60_000)
    text = page.locator("#jobs .job").inner_text()
    step = int(re.search(r"training stopped at step (\d+)", text).group(1))
    assert step > 2 and "the checkpoint is kept" in text
    models = list((server["cache"] / "models").glob("tiny-*/checkpoints"))
    ckpts = [c for c in models if list(c.glob(f"ckpt-{step}.index"))]
    assert ckpts, f"no checkpoint at step {step} in {models}"
    assert not page.locator("#train").is_disabled()
