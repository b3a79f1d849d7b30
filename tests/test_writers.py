"""Writers: GIFs and PNG sheets read back (frames, per-frame durations, sizes, pixels)."""

from __future__ import annotations

import io
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from qdcore import Context, Drawing, RecipeError
from qdcore.params import check
from qdplugins.writers import BOX_COLOUR, GIF_STEP, Gif, PngSheet, attention_box, gif_bytes

T, N, H, W = 4, 3, 28, 28
# The GIF's one palette moves no channel further than half a level (plugins/writers.py).
OFF = GIF_STEP // 2


def ctx() -> Context:
    return Context((H, W), np.random.default_rng(0), Path("."), None, Path("/nonexistent-cache"))


def drawing(t=T, n=N, h=H, w=W, windows=True, model_shape=(28, 28)) -> Drawing:
    # Every (step, sample) canvas is distinct, so no two consecutive GIF frames are equal.
    rng = np.random.default_rng(7)
    canvases = rng.random((t, n, h, w)).astype(np.float32)
    win = None
    if windows:
        win = np.zeros((t, n, 3), np.float32)
        win[..., 0], win[..., 1], win[..., 2] = 13.5, 13.5, 1.0
    return Drawing(canvases, win, write_n=5, source="prior", model_shape=model_shape)


def read_gif(path: Path):
    frames = iio.imread(path, index=None, mode="L")
    durations = [iio.immeta(path, index=i)["duration"] for i in range(len(frames))]
    return frames, durations


def assert_near(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= OFF


def test_writers_validate_with_their_defaults():
    for cls in (Gif, PngSheet):
        cls(**check(cls, {}, "output"))
    assert check(Gif, {"duration": 0.2, "loop": 3}, "output")["hold_last"] is None
    for bad in ({"frames": "both"}, {"duration": 0}, {"loop": -1}):
        with pytest.raises(RecipeError):
            check(Gif, bad, "output")


def test_gif_of_samples(tmp_path):
    d = drawing()
    out = Gif(duration=0.12).write(d, tmp_path / "s.gif", ctx())
    frames, durations = read_gif(out)
    assert frames.shape == (N, H, W)
    assert durations == [120] * N
    assert_near(frames, np.round(d.canvases[-1] * 255).astype(np.uint8))
    assert iio.immeta(out, index=0).get("loop") == 0


def test_gif_of_steps_as_a_grid_with_hold_and_loop(tmp_path):
    d = drawing(n=5)
    out = Gif(frames="steps", duration=0.05, hold_last=1.5, loop=2, spacing=3).write(d, tmp_path / "g.gif", ctx())
    frames, durations = read_gif(out)
    # 5 samples -> 3 columns, 2 rows, 3 px between cells.
    assert frames.shape == (T, 2 * H + 3, 3 * W + 6)
    assert durations == [50] * (T - 1) + [1500]
    assert iio.immeta(out, index=0).get("loop") == 2
    step2 = np.round(d.canvases[2] * 255).astype(np.uint8)
    assert_near(frames[2, :H, W + 3 : 2 * W + 3], step2[1])  # row 0, column 1 = sample 1
    assert_near(frames[2, H + 3 :, W + 3 : 2 * W + 3], step2[4])
    assert (frames[2, H : H + 3] == 128).all()  # the gap's shade, exactly: it covers enough pixels to be kept


def test_gif_of_one_sample_and_columns(tmp_path):
    d = drawing()
    frames, _ = read_gif(Gif(frames="steps", sample=2).write(d, tmp_path / "one.gif", ctx()))
    assert frames.shape == (T, H, W)
    assert_near(frames[-1], np.round(d.canvases[-1, 2] * 255).astype(np.uint8))
    frames, _ = read_gif(Gif(frames="steps", columns=1, spacing=0).write(d, tmp_path / "col.gif", ctx()))
    assert frames.shape == (T, N * H, W)


def test_equal_consecutive_frames_merge_keeping_the_total_time(tmp_path):
    """Pillow folds a frame equal to the previous one into it, adding the delays: the
    animation plays the same, the file holds fewer frames."""
    d = drawing()
    d.canvases[2] = d.canvases[1]
    frames, durations = read_gif(Gif(frames="steps", duration=0.1, hold_last=0.5).write(d, tmp_path / "m.gif", ctx()))
    assert len(frames) == T - 1 and durations == [100, 200, 500]


def test_single_frame_gif(tmp_path):
    d = drawing(t=1, n=1)
    frames, durations = read_gif(Gif(frames="steps", hold_last=2.0).write(d, tmp_path / "1.gif", ctx()))
    assert frames.shape == (1, H, W) and durations == [2000]
    frames, durations = read_gif(Gif().write(d, tmp_path / "2.gif", ctx()))
    assert frames.shape == (1, H, W) and durations == [120]


def test_duration_is_rounded_to_what_a_gif_can_store(tmp_path):
    _, durations = read_gif(Gif(duration=0.125, hold_last=0.333).write(drawing(), tmp_path / "r.gif", ctx()))
    assert durations == [130, 130, 330]


def test_attention_box_geometry():
    # gx = gy = 13.5, delta 1, N 5: the window spans 11 .. 16 in model pixel centres.
    assert attention_box(np.array([13.5, 13.5, 1.0]), 5, (28, 28), (28, 28)) == pytest.approx((11, 11, 16, 16))
    # Four times bigger frames: pixel edges scale, centres are edge - 0.5.
    x0, y0, x1, y1 = attention_box(np.array([13.5, 6.0, 2.0]), 5, (28, 28), (112, 56))
    assert (x0, x1) == pytest.approx(((13.5 - 5 + 0.5) * 2 - 0.5, (13.5 + 5 + 0.5) * 2 - 0.5))
    assert (y0, y1) == pytest.approx(((6 - 5 + 0.5) * 4 - 0.5, (6 + 5 + 0.5) * 4 - 0.5))


def test_gif_with_attention_draws_red_boxes_on_upscaled_frames(tmp_path):
    d = drawing(n=2, h=112, w=112)  # frames upscaled 4x by a filter; windows still in model pixels
    d.canvases *= 0.3  # dim grey noise: distinct frames (Pillow merges equal ones), boxes stand out
    d.windows[1, 1] = (5.0, 20.0, 1.0)
    out = Gif(frames="steps", attention=True, spacing=0).write(d, tmp_path / "a.gif", ctx())
    rgb = iio.imread(out, index=None, mode="RGB")
    assert rgb.shape == (T, 112, 224, 3)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 100)
    assert red.any(axis=(1, 2)).all()
    # Step 1, sample 1 (right cell): box left edge at model x = 5 - 2.5 -> frame 4 * 3.0 - 0.5.
    ys, xs = np.nonzero(red[1, :, 112:])
    assert abs(xs.min() - 11.5) <= 1 and abs(ys.min() - ((20 - 2.5 + 0.5) * 4 - 0.5)) <= 1
    assert not red[1, :, :112][:40].any()  # sample 0's box is centred, away from the top rows


