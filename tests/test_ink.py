"""Ink on a page: step frames start blank and only gain ink (qdcore/ink.py), every writer shows
them so, and the `ink` filter's threshold, pen width and anti-aliased edges."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from qdcore import Context, Drawing, RecipeError, engine
from qdcore.ink import ink_so_far, sigmoid
from qdcore.params import check
from qdcore.plugin_manager import build
from qdcore.recipe import load
from qdplugins.filters import Ink, otsu_threshold
from qdplugins.writers import Gif, PngSheet

T, N, H, W = 5, 3, 28, 28
ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def ctx() -> Context:
    return Context((H, W), np.random.default_rng(0), Path("."), None, Path("/nonexistent-cache"))


def drawn_logits(seed=0) -> np.ndarray:
    """Canvas logits c_1..c_T shaped like DRAW's: step 1 writes a faint blur everywhere,
    step 2 washes the page dark (negative), then each later step draws one bright bar, and
    the last step also erases part of an earlier bar."""
    rng = np.random.default_rng(seed)
    steps = np.zeros((T, N, H, W), np.float32)
    steps[0] = rng.normal(0.0, 0.3, (N, H, W))
    steps[1] = -6.0
    for t in range(2, T):
        steps[t, :, 4 * t : 4 * t + 3, 3:25] = 9.0
    steps[-1, :, 8:11, 3:14] -= 15.0  # erases the left half of step 3's bar
    return np.cumsum(steps, axis=0)


def test_last_frame_is_the_model_output_unchanged():
    c = drawn_logits()
    frames = ink_so_far(c)
    assert frames.shape == c.shape and frames.dtype == np.float32
    np.testing.assert_allclose(frames[-1], sigmoid(c[-1]), atol=1e-7)


def test_first_frame_is_a_blank_page_not_uniform_grey():
    c = drawn_logits()
    raw = sigmoid(c[0])
    assert abs(float(np.median(raw)) - 0.5) < 0.05  # what DRAW's canvas shows after step 1
    first = ink_so_far(c)[0]
    # Blank: step 1 only blurred, and that blur ends as paper (or a sliver of a later bar).
    assert float(np.median(first)) < 0.005 and float(first.max()) < 0.1


def test_every_step_adds_ink_and_none_is_lost():
    frames = ink_so_far(drawn_logits())
    assert np.all(np.diff(frames, axis=0) >= 0)
    ink = frames.sum(axis=(1, 2, 3))
    assert np.all(np.diff(ink[1:]) > 0)  # every drawing step from the third adds visible ink
    # A bar appears at the step that drew it, at (close to) full strength.
    assert frames[2, :, 8:11, 16:25].min() > 0.8 and frames[1, :, 8:11, 16:25].max() < 0.1


def test_erased_ink_never_shows():
    frames = ink_so_far(drawn_logits())
    assert frames[:, :, 8:11, 3:14].max() < 0.01  # drawn at step 3, erased at step 5


def test_a_pixel_never_written_towards_ink_shows_only_at_the_end():
    c = np.zeros((3, 1, 2, 2), np.float32)
    c[:, 0, 0, 0] = [-1.0, -2.0, -3.0]
    frames = ink_so_far(c)
    assert frames[:2, 0, 0, 0].max() == 0.0
    assert frames[2, 0, 0, 0] == pytest.approx(float(sigmoid(np.float32(-3.0))))
    assert frames[:2, 0, 1, 1].max() == 0.0 and frames[2, 0, 1, 1] == pytest.approx(0.5)


def test_extreme_logits_stay_finite_and_in_range():
    c = np.array([[-1e30, 0.0, 1e30, 88.0, -88.0]], np.float32).reshape(1, 1, 1, 5)
    frames = ink_so_far(np.concatenate([c, 2 * c]))
    assert np.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1


def _drawing() -> Drawing:
    return Drawing(ink_so_far(drawn_logits()), None, write_n=5, source="prior")


def test_every_writer_shows_steps_on_a_blank_page(tmp_path):
    d = _drawing()
    gif = Gif(frames="steps", columns=N, spacing=0, duration=0.1).write(d, tmp_path / "s.gif", ctx())
    frames = iio.imread(gif, index=None, mode="L")
    durations = [iio.immeta(gif, index=i)["duration"] for i in range(len(frames))]
    # Steps 1 and 2 both show the blank page: Pillow keeps one frame for both, shown twice as long.
    assert durations == [200] + [100] * (T - 2)
    sheet = np.asarray(Image.open(PngSheet(frames="steps", spacing=0).write(d, tmp_path / "s.png", ctx())))
    # The sheet: one row per sample, one column per step; regroup it as (T, N, H, W).
    cells = sheet.reshape(N, H, T, W).transpose(2, 0, 1, 3)[1:]
    for per_step in (frames.reshape(T - 1, H, N, W), cells):
        assert per_step[0].max() <= 25  # the first frame: blank, no mid-grey field (128)
        ink = per_step.reshape(len(per_step), -1).astype(np.int64).sum(axis=1)
        assert np.all(np.diff(ink) > 0)
    assert cells[0].max() <= 25


def test_drawn_steps_from_the_model_start_blank():
    tf = pytest.importorskip("tensorflow")
    from qdcore.config import ModelConfig
    from qdcore.draw import Draw

    model = Draw(ModelConfig(height=12, width=12, T=4, enc_size=16, dec_size=16, z_size=3, read_n=2, write_n=3))
    drawing = model.sample(6, seed=0)
    eps = tf.constant(model._prior_noise(6, 0))
    logits = model._run(None, eps, False, True)[2].numpy()
    np.testing.assert_allclose(drawing.final, sigmoid(logits[-1]), atol=1e-6)
    # DRAW's own first canvas is grey around 0.5; the frame shown is lighter and gains ink.
    assert abs(float(sigmoid(logits[0]).mean()) - 0.5) < 0.1
    assert float(drawing.canvases[0].mean()) < 0.5 * float(drawing.final.mean())
    assert np.all(np.diff(drawing.canvases, axis=0) >= 0)
    rec = model.reconstruct(np.zeros((2, 12, 12), np.float32), seed=0)
    assert np.all(np.diff(rec.canvases, axis=0) >= 0)


# -- the ink filter -------------------------------------------------------------------------


def test_ink_validates_its_parameters():
    assert check(Ink, {}, "f") == {
        "threshold": "otsu",
        "width": None,
        "size": None,
        "supersample": 4,
        "min_length": None,
        "softness": 0.0,
    }
    assert check(Ink, {"threshold": 0.3, "width": 2}, "f")["threshold"] == 0.3
    for bad in (
        {"threshold": "auto"},
        {"threshold": 1.5},
        {"width": 0},
        {"supersample": 0},
        {"size": 0},
        {"softness": -0.1},
        {"softness": 1.5},
    ):
        with pytest.raises(RecipeError):
            check(Ink, bad, "filters[0]")
    with pytest.raises(RecipeError, match="set one of `softness`, `width`"):
        Ink(width=3, softness=0.5)


def test_otsu_cuts_between_the_two_inks():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(0.7, 0.05, 1000)])
    assert 0.25 < otsu_threshold(values) < 0.55
    assert otsu_threshold(np.full(10, 0.3)) == 0.5  # nothing to separate


def test_fixed_threshold_makes_binary_ink():
    x = np.array([[[0.2, 0.4, 0.6, 0.9]]], np.float32)
    out = Ink(threshold=0.5, supersample=1).apply(x, ctx())
    np.testing.assert_array_equal(out, [[[0.0, 0.0, 1.0, 1.0]]])
    out = Ink(threshold=0.3, supersample=1).apply(x, ctx())
    np.testing.assert_array_equal(out, [[[0.0, 1.0, 1.0, 1.0]]])


def test_softness_ramps_the_cut_over_that_much_brightness():
    x = np.array([[[0.2, 0.4, 0.6, 0.9]]], np.float32)
    out = Ink(threshold=0.5, softness=0.5, supersample=1).apply(x, ctx())
    np.testing.assert_allclose(out, [[[0.0, 0.3, 0.7, 1.0]]], atol=1e-6)  # 0.25 -> 0, 0.75 -> 1
    hard = Ink(threshold=0.5, supersample=1).apply(x, ctx())
    np.testing.assert_array_equal(Ink(threshold=0.5, softness=0.0, supersample=1).apply(x, ctx()), hard)


def google_stroke(width: float = 2.0) -> np.ndarray:
    """A near-horizontal line as Google's 28x28 bitmaps have them: drawn `width` pixels wide
    at 10x and box-averaged down, so its edges are anti-aliased."""
    from PIL import ImageDraw

    big = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(big).line([(30, 130), (250, 150)], fill=255, width=round(10 * width))
    return (np.asarray(big.resize((28, 28), Image.BOX), np.float32) / 255)[None]


def shipped(recipe: Path, sets=()):
    """Drawings (n, 28, 28) -> the same after `recipe`'s display chain, scaled back to 28x28."""
    r = load(recipe, build().registry, sets)
    built = engine.prepare(r)
    return lambda images: engine.filtered_bitmaps(r, built, images)


