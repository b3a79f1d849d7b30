"""DRAW (Gregor et al. 2015, arXiv 1502.04623) in one file: attention, LSTMs, loss, generation.

Read top to bottom: the attention filterbanks, one LSTM step, then the model. Shapes use
B = batch (never fixed), H x W = image, N = filters per axis, T = steps.

Speed choices (measured in docs/performance.md): every LSTM does ONE matmul for its four
gates on its concatenated inputs; everything the decoder state feeds (write patch, write
window, next step's read window) comes out of ONE matmul; those matmuls can run in bfloat16
(`precision`), the rest stays float32; the T loop is unrolled in Python so XLA sees one
straight-line graph when the float32 step is compiled; a small batch's training step takes
each matrix's gradient in one product over all T steps (`Kernel`).

Coordinates: pixel a runs over 1..A and filter i over 1..N as in the paper, so
g~ = 0 centres the window at (A+1)/2, the middle of the image, and g~ = 0, delta~ = 1 puts
the first and last filter centres on pixels 1 and A. `Drawing.windows` reports the write
window converted to zero-based array coordinates (column gx-1, row gy-1), the coordinates
a renderer indexing the canvas array uses.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .conditioning import Category, ClassConditioning, conditional_classes, unconditional_labels
from .config import ModelConfig
from .errors import InputError
from .ink import ink_so_far
from .interfaces import Drawing

# Attention parameters come out of a linear layer; exp() of an unbounded value overflows
# float32 at 88 and 1/gamma blows up as gamma -> 0 (pitfall 9, docs/architecture.md). Clipping
# the log-values keeps every exp() and every 1/gamma within float32 while leaving ample range
# to learn in.
LOG_CLIP = 10.0
# Window centres may move off-image (the paper allows it) but not so far that
# (a - mu)^2 overflows.
CENTRE_CLIP = 10.0
# Encoder log sigma: sigma in [e^-10, e^5] keeps sigma^2 and log sigma^2 finite.
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 5.0


def window_params(p, height: int, width: int, n: int):
    """Linear-layer outputs (B, 5) -> centre, stride, variance, intensity of an N x N window.

    Returns gx, gy, delta, sigma2, gamma, each (B,), following the paper's equations (21)-(24).
    """
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = tf.unstack(p, 5, axis=-1)
    gx_t = tf.clip_by_value(gx_t, -CENTRE_CLIP, CENTRE_CLIP)
    gy_t = tf.clip_by_value(gy_t, -CENTRE_CLIP, CENTRE_CLIP)
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    # With one filter there is no stride to spread; dividing by max(N-1, 1) keeps the
    # formula defined instead of dividing by zero.
    delta = (max(height, width) - 1) / max(n - 1, 1) * tf.exp(tf.clip_by_value(log_delta_t, -LOG_CLIP, LOG_CLIP))
    sigma2 = tf.exp(tf.clip_by_value(log_sigma2, -LOG_CLIP, LOG_CLIP))
    gamma = tf.exp(tf.clip_by_value(log_gamma, -LOG_CLIP, LOG_CLIP))
    return gx, gy, delta, sigma2, gamma


def filterbank(g, delta, sigma2, n: int, size: int):
    """F[b, i, a] = exp(-(a - mu_i)^2 / (2 sigma^2)) normalised over a, a = 1..size.

    mu_i = g + (i - N/2 - 0.5) delta with i = 1..N (one-based: pitfall 2, docs/architecture.md).
    Only the numerator is squared (pitfall 1). The normalisation is a softmax over a, which
    subtracts the row's maximum first: a row can never underflow to 0/0 however narrow the filter.
    """
    i = tf.range(1, n + 1, dtype=tf.float32)
    a = tf.range(1, size + 1, dtype=tf.float32)
    mu = g[:, None] + (i[None, :] - n / 2 - 0.5) * delta[:, None]  # (B, N)
    # Multiply by -1/(2 sigma^2), computed on (B,): a divide over (B, N, size) and its
    # gradient cost measurably more on the CPU.
    logits = tf.square(a[None, None, :] - mu[:, :, None]) * (-0.5 / sigma2)[:, None, None]  # (B, N, size)
    return tf.nn.softmax(logits, axis=-1)


def gaussian_kl(mu, log_sigma):
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions, per row.

    0.5 * sum_j (mu^2 + sigma^2 - log sigma^2 - 1): the -1 is per dimension (pitfall 3,
    docs/architecture.md).
    """
    return 0.5 * tf.reduce_sum(tf.square(mu) + tf.exp(2 * log_sigma) - 2 * log_sigma - 1, axis=-1)


