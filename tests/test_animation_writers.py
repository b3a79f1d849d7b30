"""The GIF's animation as WebP and MP4: same frames, same timing, read back; and a
completion's steps in two inks (the person's, then the model's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qdcore import Context, Drawing, InputError
from qdcore.ink import MODEL_INK, two_inks
from qdplugins.writers import Gif, Mp4, PngSheet, WebP
from test_writers import doodles

T, N, H, W = 4, 2, 28, 28


def ctx() -> Context:
    return Context((H, W), np.random.default_rng(0), Path("."), None, Path("/nonexistent-cache"))


def drawing(h=H, w=W) -> Drawing:
    canvases = np.random.default_rng(7).random((T, N, h, w)).astype(np.float32)
    return Drawing(canvases, None, write_n=5, source="prior")


def test_webp_has_the_gifs_frames_and_timing(tmp_path):
    d = drawing()
    gif = Gif(frames="steps", duration=0.2, hold_last=1.5, columns=2)
    webp = WebP(frames="steps", duration=0.2, hold_last=1.5, columns=2)
    webp.write(d, tmp_path / "a.webp", ctx())
    im = Image.open(tmp_path / "a.webp")
    assert im.format == "WEBP" and im.n_frames == T and im.is_animated
    durations = []
    for i, expected in enumerate(gif.images(d)):
        im.seek(i)
        im.load()  # Pillow reads a WebP frame's duration when it decodes the frame
        durations.append(im.info["duration"])
        np.testing.assert_array_equal(np.asarray(im.convert("L")), expected)  # lossless
    assert durations == gif.durations_ms(T) == [200, 200, 200, 1500]


def test_mp4_shows_each_frame_for_its_delay(tmp_path):
    import imageio_ffmpeg

    d = drawing(h=27, w=27)  # odd sides: padded to even for H.264
    mp4 = Mp4(frames="steps", duration=0.2, hold_last=0.6, columns=2)
    assert mp4.ticks(T) == (5.0, [1, 1, 1, 3])
    mp4.write(d, tmp_path / "a.mp4", ctx())
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "a.mp4"))
    meta = reader.__next__()
    frames = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in reader]
    assert meta["size"] == (2 * 27 + 2, 27 + 1) and meta["fps"] == 5.0  # the odd height padded
    assert len(frames) == 6  # 1 + 1 + 1 + 3 ticks
    expected = Gif(frames="steps", columns=2).images(d)
    for shown, want in zip(frames, [0, 1, 2, 3, 3, 3]):
        # H.264 is lossy: each frame is near its GIF frame, and nearer it than to the others.
        errors = [np.abs(shown[:27, :56, 0].astype(int) - e.astype(int)).mean() for e in expected]
        assert int(np.argmin(errors)) == want and errors[want] < 20


@pytest.mark.parametrize("frames", ["steps", "samples"])
def test_an_mp4_of_grey_drawings_stays_as_close_as_the_gif(frames, tmp_path):
    """The MP4's quality (crf) is chosen to keep grey drawings within the GIF's bound: 2/255
    off on average."""
    import imageio_ffmpeg

    d = doodles()
    mp4 = Mp4(frames=frames)
    mp4.write(d, tmp_path / "d.mp4", ctx())
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "d.mp4"))
    width, height = reader.__next__()["size"]
    shown = np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])
    expected = np.stack(mp4.images(d))
    assert shown.shape == expected.shape + (3,)
    assert np.abs(shown.astype(int) - expected[..., None]).mean() <= 2


def test_mp4_without_its_encoder_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r'needs imageio-ffmpeg, which is not installed: pip install "qd\[mp4\]"'):
        Mp4()


def test_two_inks_keep_the_persons_ink_and_colour_the_models():
    given = np.zeros((1, 4, 4), np.float32)
    given[0, 0] = 1.0  # the person's stroke: the top row
    canvas = given.copy()
    canvas[0, 3] = 1.0  # the model adds the bottom row
    rgb = two_inks(given, canvas)
    np.testing.assert_allclose(rgb[0, 0], 1.0)  # the person's ink: as it was (white on black)
    np.testing.assert_allclose(rgb[0, 3], np.broadcast_to(MODEL_INK, (4, 3)), atol=1e-6)
    np.testing.assert_allclose(rgb[0, 1:3], 0.0)
    inverted = two_inks(1 - given, 1 - canvas)  # dark ink on a white page: the same story
    np.testing.assert_allclose(inverted[0, 0], 0.0)
    np.testing.assert_allclose(inverted[0, 3], np.broadcast_to(MODEL_INK, (4, 3)), atol=1e-6)


def test_a_completions_steps_start_with_the_persons_drawing():
    d = drawing()
    given = np.zeros((N, H, W), np.float32)
    given[:, 5:10, 5:10] = 1.0
    completion = Drawing(d.canvases, None, 5, "completion", given=given)
    frames = Gif(frames="steps", columns=2).images(completion)
    assert len(frames) == T + 1 and frames[0].shape == (H, 2 * W + 2, 3)
    np.testing.assert_array_equal(frames[0][5:10, 5:10], 255)  # the partial drawing, alone
    assert frames[0][20:, :W].max() == 0
    sheet = PngSheet(frames="steps").image(completion)
    assert sheet.shape == (2 * H + 2, (T + 1) * W + T * 2, 3)