def across(images: np.ndarray) -> np.ndarray:
    """Ink summed across the stroke of `google_stroke`, in the middle columns: its width in pixels."""
    return images[0, :, 10:18].sum(axis=0)


@pytest.mark.parametrize(
    "recipe", [p for p in RECIPES if p.name in ("cat.yaml", "windmill.yaml", "zoo-26.yaml")], ids=lambda p: p.name
)
def test_the_shipped_chain_keeps_googles_stroke_weight_at_28(recipe):
    stroke = google_stroke(2.0)
    raw = across(stroke)
    assert raw == pytest.approx(2.0, abs=0.1)
    kept = across(shipped(recipe)(stroke))
    np.testing.assert_allclose(kept, raw, atol=0.2)  # still 2 px wide after 84 or 112 px and back
    pen = across(shipped(recipe, ["filters[0]={use: ink, size: 84, width: 3}"])(stroke))
    assert pen.max() < 1.3  # the old pen: a 1-pixel line at 28x28


def test_every_shipped_recipe_inks_at_the_same_weight():
    inks = {
        p.name: [
            {k: v for k, v in f.params.items() if k not in ("size", "supersample")}
            for f in load(p, build().registry).filters
            if f.use == "ink"
        ]
        for p in RECIPES
    }
    assert len(inks) >= 10 and all(
        v == [{"threshold": 0.55, "softness": 0.5, "width": None, "min_length": None}] for v in inks.values()
    ), inks