def test_attention_needs_steps_and_a_model_with_attention(tmp_path):
    with pytest.raises(RecipeError, match="frames: steps"):
        Gif(attention=True)
    with pytest.raises(RecipeError, match="frames: steps"):
        PngSheet(attention=True)
    target = tmp_path / "keep.gif"
    target.write_bytes(b"old")
    with pytest.raises(RecipeError, match="no write attention"):
        Gif(frames="steps", attention=True).write(drawing(windows=False), target, ctx())
    assert target.read_bytes() == b"old"  # atomic: a failed write leaves the old file alone
    with pytest.raises(RecipeError, match="sample: 7"):
        Gif(frames="steps", sample=7).write(drawing(), tmp_path / "x.gif", ctx())
    assert not (tmp_path / "x.gif").exists()
    with pytest.raises(RecipeError, match="frames: steps"):
        Gif(sample=1)


def test_gif_is_byte_for_byte_reproducible(tmp_path):
    a = Gif(frames="steps", attention=True).write(drawing(), tmp_path / "a.gif", ctx())
    b = Gif(frames="steps", attention=True).write(drawing(), tmp_path / "b.gif", ctx())
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "b.gif"]  # no temporaries left


def test_png_sheet_of_samples(tmp_path):
    d = drawing(n=5)
    out = PngSheet(columns=5, spacing=1).write(d, tmp_path / "s.png", ctx())
    img = np.asarray(Image.open(out))
    assert img.shape == (H, 5 * W + 4)
    assert np.array_equal(img[:, 2 * (W + 1) : 2 * (W + 1) + W], np.round(d.canvases[-1, 2] * 255).astype(np.uint8))
    default = np.asarray(Image.open(PngSheet().write(d, tmp_path / "d.png", ctx())))
    assert default.shape == (2 * H + 2, 3 * W + 4)


def test_png_sheet_of_steps_rows_are_samples(tmp_path):
    d = drawing()
    img = np.asarray(Image.open(PngSheet(frames="steps", spacing=2).write(d, tmp_path / "t.png", ctx())))
    assert img.shape == (N * H + (N - 1) * 2, T * W + (T - 1) * 2)
    r, c = 2, 1  # sample 2, step 1
    cell = img[r * (H + 2) : r * (H + 2) + H, c * (W + 2) : c * (W + 2) + W]
    assert np.array_equal(cell, np.round(d.canvases[1, 2] * 255).astype(np.uint8))
    boxed = np.asarray(Image.open(PngSheet(frames="steps", attention=True).write(d, tmp_path / "b.png", ctx())))
    assert boxed.shape == img.shape + (3,)
    with pytest.raises(RecipeError, match="columns"):
        PngSheet(frames="steps", columns=3)


