"""jaxcsb.pruning: the Zhu & Gupta schedule, exact magnitude masks, the masked-dense phase and
the conversion of nnx.Linear layers into SparseLinear."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_dense, seed_of

nnx = pytest.importorskip("flax.nnx", reason="model-level pruning needs flax")

from jaxcsb import pruning  # noqa: E402
from jaxcsb.nnx import SparseLinear  # noqa: E402


def zhu_gupta(t, s_i, s_f, t0, n, dt):
    """The paper's formula, written out in float64."""
    if t < t0:
        return s_i
    if t >= t0 + n * dt:
        return s_f
    t = t0 + ((t - t0) // dt) * dt  # updated every dt steps
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


@pytest.mark.parametrize(
    "s_i, s_f, t0, n, dt",
    [(0.0, 0.9, 0, 100, 1), (0.0, 0.9, 50, 10, 20), (0.2, 0.95, 7, 13, 3), (0.5, 0.5, 0, 4, 1)],
)
def test_schedule_follows_the_formula(s_i, s_f, t0, n, dt):
    schedule = pruning.polynomial_schedule(
        s_i, s_f, begin_step=t0, end_step=t0 + n * dt, frequency=dt
    )
    steps = sorted({0, t0 - 1, t0, t0 + 1, t0 + dt, t0 + n * dt // 2, t0 + n * dt - 1,
                    t0 + n * dt, t0 + n * dt + 1, 10 * (t0 + n * dt)} - {-1})  # fmt: skip
    got = jax.jit(jax.vmap(schedule))(jnp.asarray(steps))
    want = [zhu_gupta(t, s_i, s_f, t0, n, dt) for t in steps]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6, atol=1e-7)


def test_schedule_values_at_named_steps():
    s = pruning.polynomial_schedule(0.0, 0.8, begin_step=10, end_step=30)
    # progress 1/4 at t=15: 0.8 * (1 - (3/4)^3) = 0.4625; progress 1/2 at t=20: 0.7.
    for t, want in [(0, 0.0), (10, 0.0), (15, 0.4625), (20, 0.7), (30, 0.8), (99, 0.8)]:
        assert abs(float(s(t)) - want) < 1e-6, (t, float(s(t)), want)


def test_schedule_reaches_final_sparsity_when_frequency_does_not_divide_the_span():
    s = pruning.polynomial_schedule(0.0, 0.9, begin_step=0, end_step=100, frequency=30)
    assert float(s(99)) == pytest.approx(0.9 * (1 - (1 - 90 / 100) ** 3))
    assert float(s(100)) == pytest.approx(0.9)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="end_step must be larger than begin_step"):
        pruning.polynomial_schedule(0.0, 0.9, begin_step=10, end_step=10)
    with pytest.raises(ValueError, match="final_sparsity must be in"):
        pruning.polynomial_schedule(0.0, 1.2, end_step=10)
    with pytest.raises(ValueError, match="frequency must be a positive int"):
        pruning.polynomial_schedule(0.0, 0.5, end_step=10, frequency=0)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.97, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (37, 53)])
def test_magnitude_mask_prunes_exactly_and_keeps_the_largest(shape, sparsity):
    w = random_dense(shape, np.float32, seed_of("magnitude", shape, sparsity))
    k = round(sparsity * w.size)
    for mask in (
        pruning.magnitude_mask(w, sparsity),
        pruning.magnitude_mask(jnp.asarray(w), sparsity),
    ):
        mask = np.asarray(mask)
        assert mask.shape == shape and int((~mask).sum()) == k
        if 0 < k < w.size:
            assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


def test_magnitude_mask_breaks_ties_by_position_and_works_under_jit():
    w = np.ones((4, 5), np.float32)  # all tied: the first 10 flat positions go
    numpy_mask = pruning.magnitude_mask(w, 0.5)
    traced = jax.jit(pruning.magnitude_mask)(jnp.asarray(w), jnp.float32(0.5))
    np.testing.assert_array_equal(numpy_mask.reshape(-1), np.arange(20) >= 10)
    np.testing.assert_array_equal(np.asarray(traced), numpy_mask)


def test_global_masks_prune_the_total_exactly_with_one_threshold():
    kernels = {
        "a": random_dense((30, 20), np.float32, 1),
        "b": 3 * random_dense((20, 10), np.float32, 2),  # larger weights: pruned less
    }
    masks = pruning.global_magnitude_masks(kernels, 0.75)
    pruned = sum(int((~np.asarray(m)).sum()) for m in masks.values())
    assert pruned == round(0.75 * 800)
    kept = np.concatenate([np.abs(kernels[n][np.asarray(masks[n])]) for n in kernels])
    gone = np.concatenate([np.abs(kernels[n][~np.asarray(masks[n])]) for n in kernels])
    assert kept.min() >= gone.max()
    assert np.asarray(masks["b"]).mean() > np.asarray(masks["a"]).mean()


