"""The studio's "Finish my drawing" and "Morph" in a real browser (headless system Chromium,
driven by Playwright, as tests/test_studio_browser.py does; they FAIL when it is missing)."""

from __future__ import annotations

import imageio.v3 as iio

from test_studio_browser import browser, draw_stroke, page, run_copied, server, shots  # noqa: F401 - fixtures

BLUE = (
    "(() => { const c = document.querySelector('#player canvas'); "
    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] - d[i] > 40) n++; return n; })()"
)


def test_finish_my_drawing_plays_step_by_step_downloads_and_copies(page, server, shots, tmp_path):  # noqa: F811
    page.click("#source-tabs button[data-source=draw]")
    # A blank canvas has nothing to finish: the page shows the mode's one line.
    page.click("#finish")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert "partial drawing 0 is blank" in error.inner_text()
    # A recipe check that passes after the failure does not hide it (it used to, under load).
    with page.expect_response("**/api/validate"):
        page.fill("#n", "3")
        page.locator("#n").dispatch_event("change")
    page.evaluate("new Promise((ok) => setTimeout(ok, 0))")  # the answer's handler has run
    assert error.is_visible() and "partial drawing 0 is blank" in error.inner_text()

    draw_stroke(page, [(60, 120), (140, 50), (220, 120)])  # the top of something
    page.fill("#n", "4")
    page.click("#finish")
    page.wait_for_selector("#dl-gif[aria-disabled=false]", timeout=60_000)
    error.wait_for(state="hidden")
    assert page.locator("#player canvas").count() == 4  # four completions of the one drawing
    assert "completions of the seed" in page.locator("#status").inner_text()
    # playable step by step: the person's drawing alone first (no blue), then the model's ink in blue
    page.click("#play")  # pause, then scrub
    steps = int(page.locator("#scrub").get_attribute("max")) + 1
    assert steps == 5  # the tiny model's T = 4, after the partial drawing
    page.locator("#scrub").fill("0")
    assert page.locator("#step-label").inner_text() == "step 1 / 5"
    assert page.evaluate(BLUE) == 0
    page.locator("#scrub").fill(str(steps - 1))
    assert page.evaluate(BLUE) > 0
    page.screenshot(path=str(shots / "studio-finish.png"), full_page=True)

    with page.expect_download() as info:
        page.click("#dl-gif")
    gif = tmp_path / "finish.gif"
    info.value.save_as(gif)
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 5 and frames.shape[-1] == 3
    assert ((frames[-1][..., 2].astype(int) - frames[-1][..., 0]) > 40).any()

    page.click("#copy-yaml")
    page.wait_for_selector("#yaml:not([hidden])")
    text = page.locator("#yaml").input_value()
    assert "use: complete" in text and "tries: 4" in text
    assert run_copied(text, server, tmp_path) == gif.read_bytes()  # `qd run` of the copy: the same GIF


def test_morph_between_dataset_seeds_and_an_unknown_category(page):  # noqa: F811
    page.click("#source-tabs button[data-source=dataset]")
    page.fill("#n", "2")
    page.click("#morph")
    page.wait_for_selector("#dl-gif[aria-disabled=false]", timeout=60_000)
    assert page.locator("#player canvas").count() == 2
    assert int(page.locator("#scrub").get_attribute("max")) + 1 == 30  # 16 frames there, 14 back
    # The tiny model knows one category: naming one is refused while the recipe is checked
    # (Generator.check, before anything is drawn), one line shown on the page.
    page.fill("#morph-start", "cat")
    page.click("#morph")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert "learns one category, so it knows none by name" in error.inner_text()