# The GIF's one palette, on drawings like qd's: soft ink on paper, step by step.


def doodles(t=6, n=4, size=56) -> Drawing:
    """Frames like qd's after `ink` and `invert`: soft-edged dark strokes on white paper, each
    step adding two strokes to the last, the write window moving along the top."""
    rng = np.random.default_rng(3)
    canvases = np.zeros((t, n, size, size), np.float32)
    for s in range(n):
        ink = Image.new("L", (size, size), 0)
        pen = ImageDraw.Draw(ink)
        point = rng.uniform(8, size - 8, 2)
        for step in range(t):
            for _ in range(2):
                following = np.clip(point + rng.normal(0, size / 5, 2), 4, size - 4)
                pen.line([tuple(point), tuple(following)], fill=255, width=3)
                point = following
            canvases[step, s] = 1 - np.asarray(ink.filter(ImageFilter.GaussianBlur(1.0)), np.float32) / 255
    windows = np.zeros((t, n, 3), np.float32)
    windows[..., 0], windows[..., 1], windows[..., 2] = (8 + 2 * np.arange(t))[:, None], 14, 1.5
    return Drawing(canvases, windows, write_n=5, source="prior", model_shape=(28, 28))


def gif_blocks(data: bytes) -> dict:
    """What a GIF file holds, block by block: its version, the entries of its global colour
    table, how many images it has and how many of them bring a local table, its loop count."""
    assert data[:3] == b"GIF"
    flags = data[10]
    out = {"version": data[3:6], "global": 2 << (flags & 7) if flags & 0x80 else 0, "images": 0, "local": 0}
    out["loop"] = None
    at = 13 + 3 * out["global"]

    def skip_sub_blocks(at: int) -> int:
        while data[at]:
            at += data[at] + 1
        return at + 1

    while data[at] != 0x3B:  # the trailer
        if data[at] == 0x21:  # an extension: label, then sub-blocks
            if data[at + 1] == 0xFF and data[at + 3 : at + 14] == b"NETSCAPE2.0":
                out["loop"] = int.from_bytes(data[at + 16 : at + 18], "little")
            at = skip_sub_blocks(at + 2)
        else:
            assert data[at] == 0x2C, f"unknown block {data[at]:#x} at {at}"
            packed = data[at + 9]
            out["images"] += 1
            at += 10
            if packed & 0x80:
                out["local"] += 1
                at += 3 * (2 << (packed & 7))
            at = skip_sub_blocks(at + 1)  # after the LZW code size
    return out


def per_frame_gif(frames: np.ndarray, durations: list[int]) -> bytes:
    """The encoding qd used before: each frame handed to Pillow as it is, a colour table each."""
    images = [Image.fromarray(f) for f in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return out.getvalue()


@pytest.mark.parametrize(
    "gif",
    [Gif(frames="steps"), Gif(frames="steps", attention=True), Gif(frames="samples")],
    ids=["grey-steps", "attention-steps", "samples"],
)
def test_gif_has_one_palette_stays_close_and_is_smaller(gif, tmp_path):
    d = doodles()
    frames = np.stack(gif.images(d))
    out = gif.write(d, tmp_path / "d.gif", ctx())
    blocks = gif_blocks(out.read_bytes())
    assert blocks["version"] == b"89a" and blocks["loop"] == 0
    assert blocks["global"] and blocks["local"] == 0 and blocks["images"] == len(frames)
    # Every frame, in RGB: imageio once failed on a greyscale GIF's second frame under Pillow 13.
    got = iio.imread(out, index=None)
    expected = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=-1)
    assert got.shape == expected.shape
    off = np.abs(got.astype(int) - expected)
    assert off.mean() <= 2 and off.max() <= OFF
    if gif.attention:  # the box's red covers enough pixels to be kept as it is
        red = (expected == BOX_COLOUR).all(axis=-1)
        assert red.any() and (got[red] == BOX_COLOUR).all()
    assert out.stat().st_size * 1.5 <= len(per_frame_gif(frames, gif.durations_ms(len(frames))))


def test_a_colourful_gif_still_gets_one_palette():
    """Frames with more colours than 16 levels a channel fit in 255 entries (a third-party
    filter's, never qd's own) get Pillow's median cut over all frames: still one table."""
    y, x = np.mgrid[0:64, 0:64] / 63
    ramps = np.stack([np.stack([x, y, (x + y + t / 4) % 1], axis=-1) for t in range(4)])
    frames = np.round(ramps * 255).astype(np.uint8)
    data = gif_bytes(frames, [100] * 4, 0)
    blocks = gif_blocks(data)
    assert blocks["global"] == 256 and blocks["local"] == 0 and blocks["images"] == 4
    got = iio.imread(data, index=None)
    assert got.shape == frames.shape and np.abs(got.astype(int) - frames).mean() <= 12
