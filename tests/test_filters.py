"""Post-filters: equal to Pillow's own output, any frame size, values kept in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from qdcore import Context, InputError, RecipeError
from qdcore.params import check
from qdplugins.filters import AntiAlias, EdgeEnhance, Invert, Sharpen, Upscale


def ctx() -> Context:
    return Context((28, 28), np.random.default_rng(0), Path("."), None, Path("/nonexistent-cache"))


def frames_u8(k=3, shape=(28, 28), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(k, *shape), dtype=np.uint8)


def as_float(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) / 255.0


def test_every_filter_validates_with_its_defaults():
    for cls in (Sharpen, EdgeEnhance, AntiAlias, Upscale, Invert):
        cls(**check(cls, {}, "filters[0]"))
    assert check(Upscale, {"size": 112, "resample": "lanczos"}, "f") == {"size": 112, "resample": "lanczos"}
    for cls, bad in [(Upscale, {"size": 0}), (AntiAlias, {"resample": "cubic"}), (Sharpen, {"passes": 0})]:
        with pytest.raises(RecipeError):
            check(cls, bad, "filters[0]")


@pytest.mark.parametrize("cls, kernel", [(Sharpen, ImageFilter.SHARPEN), (EdgeEnhance, ImageFilter.EDGE_ENHANCE)])
@pytest.mark.parametrize("shape", [(28, 28), (17, 40)])
def test_kernel_filters_equal_pillow(cls, kernel, shape):
    u8 = frames_u8(shape=shape)
    out = cls().apply(as_float(u8), ctx())
    assert out.shape == u8.shape and out.dtype == np.float32
    expected = np.stack([np.asarray(Image.fromarray(f).filter(kernel)) for f in u8])
    assert np.array_equal(np.round(out * 255).astype(np.uint8), expected)
    twice = cls(passes=2).apply(as_float(u8), ctx())
    expected2 = np.stack([np.asarray(Image.fromarray(f).filter(kernel).filter(kernel)) for f in u8])
    assert np.array_equal(np.round(twice * 255).astype(np.uint8), expected2)
    assert not np.array_equal(expected, u8)  # the filter does something on these frames


def test_sharpen_and_edge_enhance_differ():
    u8 = frames_u8()
    assert not np.array_equal(Sharpen().apply(as_float(u8), ctx()), EdgeEnhance().apply(as_float(u8), ctx()))


def test_anti_alias_is_pillow_up_then_down():
    u8 = frames_u8(2, (20, 30))
    x = as_float(u8)
    out = AntiAlias(factor=3, resample="bicubic").apply(x, ctx())
    assert out.shape == x.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    expected = []
    for f in x:
        img = Image.fromarray(f).resize((90, 60), Image.BICUBIC)
        img = Image.fromarray(np.clip(np.asarray(img), 0, 1)).resize((30, 20), Image.BICUBIC)
        expected.append(np.clip(np.asarray(img), 0, 1))
    assert np.allclose(out, np.stack(expected), atol=1e-6)
    assert not np.allclose(out, x, atol=0.01)  # random noise is smoothed
    flat = np.full((1, 12, 12), 0.4, np.float32)
    assert np.allclose(AntiAlias().apply(flat, ctx()), 0.4, atol=1e-5)


def test_upscale_nearest_repeats_pixels():
    u8 = frames_u8(2)
    out = Upscale(size=224).apply(as_float(u8), ctx())
    assert out.shape == (2, 224, 224)
    assert np.array_equal(out, np.kron(as_float(u8), np.ones((8, 8), np.float32)))


def test_upscale_keeps_aspect_and_lanczos_stays_in_range():
    x = as_float(frames_u8(1, (28, 14)))
    out = Upscale(size=112, resample="lanczos").apply(x, ctx())
    assert out.shape == (1, 112, 56)
    assert out.min() >= 0 and out.max() <= 1
    expected = np.clip(np.asarray(Image.fromarray(x[0]).resize((56, 112), Image.LANCZOS)), 0, 1)
    assert np.allclose(out[0], expected, atol=1e-6)
    same = Upscale(size=28).apply(as_float(frames_u8(1)), ctx())
    assert same.shape == (1, 28, 28)


def test_invert():
    x = as_float(frames_u8())
    out = Invert().apply(x, ctx())
    assert np.allclose(out, 1 - x) and out.dtype == np.float32


def test_filters_chain_on_any_size_and_refuse_bad_shapes():
    x = as_float(frames_u8(4, (9, 13)))
    for f in (Sharpen(), EdgeEnhance(), AntiAlias(), Upscale(size=50), Invert()):
        x = f.apply(x, ctx())
        assert x.ndim == 3 and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert x.shape == (4, 35, 50)
    with pytest.raises(InputError, match=r"\(K, H, W\)"):
        Sharpen().apply(np.zeros((28, 28), np.float32), ctx())
