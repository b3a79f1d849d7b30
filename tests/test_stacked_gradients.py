"""Each weight matrix's gradient as one product over all T steps' rows (draw.Kernel,
step.sums_and_gradients): the same gradient the tape takes step by step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from qdcore.config import ModelConfig, TrainConfig
from qdcore.draw import Draw, KernelUses
from qdcore.training.plan import StepPlan
from qdcore.training.step import batch_sums, step_noise, sums_and_gradients

TINY = ModelConfig(height=10, width=13, T=2, enc_size=16, dec_size=12, z_size=4, read_n=3, write_n=3)
CLASSES = ["a", "b", "c"]


def _both(plan: StepPlan, classes=None, attention=True, batch=7):
    cfg = replace(TINY, attention=attention)
    model = Draw(cfg, seed=3, classes=classes)
    rng = np.random.default_rng(0)
    data = {"x": tf.constant((rng.random((batch, 10, 13)) > 0.7).astype(np.float32))}
    if classes:
        data["y"] = tf.constant(rng.integers(0, len(classes), batch).astype(np.int32))
    eps = step_noise(model, TrainConfig(), 5, batch)
    scale = 1.0 / batch

    @tf.function(jit_compile=plan.jit_compile, autograph=False)
    def tape_only():
        with tf.GradientTape() as tape:
            lx, lz = batch_sums(model, data, eps, plan)
            loss = (lx + lz) * scale
        return lx, lz, tape.gradient(loss, model.weights)

    @tf.function(jit_compile=plan.jit_compile, autograph=False)
    def stacked():
        return sums_and_gradients(model, data, eps, plan, scale, model.weights)

    dense = lambda out: (out[0], out[1], [tf.convert_to_tensor(g) for g in out[2]])  # noqa: E731 - a class table's is IndexedSlices
    return model, dense(tape_only()), dense(stacked())


@pytest.mark.parametrize(
    "plan, classes, attention",
    [
        (StepPlan("float32", False), None, True),
        (StepPlan("float32", False, streams=2), CLASSES, True),
        (StepPlan("float32", True), None, False),  # XLA: the costliest to trace, so once
    ],
)
def test_stacked_kernel_gradients_equal_the_tapes_in_float32(plan, classes, attention):
    model, (lx, lz, want), (lx2, lz2, got) = _both(plan, classes, attention)
    assert lx2.numpy() == pytest.approx(lx.numpy(), rel=1e-6) and lz2.numpy() == pytest.approx(lz.numpy(), rel=1e-6)
    assert len(got) == len(model.weights)
    for var, g, w in zip(model.weights, got, want):
        assert g.dtype == var.dtype and g.shape == var.shape, var.name
        scale = np.abs(w.numpy()).max()
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5 * scale, err_msg=var.name)


def test_stacked_kernel_gradients_in_bfloat16_stay_within_its_rounding():
    # The tape rounds each step's product to bfloat16 and sums the T of them in bfloat16; one
    # product over all rows rounds once: they agree to bfloat16's 8-bit mantissa, not exactly.
    model, (_, _, want), (_, _, got) = _both(StepPlan("bfloat16", False, streams=2), CLASSES)
    for var, g, w in zip(model.weights, got, want):
        w = w.numpy()
        assert g.dtype == tf.float32
        rel = np.linalg.norm(g.numpy() - w) / max(np.linalg.norm(w), 1e-12)
        assert rel < 2e-2, (var.name, rel)


def test_the_kernels_are_taken_stacked_not_by_the_tape():
    # A run that records its kernels hides them from the tape: only the stacked product can
    # give their gradients, so a stacking that dropped a use would change them (test above).
    model = Draw(TINY, seed=3)
    x = tf.zeros([2, 10, 13])
    with tf.GradientTape() as tape:
        uses = KernelUses(tape)
        lx, lz = model.loss_with_noise(x, tf.zeros(model.noise_shape(2)), uses=uses)
    grads = tape.gradient(tf.reduce_sum(lx + lz), list(model.kernels.values()))
    assert grads == [None] * 4
    assert sorted(uses) == sorted(model.kernels) and all(len(u) == TINY.T for u in uses.values())


def test_small_batches_stack_and_large_ones_leave_it_to_the_tape(monkeypatch):
    from qdcore.training.step import stacks

    one, two = StepPlan("float32", True), StepPlan("float32", False, streams=2)
    assert stacks(20, one) and stacks(150, two) and stacks(1, two)
    assert not stacks(400, one) and not stacks(400, two) and not stacks(None, one)
    monkeypatch.setenv("QD_STACKED", "0")
    assert not stacks(20, one)