def dense(x, kernel, bias):
    """x @ kernel + bias in float32, with the matmul done in the kernel's dtype.

    `kernel` is a `Kernel`. A bfloat16 kernel (see `Draw.loss_with_noise`) rounds the matmul's
    inputs to 8-bit mantissas; bfloat16 keeps float32's exponent range, so nothing overflows
    that float32 would not, and the result and everything after it is float32 again.
    """
    return tf.cast(kernel(x), tf.float32) + bias


class KernelUses(dict):
    """name -> [(x, x @ kernel), ...]: every use of each weight matrix in one run, recorded by
    its `Kernel`s for the training step's stacked gradients (training/step.py).

    Each output is watched by `tape`: the recorded matrix is hidden from the tape, so an output
    whose inputs are all constants (the first step's, without attention) would otherwise be
    invisible to it."""

    def __init__(self, tape):
        super().__init__()
        self.tape = tape

    def add(self, name: str, x, y) -> None:
        self.tape.watch(y)
        self.setdefault(name, []).append((x, y))


class Kernel:
    """x -> x @ kernel for one weight matrix of one run (the T steps share it).

    Recording (`uses`), it keeps each step's (x, x @ kernel) and hides the matrix from the
    gradient tape: the training step then takes the matrix's gradient as ONE product over
    all T steps' rows, concat(x)^T @ concat(d(x @ kernel)) (`stacked_gradient`), where the tape
    would do T products over the batch's rows each. At batch 20 those small products run at a
    third of a large one's rate (docs/performance.md, "Several steps per call").
    """

    def __init__(self, name: str, value, uses: KernelUses | None = None):
        self.name, self.uses = name, uses
        self.value = value if uses is None else tf.stop_gradient(value)

    def __call__(self, x):
        x = tf.cast(x, self.value.dtype)
        y = tf.matmul(x, self.value)
        if self.uses is not None:
            self.uses.add(self.name, x, y)
        return y


def stacked_gradient(uses: list, output_grads: list):
    """The gradient of a recorded `Kernel`'s matrix, float32, from the gradients of its outputs."""
    xs = tf.concat([x for x, _ in uses], 0)
    dys = tf.concat([tf.cast(g, xs.dtype) for g in output_grads], 0)
    return tf.cast(tf.matmul(xs, dys, transpose_a=True), tf.float32)


def lstm_step(inputs, c, kernel, bias):
    """One LSTM step with a single matmul for all four gates (order i, f, g, o)."""
    gates = dense(inputs, kernel, bias)
    i, f, g, o = tf.split(gates, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int, cols: int | None = None) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, cols or fan_out)).astype(np.float32)


def _lstm_kernel(rng: np.random.Generator, n_in: int, units: int) -> np.ndarray:
    # Glorot per gate block (as Keras does for its input kernel), concatenated so the
    # forward pass still does one matmul.
    return np.concatenate([_glorot(rng, n_in, units) for _ in range(4)], axis=1)


def _lstm_bias(units: int) -> np.ndarray:
    # Forget-gate bias 1 (Jozefowicz et al. 2015): the cell remembers from the first step.
    b = np.zeros(4 * units, np.float32)
    b[units : 2 * units] = 1.0
    return b


