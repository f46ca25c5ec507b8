"""jaxcsb.nnx.SparseLinear against nnx.Linear with the masked kernel: outputs, gradients,
optimizer updates, initialization, conversions and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, f64, random_dense, random_mask, seed_of

nnx = pytest.importorskip("flax.nnx", reason="the NNX layer needs flax")
optax = pytest.importorskip("optax", reason="the optimizer test needs optax")

from jaxcsb import CSB  # noqa: E402
from jaxcsb.nnx import SparseLinear, SparseStructure  # noqa: E402

# Not multiples of any block size; several 16-blocks in both directions.
IN, OUT = 37, 53


def masked_layer(seed, *, dtype=None, param_dtype=jnp.float32, density=0.3, use_bias=True):
    """A SparseLinear with a random pattern and random values, and its float64 dense kernel."""
    mask = random_mask((IN, OUT), density, seed, empty_rows=(3,))
    w = random_dense((IN, OUT), param_dtype, seed + 1)
    b = random_dense((OUT,), param_dtype, seed + 2) if use_bias else None
    layer = SparseLinear.from_dense(w, b, mask=mask, block_size=16, dtype=dtype)
    return layer, np.where(mask, f64(w), 0.0), None if b is None else f64(b), mask


def reference(x, w, b):
    x = f64(x)
    out = x @ w + (0.0 if b is None else b)
    scale = np.abs(x) @ np.abs(w) + (0.0 if b is None else np.abs(b))
    return out, scale


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)], ids=["1-D", "2-D", "3-D"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_forward_matches_masked_dense(batch, jit):
    seed = seed_of("forward", batch, jit)
    layer, w, b, _ = masked_layer(seed)
    x = jnp.asarray(random_dense((*batch, IN), np.float32, seed + 3))
    call = nnx.jit(lambda m, x: m(x)) if jit else (lambda m, x: m(x))
    y = call(layer, x)
    assert y.shape == (*batch, OUT) and y.dtype == jnp.float32
    want, scale = reference(x, w, b)
    assert_close(y, want, scale, np.float32, "SparseLinear forward")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_compute(dtype):
    """dtype= sets the computation dtype while the parameters stay float32."""
    seed = seed_of("half", dtype)
    layer, w, b, _ = masked_layer(seed, dtype=dtype)
    x = jnp.asarray(random_dense((4, IN), dtype, seed + 3))
    y = layer(x)
    assert y.dtype == dtype and layer.values[...].dtype == jnp.float32
    w_rounded = np.where(w != 0, f64(jnp.asarray(w, dtype)), 0.0)
    want, scale = reference(x, w_rounded, f64(jnp.asarray(b, dtype)))
    assert_close(y, want, scale, dtype, "SparseLinear half forward")


def test_gradients_match_masked_dense():
    """d/d values = the dense kernel's gradient at the kept entries; d/d bias and d/d x equal."""
    seed = seed_of("grads")
    layer, w, b, mask = masked_layer(seed)
    # float32 products in the reference: on GPUs the default precision may be TF32.
    dense = nnx.Linear(IN, OUT, precision="highest", rngs=nnx.Rngs(0))
    dense.kernel.set_value(jnp.asarray(w, jnp.float32))
    dense.bias.set_value(jnp.asarray(b, jnp.float32))
    x = jnp.asarray(random_dense((2, 6, IN), np.float32, seed + 3))
    target = jnp.asarray(random_dense((2, 6, OUT), np.float32, seed + 4))

    def loss(model, x):
        return jnp.sum((model(x) - target) ** 2)

    grad = nnx.jit(nnx.grad(loss, argnums=(0, 1)))
    (g_sparse, gx_sparse) = grad(layer, x)
    (g_dense, gx_dense) = grad(dense, x)
    row, col = (np.asarray(a) for a in layer.kernel.coordinates())
    want_values = f64(g_dense["kernel"][...])[row, col]
    scale = np.abs(want_values).max()
    np.testing.assert_allclose(f64(g_sparse["values"][...]), want_values, atol=1e-5 * scale)
    gb = f64(g_dense["bias"][...])
    np.testing.assert_allclose(f64(g_sparse["bias"][...]), gb, atol=1e-5 * np.abs(gb).max())
    np.testing.assert_allclose(
        f64(gx_sparse), f64(gx_dense), atol=1e-5 * np.abs(f64(gx_dense)).max()
    )
    # Only the values and the bias are differentiated: the structure is no Param.
    assert set(g_sparse.keys()) == {"values", "bias"}


