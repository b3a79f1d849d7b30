"""`qd studio` with no recipe, on a machine that has a model pack and nothing trained: the page
lists the pack and its first Generate draws cats from it at once (headless system Chromium,
driven by Playwright, as tests/test_studio_browser.py does; they FAIL when it is missing).

The pack is the tests' tiny zoo-26 (conftest.tiny_pack), imported into the server's fresh
cache: the user's cache comes first, so this holds whether or not the repository ships
plugins/packs/zoo-26.safetensors (the same lookup serves an installed pack: test_studio_api.py).
"""

from __future__ import annotations

import os
import time

import pytest

from test_studio_browser import browser, shots, studio_process  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def pack_server(tiny_pack, tmp_path_factory):
    from qdcore import packs

    cache = tmp_path_factory.mktemp("pack-studio") / "cache"
    packs.import_pack(tiny_pack, cache)
    env = {**os.environ, "QD_CACHE_DIR": str(cache)}
    env.pop("QD_LOAD_PLUGINS", None)
    yield from studio_process([], env)


def test_the_first_page_lists_the_pack_and_draws_cats_from_it(browser, pack_server, shots):  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(pack_server["url"])
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        assert page.locator("#name").input_value() == "studio-cat"
        listed = page.locator("#models li[data-pack=zoo-26]")
        pack = listed.first  # the imported one; then the repository's own zoo-26 when it ships one
        assert (
            "pack imported into the cache" in pack.inner_text()
            and "3 categories: cat, apple, fish" in pack.inner_text()
        )
        if listed.count() > 1:
            assert "not used: the imported pack of this name comes first" in listed.nth(1).inner_text()
            assert listed.nth(1).locator("button").count() == 0
        page.wait_for_function("document.querySelector('#model-state').innerText.includes('draws from')")
        assert (
            page.locator("#model-state").inner_text()
            == "\"studio-cat\" draws from the model pack 'zoo-26' (pack imported into the cache): nothing to train."
        )
        clicked = time.perf_counter()
        page.click("#generate")
        page.wait_for_selector("#dl-gif[aria-disabled=false]", timeout=120_000)
        first = time.perf_counter() - clicked
        print(
            f"\nstudio start to first drawing from the pack: {time.perf_counter() - pack_server['started']:.1f} s "
            f"(the generation: {first:.1f} s; page says {page.locator('#gen-time').inner_text()})"
        )
        assert page.locator("#player canvas").count() == 16
        assert int(page.locator("#scrub").get_attribute("max")) + 1 == 3  # the tiny pack's T = 3
        page.screenshot(path=str(shots / "studio-pack.png"), full_page=True)
        assert not (pack_server["cache"] / "models").exists(), "nothing was trained"
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
