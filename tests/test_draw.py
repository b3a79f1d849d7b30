"""The DRAW model: attention geometry, the KL term, shapes, generation, numerical safety."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from qdcore.config import ModelConfig
from qdcore.draw import Draw, filterbank, gaussian_kl, window_params

TINY = ModelConfig(height=12, width=17, T=3, enc_size=16, dec_size=16, z_size=4, read_n=3, write_n=4)


def _bank(g, delta, sigma2, n, size):
    def f(v):
        return tf.constant([v], tf.float32)

    return filterbank(f(g), f(delta), f(sigma2), n, size).numpy()[0]


def test_filterbank_rows_are_normalised_and_centred_on_one_based_grid():
    n, size, g, delta = 5, 28, 14.5, 2.0
    bank = _bank(g, delta, 1.0, n, size)
    np.testing.assert_allclose(bank.sum(axis=1), 1.0, atol=1e-6)
    pixels = np.arange(1, size + 1)  # a = 1..A
    centres = bank @ pixels
    # mu_i = g + (i - N/2 - 0.5) delta, i = 1..N: 10.5, 12.5, 14.5, 16.5, 18.5
    expected = g + (np.arange(1, n + 1) - n / 2 - 0.5) * delta
    np.testing.assert_allclose(centres, expected, atol=1e-3)
    # Only the numerator is squared: the row is exactly the normalised Gaussian of the paper.
    gauss = np.exp(-((pixels[None, :] - expected[:, None]) ** 2) / 2.0)
    np.testing.assert_allclose(bank, gauss / gauss.sum(axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("height,width", [(28, 28), (20, 33)])
def test_neutral_window_spans_the_image(height, width):
    n = 5
    params = tf.constant([[0.0, 0.0, np.log(0.25), 0.0, 0.0]], tf.float32)  # g~=0, delta~=1
    gx, gy, delta, sigma2, gamma = (v.numpy()[0] for v in window_params(params, height, width, n))
    assert gx == pytest.approx((width + 1) / 2) and gy == pytest.approx((height + 1) / 2)
    assert delta == pytest.approx((max(height, width) - 1) / (n - 1))
    assert gamma == pytest.approx(1.0)
    bank = _bank(gx, delta, sigma2, n, width)
    # The longer axis: first filter on pixel 1 (index 0), last on pixel A (index A-1).
    assert bank[0].argmax() == 0 and bank[-1].argmax() == width - 1
    centres = bank @ np.arange(1, width + 1)
    assert centres[n // 2] == pytest.approx((width + 1) / 2, abs=1e-3)


def test_kl_matches_closed_form_and_monte_carlo():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 4)).astype(np.float32)
    log_sigma = rng.normal(scale=0.5, size=(3, 4)).astype(np.float32)
    kl = gaussian_kl(tf.constant(mu), tf.constant(log_sigma)).numpy()
    sigma2 = np.exp(2 * log_sigma)
    closed = 0.5 * np.sum(mu**2 + sigma2 - np.log(sigma2) - 1, axis=1)
    np.testing.assert_allclose(kl, closed, rtol=1e-5)
    # Independent check: E_q[log q(z) - log p(z)] by sampling.
    z = mu + np.exp(log_sigma) * rng.standard_normal((200_000, 3, 4))
    log_q = -0.5 * ((z - mu) / np.exp(log_sigma)) ** 2 - log_sigma
    log_p = -0.5 * z**2
    np.testing.assert_allclose(kl, (log_q - log_p).sum(axis=2).mean(axis=0), rtol=0.02, atol=0.02)
    # The prior against itself costs nothing: the -1 is per dimension.
    assert gaussian_kl(tf.zeros([1, 10]), tf.zeros([1, 10])).numpy()[0] == 0.0


@pytest.mark.parametrize("attention", [True, False])
def test_batch_of_one_and_non_square_images(attention):
    cfg = ModelConfig(**{**TINY.as_dict(), "attention": attention})
    model = Draw(cfg)
    x = np.random.default_rng(0).random((1, 12, 17), dtype=np.float32)
    lx, lz = model.loss(x)
    assert lx.shape == (1,) and lz.shape == (1,)
    assert np.isfinite(lx.numpy()).all() and (lz.numpy() > 0).all()
    drawing = model.sample(1, seed=0)
    assert drawing.canvases.shape == (3, 1, 12, 17) and drawing.source == "prior"
    assert drawing.model_shape == (12, 17)
    rec = model.reconstruct(np.concatenate([x, x]), seed=0)
    assert rec.canvases.shape == (3, 2, 12, 17) and rec.source == "reconstruction"
    if attention:
        assert drawing.windows.shape == (3, 1, 3) and drawing.write_n == 4
    else:
        assert drawing.windows is None


def test_read_is_the_papers_glimpse_of_x_then_x_hat():
    cfg = TINY
    model = Draw(cfg)
    rng = np.random.default_rng(4)
    x, x_hat = (rng.random((2, 12, 17), dtype=np.float32) for _ in range(2))
    p = tf.constant(rng.normal(size=(2, 5)).astype(np.float32))
    got = model._read(tf.constant(x), tf.constant(x_hat), p).numpy()
    gx, gy, delta, sigma2, gamma = window_params(p, 12, 17, 3)
    fx = filterbank(gx, delta, sigma2, 3, 17).numpy()
    fy = filterbank(gy, delta, sigma2, 3, 12).numpy()
    # Equation (27): gamma * F_y x F_x^T, for the image and then the error image.
    want = np.concatenate([np.einsum("nia,nab,njb->nij", fy, img, fx).reshape(2, -1) for img in (x, x_hat)], 1)
    np.testing.assert_allclose(got, want * gamma.numpy()[:, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", [True, False])
def test_bfloat16_matmuls_stay_close_to_float32(attention):
    model = Draw(ModelConfig(**{**TINY.as_dict(), "attention": attention, "enc_size": 64, "dec_size": 64}), seed=2)
    rng = np.random.default_rng(5)
    x = tf.constant((rng.random((6, 12, 17)) > 0.6).astype(np.float32))
    eps = tf.constant(rng.standard_normal((3, 6, 4)).astype(np.float32))
    results = {}
    for precision in ("float32", "bfloat16"):
        with tf.GradientTape() as tape:
            lx, lz = model.loss_with_noise(x, eps, precision)
            loss = tf.reduce_mean(lx + lz)
        grads = tape.gradient(loss, model.weights)
        assert all(g.dtype == tf.float32 and np.isfinite(g.numpy()).all() for g in grads)
        results[precision] = lx.numpy(), lz.numpy(), np.concatenate([g.numpy().ravel() for g in grads])
    (lx32, lz32, g32), (lx16, lz16, g16) = results["float32"], results["bfloat16"]
    assert not np.array_equal(lx16, lx32)  # the bfloat16 path really rounds
    np.testing.assert_allclose(lx16, lx32, rtol=0.01)
    np.testing.assert_allclose(lz16, lz32, rtol=0.05, atol=0.05)
    cosine = g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32)
    assert cosine > 0.99, cosine


def test_bce_is_summed_over_pixels_from_logits():
    model = Draw(TINY)
    x = np.random.default_rng(1).random((2, 12, 17), dtype=np.float32)
    eps = np.zeros((3, 2, 4), np.float32)
    lx, _ = model.loss_with_noise(tf.constant(x), tf.constant(eps))
    logits = model._run(tf.constant(x), tf.constant(eps), True, False)[0]
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    expected = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=(1, 2))
    np.testing.assert_allclose(lx.numpy(), expected, rtol=1e-5)


def test_sample_never_calls_the_encoder():
    model = Draw(TINY)
    calls = []
    real = model._encode

    def spy(*args):
        calls.append(1)
        return real(*args)

    model._encode = spy
    model.sample(2, seed=0)
    assert calls == []
    model.reconstruct(np.zeros((2, 12, 17), np.float32), seed=0)
    assert len(calls) == TINY.T  # the spy works: reconstruction runs the encoder at every step


def test_same_seed_same_arrays_different_seed_different():
    model = Draw(TINY)
    a, b, c = model.sample(3, seed=7), model.sample(3, seed=7), model.sample(3, seed=8)
    np.testing.assert_array_equal(a.canvases, b.canvases)
    np.testing.assert_array_equal(a.windows, b.windows)
    assert not np.array_equal(a.canvases, c.canvases)
    x = np.random.default_rng(0).random((2, 12, 17), dtype=np.float32)
    r1, r2 = model.reconstruct(x, seed=3), model.reconstruct(x, seed=3)
    np.testing.assert_array_equal(r1.canvases, r2.canvases)


def test_fresh_noise_at_every_step():
    model = Draw(TINY)
    eps = model.noise.normal(model.noise_shape(1))
    seen = []
    real = model._encode

    def spy(x, x_hat, read_p, h_dec, h_enc, c_enc, eps_t, kernels):
        seen.append(eps_t.numpy())
        return real(x, x_hat, read_p, h_dec, h_enc, c_enc, eps_t, kernels)

    model._encode = spy
    model.loss_with_noise(tf.zeros([1, 12, 17]), eps)
    assert len(seen) == TINY.T
    assert all(not np.array_equal(seen[0], s) for s in seen[1:])


def test_extreme_parameters_stay_finite():
    model = Draw(ModelConfig(T=3, enc_size=16, dec_size=16, z_size=4))
    for v in model.weights:
        v.assign(tf.fill(v.shape, 1e4 if "bias" in v.name else -1e3))
    for x in (np.zeros((2, 28, 28), np.float32), np.ones((2, 28, 28), np.float32)):
        lx, lz = model.loss(x)
        assert np.isfinite(lx.numpy()).all() and np.isfinite(lz.numpy()).all()
        assert np.isfinite(model.sample(2, seed=0).canvases).all()
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(sum(model.loss(x)))
        grads = tape.gradient(loss, model.weights)
        assert all(np.isfinite(g.numpy()).all() for g in grads)
    narrow = _bank(-1e6, 1e-6, np.exp(-10.0), 5, 28)
    assert np.isfinite(narrow).all()
