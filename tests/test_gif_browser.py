"""A browser plays qd's GIFs as Pillow reads them: Chromium's own GIF decoder (WebCodecs'
ImageDecoder, the one an <img> uses) gives every frame, composed over the ones before it
(the unchanged pixels are transparent), each frame's delay and the loop. Needs the system
Chromium, as the studio's browser tests do: they FAIL, never skip, without it."""

from __future__ import annotations

import base64

import imageio.v3 as iio
import numpy as np
import pytest

from test_studio_browser import browser  # noqa: F401 - fixture
from test_writers import assert_near, ctx, doodles

from qdplugins.writers import Gif

# ImageDecoder exists only in a secure context: the page and the GIF come from an https
# origin that Playwright answers itself, so nothing listens on a port.
ORIGIN = "https://qd.test"

DECODE = """async () => {
  const data = await (await fetch('/a.gif')).arrayBuffer();
  const decoder = new ImageDecoder({data, type: 'image/gif'});
  await decoder.tracks.ready;
  const track = decoder.tracks.selectedTrack;
  const frames = [];
  for (let i = 0; i < track.frameCount; i++) {
    const {image} = await decoder.decode({frameIndex: i});
    const canvas = new OffscreenCanvas(image.displayWidth, image.displayHeight);
    const g = canvas.getContext('2d');
    g.drawImage(image, 0, 0);
    const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
    let s = '';
    for (let k = 0; k < px.length; k += 8192) s += String.fromCharCode.apply(null, px.subarray(k, k + 8192));
    frames.push({width: canvas.width, height: canvas.height, ms: image.duration / 1000, rgba: btoa(s)});
    image.close();
  }
  return {frames, repetitions: String(track.repetitionCount)};
}"""


def decoded_by_chromium(browser, gif: bytes):  # noqa: F811 - the fixture
    page = browser.new_page()
    try:
        page.route(
            f"{ORIGIN}/**",
            lambda route: route.fulfill(
                status=200,
                content_type="image/gif" if route.request.url.endswith(".gif") else "text/html",
                body=gif if route.request.url.endswith(".gif") else "<!doctype html><title>gif</title>",
            ),
        )
        page.goto(f"{ORIGIN}/")
        got = page.evaluate(DECODE)
    finally:
        page.close()
    frames = np.stack(
        [
            np.frombuffer(base64.b64decode(f["rgba"]), np.uint8).reshape(f["height"], f["width"], 4)
            for f in got["frames"]
        ]
    )
    return frames, [f["ms"] for f in got["frames"]], got["repetitions"]


@pytest.mark.parametrize(
    "gif",
    [Gif(frames="steps", attention=True, duration=0.2, hold_last=1.0), Gif(frames="samples", loop=3)],
    ids=["attention-steps", "samples"],
)
def test_chromium_plays_every_frame_as_written(gif, browser, tmp_path):  # noqa: F811 - the fixture
    d = doodles()
    out = gif.write(d, tmp_path / "a.gif", ctx())
    frames, ms, repetitions = decoded_by_chromium(browser, out.read_bytes())
    assert (frames[..., 3] == 255).all()  # opaque: no transparent pixel shows through to the page
    written = np.stack(gif.images(d))
    assert_near(frames[..., :3], written if written.ndim == 4 else np.repeat(written[..., None], 3, axis=-1))
    assert np.array_equal(frames[..., :3], iio.imread(out, index=None))  # what Pillow reads, exactly
    assert ms == gif.durations_ms(len(frames))
    assert repetitions == ("Infinity" if gif.loop == 0 else str(gif.loop))