def test_optax_update_leaves_structure_untouched():
    seed = seed_of("optax")
    layer, *_ = masked_layer(seed)
    structure_before = jax.tree.map(np.asarray, nnx.state(layer, SparseStructure))
    values_before = np.asarray(layer.values[...])
    optimizer = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
    x = jnp.asarray(random_dense((8, IN), np.float32, seed + 3))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(layer, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert not np.array_equal(np.asarray(layer.values[...]), values_before)
    after = jax.tree.map(np.asarray, nnx.state(layer, SparseStructure))
    jax.tree.map(np.testing.assert_array_equal, after, structure_before)
    # The optimizer holds state for the values and the bias only.
    mu = optimizer.opt_state[0].mu
    assert set(mu) == {"values", "bias"} and mu["values"].shape == (layer.nnz,)


def test_init_is_flax_init_masked_and_rescaled():
    """With the same rngs the kernel is nnx.Linear's, masked; rescale_init scales column j by
    sqrt(in_features / fan_in_j)."""
    mask = random_mask((IN, OUT), 0.4, seed_of("init"), empty_rows=(0,))
    mask[:, 5] = False  # an output with no inputs: scale 1, nothing stored
    dense = np.asarray(nnx.Linear(IN, OUT, rngs=nnx.Rngs(7)).kernel[...])
    plain = SparseLinear(IN, OUT, mask=mask, rescale_init=False, rngs=nnx.Rngs(7))
    np.testing.assert_array_equal(np.asarray(plain.to_dense()[0]), np.where(mask, dense, 0))
    scaled = SparseLinear(IN, OUT, mask=mask, rngs=nnx.Rngs(7))
    scale = np.sqrt(IN / np.maximum(mask.sum(0), 1)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(scaled.to_dense()[0]), np.where(mask, dense * scale, 0), rtol=1e-6
    )
    np.testing.assert_array_equal(scaled.mask(), mask)


def test_random_pattern_has_exact_sparsity():
    layer = SparseLinear(IN, OUT, sparsity=0.9, rngs=nnx.Rngs(0))
    assert layer.nnz == IN * OUT - round(0.9 * IN * OUT)
    other = SparseLinear(IN, OUT, sparsity=0.9, rngs=nnx.Rngs(1))
    assert not np.array_equal(layer.mask(), other.mask())


def test_fully_pruned_layer_outputs_the_bias():
    layer = SparseLinear(IN, OUT, sparsity=1.0, bias_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
    assert layer.nnz == 0
    np.testing.assert_array_equal(np.asarray(layer(jnp.ones((3, IN)))), np.ones((3, OUT)))


def test_dense_round_trips_are_exact():
    seed = seed_of("round trip")
    layer, w, b, mask = masked_layer(seed, param_dtype=jnp.bfloat16)
    kernel, bias = layer.to_dense()
    assert kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(f64(kernel), w)
    np.testing.assert_array_equal(f64(bias), b)
    linear = layer.to_linear()
    x = jnp.asarray(random_dense((4, IN), np.float32, seed + 3))
    with jax.default_matmul_precision("float32"):
        np.testing.assert_allclose(
            f64(linear(x.astype(jnp.bfloat16))), f64(layer(x.astype(jnp.bfloat16))), atol=0.1
        )
    again = SparseLinear.from_linear(linear, mask=mask, block_size=layer.block_size)
    np.testing.assert_array_equal(np.asarray(again.values[...]), np.asarray(layer.values[...]))
    np.testing.assert_array_equal(np.asarray(again.local[...]), np.asarray(layer.local[...]))


def test_from_dense_magnitude_pattern():
    w = np.arange(1, 13, dtype=np.float32).reshape(3, 4) * np.array([1, -1, 1, -1], np.float32)
    layer = SparseLinear.from_dense(w, sparsity=0.5)
    assert layer.nnz == 6 and not layer.use_bias
    np.testing.assert_array_equal(layer.mask(), np.abs(w) > 6)


def test_set_kernel_replaces_the_pattern():
    layer = SparseLinear(IN, OUT, sparsity=0.5, rngs=nnx.Rngs(0))
    w = random_dense((IN, OUT), np.float32, 1)
    new = CSB.fromdense(w, random_mask((IN, OUT), 0.1, 2), block_size=32)
    layer.set_kernel(new)
    assert layer.nnz == new.nnz and layer.block_size == 32
    np.testing.assert_array_equal(np.asarray(layer.to_dense()[0]), np.asarray(new.todense()))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="exactly one of sparsity= .* or mask="):
        SparseLinear(4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one of sparsity= .* or mask="):
        SparseLinear(4, 3, sparsity=0.5, mask=np.ones((4, 3), bool), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"mask must have shape .* \(4, 3\), got \(3, 4\)"):
        SparseLinear(4, 3, mask=np.ones((3, 4), bool), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sparsity must be in"):
        SparseLinear(4, 3, sparsity=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="block_size must be"):
        SparseLinear(4, 3, sparsity=0.5, block_size=24, rngs=nnx.Rngs(0))
    layer = SparseLinear(4, 3, sparsity=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"last dimension of in_features=4, got shape \(2, 5\)"):
        layer(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"\(in_features, out_features\) = \(4, 3\)"):
        layer.set_kernel(CSB.fromdense(np.ones((3, 4), np.float32)))


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # JAX's truncation
def test_default_block_size_follows_the_compute_dtype():
    """bfloat16 products get the tensor cores' block size on a GPU; float64 asked for without
    jax_enable_x64 runs in float32 and builds as before."""
    gpu = jax.default_backend() == "gpu"
    layer = SparseLinear(256, 256, sparsity=0.95, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert layer.kernel.block_size == (64 if gpu else 256)
    assert SparseLinear(256, 256, sparsity=0.95, rngs=nnx.Rngs(0)).kernel.block_size == (
        128 if gpu else 256
    )
    if not jax.config.jax_enable_x64:
        wide = SparseLinear(64, 32, sparsity=0.9, dtype=jnp.float64, rngs=nnx.Rngs(0))
        assert wide(jnp.ones((2, 64))).dtype == jnp.float32