@pytest.mark.realdata
def test_the_shipped_chain_keeps_real_drawings_ink_coverage(quickdraw_dir):
    rows = np.load(quickdraw_dir / "numpy_bitmap" / "cat.npy", mmap_mode="r")[-200:]
    raw = np.asarray(rows, np.float32).reshape(-1, 28, 28) / 255
    for recipe in (ROOT / "recipes" / "cat.yaml", ROOT / "recipes" / "apple.yaml"):  # at 84 and 112 px
        shown = shipped(recipe)(raw)
        assert 0.9 < shown.mean() / raw.mean() < 1.1, recipe.name
        assert np.abs(shown - raw).mean(axis=(1, 2)).max() < 0.035, recipe.name  # every drawing stays itself
    pen = shipped(ROOT / "recipes" / "cat.yaml", ["filters[0]={use: ink, size: 84, width: 3}"])(raw)
    assert pen.mean() / raw.mean() < 0.7  # the old pen lost 40% of the ink


def test_otsu_keeps_strong_strokes_and_drops_faint_haze():
    x = np.full((1, 28, 28), 0.15, np.float32)  # haze
    x[0, 10:14, 4:24] = 0.8  # a stroke
    out = Ink(size=28).apply(x, ctx())
    assert out[0, 11:13, 6:22].min() == 1.0
    assert out[0, :6].max() == 0.0 and out[0, 20:].max() == 0.0


def _bar(thickness: int) -> np.ndarray:
    x = np.zeros((1, 28, 28), np.float32)
    x[0, 14 - thickness // 2 : 14 - thickness // 2 + thickness, 4:24] = 1.0
    x[0, 14 - thickness // 2 - 1 : 14 - thickness // 2 + thickness + 1, 4:24] += 0.5  # soft edges
    return np.clip(x, 0, 1)


@pytest.mark.parametrize("width", [2.0, 4.0, 7.0])
def test_pen_width_is_in_output_pixels_whatever_the_stroke(width):
    for thickness in (2, 3):  # DRAW's blurred strokes are 1.5-3 model pixels wide
        out = Ink(width=width, size=112, threshold=0.5).apply(_bar(thickness), ctx())
        assert out.shape == (1, 112, 112)
        column = out[0, :, 56]  # across the bar, in the middle
        assert column.sum() == pytest.approx(width, abs=1.0)


def test_edges_are_anti_aliased_at_the_output_size():
    x = np.zeros((1, 28, 28), np.float32)
    yy, xx = np.mgrid[:28, :28]
    x[0][(xx - 14) ** 2 + (yy - 14) ** 2 < 64] = 1.0  # a disc: curved edges at every angle
    smooth = Ink(size=84, threshold=0.5, supersample=4).apply(x, ctx())[0]
    hard = Ink(size=84, threshold=0.5, supersample=1).apply(x, ctx())[0]
    partial = (smooth > 0) & (smooth < 1)
    assert partial.sum() > 40  # the rim has in-between values
    assert not ((hard > 0) & (hard < 1)).any()
    assert abs(smooth.sum() - hard.sum()) < 0.05 * hard.sum()  # same disc, only the rim differs


def test_ink_keeps_ink_growing_across_step_frames():
    d = _drawing()
    frames = d.canvases.reshape(T * N, H, W)
    out = Ink(size=56).apply(frames, ctx()).reshape(T, N, 56, 56)
    assert out[0].max() == 0.0
    assert np.all(np.diff(out.sum(axis=(1, 2, 3))) >= 0)
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == np.float32


def test_pen_follows_a_blurred_outline_instead_of_filling_it():
    yy, xx = np.mgrid[:28, :28]
    radius = np.hypot(xx - 13.5, yy - 13.5)
    ring = np.exp(-((radius - 8) ** 2) / 2)[None].astype(np.float32)  # a soft circle, 8 px radius
    out = Ink(width=3, size=84, threshold=0.3).apply(ring, ctx())[0]
    r84 = np.hypot(*(np.mgrid[:84, :84] - 41.5))
    on_ring = np.abs(r84 - 24) < 1
    assert out[on_ring].mean() > 0.9  # the pen goes round the circle
    assert out[r84 < 18].max() == 0.0 and out[r84 > 30].max() == 0.0  # not filled, nothing outside
    assert 2.0 < out[42, :].sum() / 2 < 4.0  # crossed twice, each time about the pen's width
