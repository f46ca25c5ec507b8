"""jaxcsb.linen.SparseDense against the masked dense product: init, apply, gradients, optax
updates, patterns fixed at construction, conversions and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, f64, random_dense, random_mask, seed_of

nn = pytest.importorskip("flax.linen", reason="the Linen layer needs flax")
optax = pytest.importorskip("optax", reason="the optimizer test needs optax")

from jaxcsb.linen import STRUCTURE, SparseDense  # noqa: E402

IN, OUT = 37, 53


def test_from_dense_matches_masked_product_and_gradients():
    seed = seed_of("linen forward")
    mask = random_mask((IN, OUT), 0.3, seed)
    w = random_dense((IN, OUT), np.float32, seed + 1)
    b = random_dense((OUT,), np.float32, seed + 2)
    layer, variables = SparseDense.from_dense(w, b, mask=mask, block_size=16)
    x = jnp.asarray(random_dense((2, 5, IN), np.float32, seed + 3))
    wm = np.where(mask, f64(w), 0.0)

    y = jax.jit(layer.apply)(variables, x)
    assert y.shape == (2, 5, OUT)
    assert_close(y, f64(x) @ wm + f64(b), np.abs(f64(x)) @ np.abs(wm) + np.abs(f64(b)), np.float32)

    def loss(params, x):
        return jnp.sum(jnp.sin(layer.apply({"params": params, STRUCTURE: variables[STRUCTURE]}, x)))

    g, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)

    def dense_loss(w, b, x):
        # float32 products in the reference: on GPUs the default precision may be TF32.
        return jnp.sum(jnp.sin(jnp.matmul(x, w, precision="highest") + b))

    gw, gb, gx_dense = jax.grad(dense_loss, argnums=(0, 1, 2))(jnp.asarray(wm, jnp.float32), b, x)
    kernel_grad, bias_grad = layer.to_dense({"params": g, STRUCTURE: variables[STRUCTURE]})
    tol = 1e-5 * np.abs(f64(gw)).max()
    np.testing.assert_allclose(f64(kernel_grad), np.where(mask, f64(gw), 0.0), atol=tol)
    np.testing.assert_allclose(f64(bias_grad), f64(gb), atol=1e-5 * np.abs(f64(gb)).max())
    np.testing.assert_allclose(f64(gx), f64(gx_dense), atol=1e-5 * np.abs(f64(gx_dense)).max())


class TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(SparseDense(48, sparsity=0.8, name="hidden")(x))
        return SparseDense(3, sparsity=0.8, use_bias=False, name="out")(x)


def test_init_apply_and_optax_training():
    model = TwoLayers()
    x = jnp.asarray(random_dense((64, IN), np.float32, seed_of("linen train")))
    y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0).astype(jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert set(variables) == {"params", STRUCTURE}
    assert set(variables["params"]["out"]) == {"values"}
    nnz = IN * 48 - round(0.8 * IN * 48)
    assert variables["params"]["hidden"]["values"].shape == (nnz,)
    structure = variables[STRUCTURE]
    frozen = jax.tree.map(np.asarray, structure)
    tx = optax.adam(3e-2)
    params, state = variables["params"], tx.init(variables["params"])

    @jax.jit
    def step(params, state):
        def loss(p):
            logits = model.apply({"params": p, STRUCTURE: structure}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    losses = []
    for _ in range(30):
        params, state, value = step(params, state)
        losses.append(float(value))
    assert losses[-1] < 0.5 * losses[0]
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, structure), frozen)


def test_random_patterns_differ_by_layer_and_repeat_by_seed():
    model = TwoLayers()
    x = jnp.ones((1, IN))
    a = model.init(jax.random.key(0), x)[STRUCTURE]
    b = model.init(jax.random.key(1), x)[STRUCTURE]  # the params rng does not move the pattern
    jax.tree.map(np.testing.assert_array_equal, a, b)
    first = SparseDense(IN, sparsity=0.5).pattern_mask(IN, ("a",))
    second = SparseDense(IN, sparsity=0.5).pattern_mask(IN, ("b",))
    reseeded = SparseDense(IN, sparsity=0.5, mask_seed=1).pattern_mask(IN, ("a",))
    assert not np.array_equal(first, second) and not np.array_equal(first, reseeded)
    assert first.sum() == IN * IN - round(0.5 * IN * IN)


def test_init_is_flax_init_masked_and_rescaled():
    mask = random_mask((IN, OUT), 0.4, seed_of("linen init"))
    key = jax.random.key(3)
    plain = SparseDense(OUT, mask=mask, rescale_init=False)
    variables = plain.init(key, jnp.ones((1, IN)))
    kernel, _ = plain.to_dense(variables)
    scaled = SparseDense(OUT, mask=mask)
    kernel_scaled, _ = scaled.to_dense(scaled.init(key, jnp.ones((1, IN))))
    scale = np.sqrt(IN / np.maximum(mask.sum(0), 1))
    np.testing.assert_allclose(f64(kernel_scaled), f64(kernel) * scale, rtol=1e-6)
    assert np.array_equal(f64(kernel) != 0, mask)


def test_errors_name_the_problem():
    x = jnp.ones((2, IN))
    with pytest.raises(ValueError, match="exactly one of sparsity="):
        SparseDense(OUT).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=rf"mask must have shape .*\({IN}, {OUT}\).*got \(3, 3\)"):
        SparseDense(OUT, mask=np.ones((3, 3), bool)).init(jax.random.key(0), x)
    layer = SparseDense(OUT, sparsity=0.5)
    variables = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=f"needs the '{STRUCTURE}' collection"):
        layer.apply({"params": variables["params"]}, x)
    with pytest.raises(ValueError, match="in_features is required"):
        layer.to_dense(variables)


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # JAX's truncation
def test_default_block_size_follows_the_compute_dtype():
    """bfloat16 products get the tensor cores' block size on a GPU; float64 asked for without
    jax_enable_x64 runs in float32 and builds as before."""
    gpu = jax.default_backend() == "gpu"
    x = jnp.ones((2, 256), jnp.float32)
    for dtype, on_gpu in ((jnp.bfloat16, 64), (None, 128)):
        variables = SparseDense(256, sparsity=0.95, dtype=dtype).init(jax.random.key(0), x)
        blocks = variables[STRUCTURE]["block_ptr"].shape[0] - 1
        assert 256 // int(np.sqrt(blocks)) == (on_gpu if gpu else 256)
    if not jax.config.jax_enable_x64:
        layer = SparseDense(32, sparsity=0.9, dtype=jnp.float64)
        variables = layer.init(jax.random.key(0), x[:, :64])
        assert layer.apply(variables, x[:, :64]).dtype == jnp.float32