class Draw(tf.Module):
    """The DRAW network. Any batch size (including 1), any H x W (square or not).

    With `classes` (2 or more names) it is class-conditional (qdcore/conditioning.py);
    without, it is the unconditional model, variable for variable.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0, classes=None):
        super().__init__(name="draw")
        self.cfg = cfg
        rng = np.random.default_rng(seed)
        self._make_weights(rng)
        # Fresh noise for loss(training=True) without a seed; checkpointed with the model.
        self.noise = tf.random.Generator.from_seed(seed)
        # A tuple: tf.Module would wrap a list in a trackable ListWrapper.
        classes = conditional_classes(classes)
        self.classes = None if classes is None else tuple(classes)
        # Drawn after every other weight, so the unconditional weights do not depend on it.
        self.conditioning = (
            None if self.classes is None else ClassConditioning(self.classes, 4 * cfg.enc_size, 4 * cfg.dec_size, rng)
        )
        self._make_functions()

    def _make_weights(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        H, W = cfg.height, cfg.width
        if cfg.attention:
            self.read_size = 2 * cfg.read_n * cfg.read_n
            self.write_size = cfg.write_n * cfg.write_n
            n_windows = 10  # write window now, read window of the next step
        else:
            self.read_size = 2 * H * W
            self.write_size = H * W
            n_windows = 0
        enc_in = self.read_size + cfg.dec_size + cfg.enc_size
        dec_in = cfg.z_size + cfg.dec_size
        self.enc_kernel = tf.Variable(_lstm_kernel(rng, enc_in, cfg.enc_size), name="enc_kernel")
        self.enc_bias = tf.Variable(_lstm_bias(cfg.enc_size), name="enc_bias")
        self.z_kernel = tf.Variable(_glorot(rng, cfg.enc_size, cfg.z_size, 2 * cfg.z_size), name="z_kernel")
        self.z_bias = tf.Variable(np.zeros(2 * cfg.z_size, np.float32), name="z_bias")
        self.dec_kernel = tf.Variable(_lstm_kernel(rng, dec_in, cfg.dec_size), name="dec_kernel")
        self.dec_bias = tf.Variable(_lstm_bias(cfg.dec_size), name="dec_bias")
        out_kernel = np.concatenate(
            [_glorot(rng, cfg.dec_size, self.write_size), _glorot(rng, cfg.dec_size, n_windows, n_windows)], axis=1
        )
        self.out_kernel = tf.Variable(out_kernel, name="out_kernel")
        self.out_bias = tf.Variable(np.zeros(self.write_size + n_windows, np.float32), name="out_bias")

    def _make_functions(self) -> None:
        """The traced entry points: one graph per signature, any batch size."""
        cfg = self.cfg
        H, W = cfg.height, cfg.width
        spec_x = tf.TensorSpec([None, H, W], tf.float32)
        spec_eps = tf.TensorSpec([cfg.T, None, cfg.z_size], tf.float32)
        spec_y = tf.TensorSpec([None], tf.int32)
        self._reconstruct_fn = tf.function(
            lambda x, eps, y: self._run(x, eps, True, True, labels=y)[2:4],
            autograph=False,
            input_signature=[spec_x, spec_eps, spec_y],
        )
        self._sample_fn = tf.function(
            lambda eps, y: self._run(None, eps, False, True, labels=y)[2:4],
            autograph=False,
            input_signature=[spec_eps, spec_y],
        )
        self._loss_fn = tf.function(
            lambda x, eps, y: self.loss_with_noise(x, eps, labels=y),
            autograph=False,
            input_signature=[spec_x, spec_eps, spec_y],
        )
        # Beyond reconstruction (docs/generation.md): the encoder for the first k steps only, the
        # latents of an encoder pass, and the decoder on given latents under a blend of categories.
        spec_k = tf.TensorSpec([], tf.int32)
        spec_w = tf.TensorSpec([None, len(self.classes) if self.classes else 1], tf.float32)
        self._complete_fn = tf.function(
            lambda x, eps, y, k: self._run(x, eps, True, True, labels=y, follow=k)[2:4],
            autograph=False,
            input_signature=[spec_x, spec_eps, spec_y, spec_k],
        )
        self._encode_fn = tf.function(
            lambda x, eps, y: self._run(x, eps, True, True, labels=y)[4],
            autograph=False,
            input_signature=[spec_x, spec_eps, spec_y],
        )
        self._decode_fn = tf.function(
            lambda eps, w: self._run(None, eps, False, True, weights=w)[2:4],
            autograph=False,
            input_signature=[spec_eps, spec_w],
        )

    @property
    def weights(self) -> list[tf.Variable]:
        extra = self.conditioning.weights if self.conditioning is not None else []
        return [
            self.enc_kernel,
            self.enc_bias,
            self.z_kernel,
            self.z_bias,
            self.dec_kernel,
            self.dec_bias,
            self.out_kernel,
            self.out_bias,
        ] + extra

    # -- the network ---------------------------------------------------------------------

    def _read(self, x, x_hat, p):
        cfg = self.cfg
        if not cfg.attention:
            return tf.concat(
                [tf.reshape(x, [-1, cfg.height * cfg.width]), tf.reshape(x_hat, [-1, cfg.height * cfg.width])], 1
            )
        gx, gy, delta, sigma2, gamma = window_params(p, cfg.height, cfg.width, cfg.read_n)
        fx = filterbank(gx, delta, sigma2, cfg.read_n, cfg.width)  # (B, N, W)
        fy = filterbank(gy, delta, sigma2, cfg.read_n, cfg.height)  # (B, N, H)
        n = cfg.read_n
        # x and x_hat side by side make one (B, H, 2W) batch of matrices: two batched
        # matmuls over B instead of two over (B, 2) with fy and fx broadcast.
        rows = tf.matmul(fy, tf.concat([x, x_hat], axis=2))  # (B, N, 2W)
        glimpse = tf.matmul(tf.reshape(rows, [-1, 2 * n, cfg.width]), fx, transpose_b=True)  # (B, N*2, N)
        glimpse = tf.transpose(tf.reshape(glimpse, [-1, n, 2, n]), [0, 2, 1, 3])  # (B, 2, N, N): x's, then x_hat's
        return tf.reshape(glimpse, [-1, self.read_size]) * gamma[:, None]

    def _write(self, w, p):
        cfg = self.cfg
        if not cfg.attention:
            return tf.reshape(w, [-1, cfg.height, cfg.width]), None
        n = cfg.write_n
        gx, gy, delta, sigma2, gamma = window_params(p, cfg.height, cfg.width, n)
        fx = filterbank(gx, delta, sigma2, n, cfg.width)
        fy = filterbank(gy, delta, sigma2, n, cfg.height)
        # Scaling the N x N patch by 1/gamma equals scaling the H x W result (the map is
        # linear) and touches 25 numbers instead of 784.
        patch = tf.reshape(w, [-1, n, n]) * (1.0 / gamma)[:, None, None]
        canvas = tf.matmul(tf.matmul(fy, patch, transpose_a=True), fx)
        return canvas, tf.stack([gx - 1, gy - 1, delta], axis=-1)

    def _encode(self, x, x_hat, read_p, h_dec, h_enc, c_enc, eps_t, kernels):
        """Read, encoder LSTM, posterior sample. Separate so tests can spy on it."""
        r = self._read(x, x_hat, read_p)
        h_enc, c_enc = lstm_step(tf.concat([r, h_dec, h_enc], 1), c_enc, kernels["enc"], kernels["enc_bias"])
        mu, log_sigma = tf.split(dense(h_enc, kernels["z"], self.z_bias), 2, axis=1)
        log_sigma = tf.clip_by_value(log_sigma, LOG_SIGMA_MIN, LOG_SIGMA_MAX)
        z = mu + tf.exp(log_sigma) * eps_t
        return z, h_enc, c_enc, gaussian_kl(mu, log_sigma)

    @property
    def kernels(self) -> dict[str, tf.Variable]:
        """The weight matrices by name (the run's `Kernel`s, and `uses`' keys)."""
        return {"enc": self.enc_kernel, "z": self.z_kernel, "dec": self.dec_kernel, "out": self.out_kernel}

    def _kernels(self, precision: str, labels, weights, uses: KernelUses | None = None) -> dict:
        """The weights one run uses: cast once per run, not once per step (the T steps share
        each kernel), with the class's row (or a blend of rows) joined to the gate biases.
        With `uses`, each matrix records its uses there (`Kernel`)."""
        kernels = {name: Kernel(name, tf.cast(var, precision), uses) for name, var in self.kernels.items()}
        kernels["enc_bias"], kernels["dec_bias"] = self.enc_bias, self.dec_bias
        if self.conditioning is not None and weights is not None:
            kernels["enc_bias"], kernels["dec_bias"] = self.conditioning.blended_biases(
                weights, self.enc_bias, self.dec_bias
            )
        elif self.conditioning is not None:
            kernels["enc_bias"], kernels["dec_bias"] = self.conditioning.gate_biases(
                labels, self.enc_bias, self.dec_bias
            )
        return kernels

    def _run(
        self,
        x,
        eps,
        encode: bool,
        keep_steps: bool,
        precision: str = "float32",
        labels=None,
        follow=None,
        weights=None,
        uses=None,
    ):
        """Unrolled DRAW. eps (T, B, z): posterior noise when encoding, prior z otherwise.
        labels (B,) int32: the class of each row (ignored by an unconditional model);
        weights (B, C) float32 instead: a blend of the classes' rows (a morph between them).
        follow: when encoding, only steps 1..follow read x; later steps take z_t = eps[t]
        from the prior, so the decoder carries on from what the encoder made it draw. uses:
        see `loss_with_noise`. Returns (logits c_T, L^z per image, canvas logits c_1..c_T
        (T,B,H,W) or None, windows (T,B,3) or None, latents z_1..z_T (T,B,z) or None).
        """
        cfg = self.cfg
        kernels = self._kernels(precision, labels, weights, uses)
        b = tf.shape(eps)[1]
        canvas = tf.zeros([b, cfg.height, cfg.width])
        h_dec = tf.zeros([b, cfg.dec_size])
        c_dec = tf.zeros([b, cfg.dec_size])
        h_enc = tf.zeros([b, cfg.enc_size])
        c_enc = tf.zeros([b, cfg.enc_size])
        # The first read window comes from h_dec_0 = 0, i.e. from the output bias alone.
        read_p = tf.zeros([b, 5]) + self.out_bias[self.write_size + 5 :] if cfg.attention else None
        lz = tf.zeros([b])
        canvases, windows, zs = [], [], []
        for t in range(cfg.T):  # unrolled on purpose: T is a small static number
            if encode:
                x_hat = x - tf.sigmoid(canvas)
                z, h_enc, c_enc, kl = self._encode(x, x_hat, read_p, h_dec, h_enc, c_enc, eps[t], kernels)
                if follow is not None:  # past step `follow` the prior takes over (complete)
                    z = tf.where(t < follow, z, eps[t])
                    kl = tf.where(t < follow, kl, tf.zeros_like(kl))
                lz += kl
            else:
                z = eps[t]
            h_dec, c_dec = lstm_step(tf.concat([z, h_dec], 1), c_dec, kernels["dec"], kernels["dec_bias"])
            out = dense(h_dec, kernels["out"], self.out_bias)
            w = out[:, : self.write_size]
            delta_canvas, window = self._write(
                w, out[:, self.write_size : self.write_size + 5] if cfg.attention else None
            )
            canvas = canvas + delta_canvas
            if cfg.attention:
                read_p = out[:, self.write_size + 5 :]
            if keep_steps:
                canvases.append(canvas)  # logits: qdcore.ink turns them into frames
                windows.append(window)
                zs.append(z)
        if not keep_steps:
            return canvas, lz, None, None, None
        return canvas, lz, tf.stack(canvases), (tf.stack(windows) if cfg.attention else None), tf.stack(zs)

    def loss_with_noise(self, x, eps, precision: str = "float32", labels=None, uses=None):
        """Per-image L^x and L^z (nats) for targets x (B,H,W) and noise eps (T,B,z).

        precision "bfloat16" does the LSTM and output matmuls (97% of the FLOPs) in
        bfloat16, which AMX units run about 3x faster than float32. The weights, attention,
        LSTM cells and loss stay float32. Each kernel is cast once per run, so its gradient
        is summed over the T steps in bfloat16 before it reaches the float32 optimizer:
        casting per step to sum in float32 would cost 6-7% of the step, and the held-out
        bound on cat after 2,000 steps matched float32's within 0.5 nats without it
        (docs/performance.md). With `uses` (a `KernelUses`, the training step's), the weight
        matrices are hidden from the gradient tape and record their uses instead, for
        gradients taken in one product over the T steps (`stacked_gradient`).
        """
        logits, lz = self._run(x, eps, True, False, precision, labels, uses=uses)[:2]
        # BCE from logits: log(1+exp(-|c|)) form, finite for any logit (no log(0)).
        lx = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=[1, 2])
        return lx, lz

    # -- the public surface --------------------------------------------------------------

    def noise_shape(self, batch) -> list:
        return [self.cfg.T, batch, self.cfg.z_size]

    def loss(self, x, training: bool = True, seed: int | None = None, labels=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-image L^x and L^z in nats, shape (B,), for float32 targets x (B,H,W) in [0,1].

        The bound is a one-sample estimate. training=True draws fresh noise (from the model's
        own generator) unless `seed` is given; training=False uses seed 0 by default so an
        evaluation is repeatable. DRAW has no dropout or batch norm, so nothing else differs.
        labels (B,) are the rows' class indices for a conditional model.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        shape = self.noise_shape(tf.shape(x)[0])
        if seed is None and training:
            eps = self.noise.normal(shape)
        else:
            eps = tf.random.stateless_normal(shape, seed=[0 if seed is None else seed, 0])
        y = tf.zeros(tf.shape(x)[:1], tf.int32) if labels is None else tf.cast(labels, tf.int32)
        return self._loss_fn(x, eps, y)

    def _prior_noise(self, n: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((self.cfg.T, n, self.cfg.z_size)).astype(np.float32)

    def _drawing(self, out, source: str) -> Drawing:
        logits, windows = out
        return Drawing(
            canvases=ink_so_far(logits.numpy()),
            windows=None if windows is None else windows.numpy(),
            write_n=self.cfg.write_n if self.cfg.attention else 0,
            source=source,
            model_shape=(self.cfg.height, self.cfg.width),
        )

    def labels(self, n: int, category: Category = None) -> np.ndarray:
        """(n,) class indices for a category name, index or list (qdcore/conditioning.py)."""
        if self.conditioning is None:
            return unconditional_labels(n, category)
        return self.conditioning.labels(n, category)

    def reconstruct(self, seeds: np.ndarray, seed: int | None = None, category: Category = None) -> Drawing:
        """Run encoder and decoder on (n,H,W) seed images in [0,1]: a noisy reconstruction,
        steered towards `category` by a conditional model."""
        x = np.asarray(seeds, np.float32)
        expect = (self.cfg.height, self.cfg.width)
        if x.ndim != 3 or x.shape[1:] != expect:
            raise InputError(f"seed images must be (n, {expect[0]}, {expect[1]}), got {x.shape}")
        x = np.clip(x, 0.0, 1.0)
        y = self.labels(len(x), category)
        return self._drawing(self._reconstruct_fn(x, self._prior_noise(len(x), seed), y), "reconstruction")

    def sample(self, n: int, seed: int | None = None, category: Category = None) -> Drawing:
        """Generate n images from the prior: z_t ~ N(0, I), decoder only, no encoder. A
        conditional model draws `category` (a name), or its categories in turn if None."""
        y = self.labels(int(n), category)
        return self._drawing(self._sample_fn(self._prior_noise(int(n), seed), y), "prior")

    # -- beyond reconstruction (docs/generation.md) ---------------------------------------

    def _images(self, images: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(images, np.float32)
        expect = (self.cfg.height, self.cfg.width)
        if x.ndim != 3 or x.shape[1:] != expect:
            raise InputError(f"{what} must be (n, {expect[0]}, {expect[1]}), got {x.shape}")
        return np.clip(x, 0.0, 1.0)

    def complete(self, partial: np.ndarray, k: int, seed: int | None = None, category: Category = None) -> Drawing:
        """Continue (n,H,W) partial drawings: glimpses 1..k follow the encoder on the partial
        drawing, glimpses k+1..T come from the prior, so the decoder adds strokes to what its
        first k steps drew. Each row's prior noise is its own: repeat a drawing for several
        different completions of it."""
        x = self._images(partial, "partial drawings")
        if not 1 <= int(k) <= self.cfg.T:
            raise InputError(
                f"complete: k = {k} glimpses is outside 1..{self.cfg.T}, this model's T: "
                f"give k from 1 (the prior does almost everything) to {self.cfg.T} (a reconstruction)"
            )
        y = self.labels(len(x), category)
        out = self._complete_fn(x, self._prior_noise(len(x), seed), y, tf.constant(int(k), tf.int32))
        return self._drawing(out, "completion")

    def encode(self, images: np.ndarray, category: Category = None) -> np.ndarray:
        """The latent sequences z_1..z_T (T, n, z_size) of (n,H,W) images: the posterior
        means (no noise), so decode(encode(x)) is the mean reconstruction of x."""
        x = self._images(images, "images to encode")
        zero = np.zeros(self.noise_shape(len(x)), np.float32)
        return self._encode_fn(x, zero, self.labels(len(x), category)).numpy()

    def decode(self, z: np.ndarray, category: Category = None, towards: Category = None, amount=None) -> Drawing:
        """Decoder only, on given latents z (T, n, z_size): sample() with z chosen, not drawn.

        A conditional model draws `category` (as in sample); with `towards` and `amount` (n,)
        in [0, 1], row i's category vector is (1 - amount_i) y(category) + amount_i y(towards):
        the point of a morph between two categories.
        """
        z = np.asarray(z, np.float32)
        if z.ndim != 3 or z.shape[0] != self.cfg.T or z.shape[2] != self.cfg.z_size:
            raise InputError(f"latents must be (T={self.cfg.T}, n, z_size={self.cfg.z_size}), got {z.shape}")
        n = z.shape[1]
        start = self.labels(n, category)
        if self.conditioning is None:
            if towards is not None:
                self.labels(n, towards)  # refuses: this model knows no categories
            return self._drawing(self._sample_fn(z, start), "prior")
        end = start if towards is None else self.labels(n, towards)
        mix = np.zeros(n, np.float32) if amount is None else np.broadcast_to(np.asarray(amount, np.float32), (n,))
        eye = np.eye(len(self.classes), dtype=np.float32)
        weights = (1.0 - mix)[:, None] * eye[start] + mix[:, None] * eye[end]
        return self._drawing(self._decode_fn(z, weights), "prior")
