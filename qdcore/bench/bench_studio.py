"""Figures for docs/studio.md: `python -m qdcore.bench.bench_studio RECIPE [--runs 3]`.

Starts `qd studio RECIPE` in a subprocess, drives the page in the system Chromium (needs the
test extra: playwright) and prints JSON: seconds from the command to a usable page, the
page's weight, and the latency of Generate with 16 prior samples (server side and as the
browser sees it, after a first call that loads the model). The recipe's model must be
trained (qd train RECIPE) in QD_CACHE_DIR.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--shots", type=Path, help="also save a screenshot of a drawn seed generated (docs/img)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    qd = str(Path(sys.executable).parent / "qd")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [qd, "studio", str(args.recipe), "--no-browser", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = re.search(r"http://\S+/", proc.stdout.readline()).group(0)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            figures = _measure(page, url, start, args.runs)
            if args.shots:
                screenshot(page, args.shots)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(figures))


def _measure(page, url: str, start: float, runs: int) -> dict:
    """Time to a usable page, its weight, and the median of `runs` generations of 16."""
    sizes: dict[str, int] = {}

    def count(response):
        try:
            sizes[response.url] = len(response.body())
        except Exception:  # noqa: BLE001 - redirects and aborted responses have no body
            pass

    page.on("response", count)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    usable = time.perf_counter() - start
    static = sum(v for k, v in sizes.items() if "/api/" not in k)
    api = sum(v for k, v in sizes.items() if "/api/" in k)
    page.click("#source-tabs button[data-source=prior]")
    page.fill("#n", "16")
    page.dispatch_event("#n", "change")
    server, browser_ms = [], []
    for i in range(runs + 1):
        page.evaluate("document.querySelector('#dl-gif').setAttribute('aria-disabled', 'true')")
        page.click("#generate")
        page.wait_for_selector("#dl-gif[aria-disabled=false]", timeout=300_000)
        if i:  # the first call loads the model
            server.append(float(page.locator("#player").get_attribute("data-server-ms")))
            browser_ms.append(float(page.locator("#player").get_attribute("data-ms")))
    return {
        "start_to_usable_page_s": round(usable, 2),
        "page_weight_kB": {"html_js_css": round(static / 1024, 1), "api_json_at_load": round(api / 1024, 1)},
        "generate_16_ms": {
            "server_median": statistics.median(server),
            "browser_median": statistics.median(browser_ms),
            "runs": runs,
        },
    }


def screenshot(page, folder: Path) -> None:
    """A doodle drawn with the mouse, two filters, Generate, paused mid-drawing."""
    import math

    page.click("#source-tabs button[data-source=draw]")
    box = page.locator("#pad").bounding_box()

    def stroke(points):
        page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
        page.mouse.up()

    stroke([(140 + 80 * math.cos(a / 20 * math.tau), 160 + 70 * math.sin(a / 20 * math.tau)) for a in range(21)])
    stroke([(75, 120), (80, 45), (115, 95)])
    stroke([(165, 95), (200, 45), (205, 120)])
    stroke([(110, 150), (112, 152)])
    stroke([(170, 150), (172, 152)])
    page.select_option("#add-filter", "sharpen")
    page.select_option("#add-filter", "upscale")
    size = page.locator("#filters .step[data-use=upscale] input[name=size]")
    size.fill("112")
    size.dispatch_event("change")
    page.evaluate("document.querySelector('#dl-gif').setAttribute('aria-disabled', 'true')")
    page.click("#generate")
    page.wait_for_selector("#dl-gif[aria-disabled=false]", timeout=300_000)
    page.click("#play")
    steps = int(page.locator("#scrub").get_attribute("max")) + 1
    page.evaluate(
        f"(() => {{ const s = document.querySelector('#scrub'); s.value = {steps // 2}; "
        "s.dispatchEvent(new Event('input')); })()"
    )
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "studio.png"))


if __name__ == "__main__":
    main()