def test_random_mask_is_exact_and_keyed():
    a = pruning.random_mask((37, 53), 0.9, jax.random.key(0))
    b = pruning.random_mask((37, 53), 0.9, jax.random.key(1))
    assert (~a).sum() == round(0.9 * 37 * 53) and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, pruning.random_mask((37, 53), 0.9, jax.random.key(0)))


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(13, 40, rngs=rngs), nnx.Linear(40, 24, rngs=rngs)])
        self.head = nnx.Linear(24, 3, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return self.head(x)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masked_dense_phase_follows_the_schedule(scope):
    """prune_step under nnx.jit, after optimizer steps: the number of zeros is the schedule's
    target at every step, masks change only when the target does, pruned weights stay zero."""
    optax = pytest.importorskip("optax", reason="the training loop needs optax")
    model = MLP(nnx.Rngs(0))
    keep_head = lambda name, _: name != "head"  # noqa: E731
    schedule = pruning.polynomial_schedule(0.0, 0.8, begin_step=2, end_step=12, frequency=2)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jnp.asarray(random_dense((32, 13), np.float32, seed_of("phase", scope)))

    @nnx.jit
    def step(model, optimizer, masks, t):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return pruning.prune_step(model, masks, t, schedule, scope=scope)

    masks = pruning.init_masks(model, filter=keep_head)
    assert set(masks) == {"layers/0", "layers/1"}
    sizes = {"layers/0": 13 * 40, "layers/1": 40 * 24}
    previous = masks
    for t in range(16):
        masks = step(model, optimizer, masks, t)
        target = float(schedule(t))
        zeros = {n: int(jnp.sum(model.layers[int(n[-1])].kernel[...] == 0)) for n in sizes}
        if scope == "layer":
            assert zeros == {n: round(target * s) for n, s in sizes.items()}, t
        else:
            assert sum(zeros.values()) == round(target * sum(sizes.values())), t
        if float(schedule(t)) == float(schedule(t - 1)) and t > 0:
            jax.tree.map(np.testing.assert_array_equal, masks, previous)
        for n in sizes:  # pruned once, pruned for good
            assert not np.any(np.asarray(masks[n]) & ~np.asarray(previous[n]))
        previous = masks
    assert float(jnp.mean(model.head.kernel[...] == 0)) == 0.0


def test_sparsify_converts_linears_with_the_given_masks():
    model = MLP(nnx.Rngs(1))
    x = jnp.asarray(random_dense((5, 13), np.float32, seed_of("sparsify")))
    masks = pruning.magnitude_masks(model, 0.7)
    pruning.apply_masks(model, masks)
    with jax.default_matmul_precision("float32"):  # not TF32 on GPUs: compared to 1e-5
        before = np.asarray(model(x))
    result = pruning.sparsify(model, masks=masks)
    assert result is model
    assert all(isinstance(layer, SparseLinear) for layer in (*model.layers, model.head))
    for name, mask in masks.items():
        layer = model.head if name == "head" else model.layers[int(name[-1])]
        np.testing.assert_array_equal(layer.mask(), np.asarray(mask))
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-5, atol=1e-6)
    assert pruning.layer_sparsity(model) == pytest.approx(
        {n: round(0.7 * m.size) / m.size for n, m in masks.items()}
    )


def test_sparsify_by_sparsity_global_and_filtered():
    model = MLP(nnx.Rngs(2))
    pruning.sparsify(model, sparsity=0.9, scope="global", filter=lambda n, _: n != "head")
    assert isinstance(model.head, nnx.Linear)
    nnz = sum(layer.nnz for layer in model.layers)
    assert nnz == 13 * 40 + 40 * 24 - round(0.9 * (13 * 40 + 40 * 24))


def test_sparsify_root_linear_returns_the_new_layer():
    layer = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    new = pruning.sparsify(layer, sparsity=0.5)
    assert isinstance(new, SparseLinear) and new.nnz == 16


def test_errors_name_the_layers():
    model = MLP(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"'nope'.*\['head', 'layers/0', 'layers/1'\]"):
        pruning.sparsify(model, masks={"nope": np.ones((2, 2), bool)})
    with pytest.raises(ValueError, match=r"mask 'head' has shape \(2, 2\) .* \(24, 3\)"):
        pruning.apply_masks(model, {"head": jnp.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="scope must be one of"):
        pruning.magnitude_masks(model, 0.5, scope="model")
