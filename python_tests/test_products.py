"""Every product and layout, every dtype and implementation, against a float64 reference and
against the pure-JAX implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    BATCHES,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    N_FLAT,
    SHAPE,
    apply,
    assert_close,
    dense_operand_shape,
    random_csb,
    random_dense,
    reference,
    sddmm_reference,
    seed_of,
    standard_csb,
)

import jaxcsb

N = N_FLAT
# A long n over few blocks: on a GPU the blocks of a cluster split the SDDMM's walk over n, and
# the tensor cores' warps split n in the SpMM.
N_LONG = 1500


@pytest.mark.parametrize("n", [N, N_LONG], ids=["n", "long-n"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["A@B", "AT@B"])
def test_sparse_left(layout, dtype, n, impl):
    seed = seed_of(layout, dtype, n, impl)
    A, w = standard_csb(dtype, seed)
    x = jax.device_put(random_dense(dense_operand_shape(layout, SHAPE, n), dtype, seed + 7))
    out = apply(layout, A, x, impl)
    assert out.dtype == dtype
    want, scale = reference(layout, w, x)
    assert_close(out, want, scale, dtype, f"{layout} {impl}")
    # The pure-JAX implementation is a second, independent reference.
    assert_close(out, apply(layout, A, x, "jax"), 2 * scale, dtype, f"{layout} {impl} vs jax")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_high_sparsity(layout):
    """float32 at 97% sparsity and n = 1030: on a GPU every product sorts the nonzeros once into
    XLA's scratch memory and each thread block keeps a slab of the dense operand, its input axis
    of 1700 rows in two parts (cuda_config.h: slab_preferred), in both layouts."""
    seed = seed_of("high sparsity", layout)
    input_axis_is_rows = layout in ("AT@B", "X@A")
    shape = (1700, 4100) if input_axis_is_rows else (4100, 1700)
    A, w = random_csb(shape, 0.03, np.float32, seed)
    x = jax.device_put(random_dense(dense_operand_shape(layout, shape, 1030), np.float32, seed + 7))
    out = apply(layout, A, x)
    want, scale = reference(layout, w, x)
    assert_close(out, want, scale, np.float32, layout)


@pytest.mark.parametrize("layout", ["X@A", "X@AT"])
def test_sparse_right_below_tensor_density(layout):
    """float32 at 92% sparsity, block size 64 and a flattened batch of 700: on a GPU the
    batch-leading products run on the tensor cores, whose warps split n, below the density of
    1/8 that the feature-major ones need (cuda_config.h: kTensorMinDensityF32BatchLeading)."""
    seed = seed_of("batch-leading tensor cores", layout)
    A, w = random_csb((300, 200), 0.08, np.float32, seed, block_size=64)
    x = jax.device_put(random_dense(dense_operand_shape(layout, (300, 200), 700), np.float32, seed))
    out = apply(layout, A, x)
    want, scale = reference(layout, w, x)
    assert_close(out, want, scale, np.float32, layout)


@pytest.mark.parametrize("batch", BATCHES, ids=["1dim", "2dims", "3dims"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["X@A", "X@AT"])
def test_sparse_right_any_batch_dims(layout, dtype, batch, impl):
    """X has 1, 2 or 3 leading dimensions before the contracted one."""
    seed = seed_of(layout, dtype, batch, impl)
    A, w = standard_csb(dtype, seed)
    x = jax.device_put(random_dense(dense_operand_shape(layout, SHAPE, N, batch), dtype, seed + 7))
    out = apply(layout, A, x, impl)
    assert out.dtype == dtype
    want, scale = reference(layout, w, x)
    assert out.shape == want.shape
    assert_close(out, want, scale, dtype, f"{layout} {impl}")
    assert_close(out, apply(layout, A, x, "jax"), 2 * scale, dtype, f"{layout} {impl} vs jax")


@pytest.mark.parametrize("n", [N, N_LONG], ids=["n", "long-n"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A.T"])
def test_sddmm(transposed, dtype, n, impl):
    seed = seed_of("sddmm", transposed, dtype, n, impl)
    A, _ = standard_csb(dtype, seed)
    P = A.T if transposed else A
    m, k = P.shape
    a = jax.device_put(random_dense((m, n), dtype, seed + 1))
    b = jax.device_put(random_dense((n, k), dtype, seed + 2))
    out = jaxcsb.sddmm(a, b, P, impl=impl)
    assert isinstance(out, jaxcsb.CSB)
    assert out.shape == P.shape and out.transposed == P.transposed and out.dtype == dtype
    np.testing.assert_array_equal(out.block_ptr, A.block_ptr)
    np.testing.assert_array_equal(out.local, A.local)
    want, scale = sddmm_reference(A, a, b, transposed)
    assert_close(out.values, want, scale, dtype, f"sddmm {impl}")
    ref = jaxcsb.sddmm(a, b, P, impl="jax").values
    assert_close(out.values, ref, 2 * scale, dtype, f"sddmm {impl} vs jax")


@pytest.mark.parametrize("layout", ["A@B", "AT@B", "X@A", "X@AT"])
def test_matmul_operator_matches_csb_matmul(layout):
    """``@`` with a numpy or a jax operand on either side dispatches to csb_matmul."""
    seed = seed_of("operator", layout)
    A, w = standard_csb(np.float32, seed)
    x_np = random_dense(dense_operand_shape(layout, SHAPE, N), np.float32, seed + 1)
    want = apply(layout, A, x_np)
    operators = {
        "A@B": lambda x: A @ x,
        "AT@B": lambda x: A.T @ x,
        "X@A": lambda x: x @ A,
        "X@AT": lambda x: x @ A.T,
    }
    for x in (x_np, jnp.asarray(x_np)):
        got = operators[layout](x)
        assert isinstance(got, jnp.ndarray)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
