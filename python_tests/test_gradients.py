"""Gradients of csb_matmul and sddmm against the gradients of the dense product with the masked
matrix (jax.grad of the same loss), and jax.test_util.check_grads against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    N_FLAT,
    SHAPE,
    apply,
    assert_close,
    dense_operand_shape,
    host_coordinates,
    random_dense,
    seed_of,
    standard_csb,
)
from jax.test_util import check_grads

import jaxcsb

F32 = np.dtype(np.float32)
HIGHEST = jax.lax.Precision.HIGHEST
IMPLS = ["auto", "jax"]


def dense_product(layout, w, x):
    """The product ``layout`` with a dense float32 matrix, at full float32 precision."""
    mm = lambda a, b: jnp.matmul(a, b, precision=HIGHEST)  # noqa: E731
    return {
        "A@B": lambda: mm(w, x),
        "AT@B": lambda: mm(w.T, x),
        "X@A": lambda: mm(x, w),
        "X@AT": lambda: mm(x, w.T),
    }[layout]()


def _f32(x):
    return jnp.asarray(x).astype(jnp.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matmul_grads_match_dense_masked_product(layout, dtype, impl):
    seed = seed_of("grad", layout, dtype, impl)
    A, _ = standard_csb(dtype, seed)
    x = jax.device_put(random_dense(dense_operand_shape(layout, SHAPE, N_FLAT), dtype, seed + 1))
    out_shape = jax.eval_shape(lambda x: apply(layout, A, x, impl), x).shape
    # The cotangent is representable in dtype, so the sparse path sees it exactly.
    c = _f32(random_dense(out_shape, dtype, seed + 2))

    def loss(values, x):
        return jnp.sum(apply(layout, A.with_values(values), x, impl).astype(jnp.float32) * c)

    g_values, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(A.values, x)
    assert g_values.dtype == dtype and g_x.dtype == dtype

    row, col = host_coordinates(A)

    def dense_loss(values, x, c):
        w = jnp.zeros(SHAPE, jnp.float32).at[row, col].set(values)
        return jnp.sum(dense_product(layout, w, x) * c)

    dense_grad = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))
    want_values, want_x = dense_grad(_f32(A.values), _f32(x), c)
    # The same gradients of absolute values bound what rounding can do to each element.
    scale_values, scale_x = dense_grad(jnp.abs(_f32(A.values)), jnp.abs(_f32(x)), jnp.abs(c))
    assert_close(g_values, want_values, scale_values, dtype, f"d values {layout} {impl}")
    assert_close(g_x, want_x, scale_x, dtype, f"d dense {layout} {impl}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A.T"])
def test_sddmm_grads_match_dense_masked_product(transposed, dtype, impl):
    seed = seed_of("sddmm grad", transposed, dtype, impl)
    A, _ = standard_csb(dtype, seed)
    P = A.T if transposed else A
    a = jax.device_put(random_dense((P.shape[0], N_FLAT), dtype, seed + 1))
    b = jax.device_put(random_dense((N_FLAT, P.shape[1]), dtype, seed + 2))
    c = _f32(random_dense((A.nnz,), dtype, seed + 3))

    def loss(a, b):
        return jnp.sum(jaxcsb.sddmm(a, b, P, impl=impl).values.astype(jnp.float32) * c)

    g_a, g_b = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    assert g_a.dtype == dtype and g_b.dtype == dtype

    row, col = host_coordinates(A)
    if transposed:
        row, col = col, row

    def dense_loss(a, b, c):
        return jnp.sum(jnp.matmul(a, b, precision=HIGHEST)[row, col] * c)

    dense_grad = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))
    want_a, want_b = dense_grad(_f32(a), _f32(b), c)
    scale_a, scale_b = dense_grad(jnp.abs(_f32(a)), jnp.abs(_f32(b)), jnp.abs(c))
    assert_close(g_a, want_a, scale_a, dtype, f"d a {impl}")
    assert_close(g_b, want_b, scale_b, dtype, f"d b {impl}")


# Every product is linear in each argument, so central differences are exact up to rounding:
# eps = 1e-2 keeps float32 cancellation (~1e-7 / eps relative) well inside the tolerance.
CHECK = dict(order=1, modes=["rev"], eps=1e-2, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_check_grads_csb_matmul(layout):
    seed = seed_of("check_grads", layout)
    A, _ = standard_csb(F32, seed)
    x = jax.device_put(random_dense(dense_operand_shape(layout, SHAPE, 5), F32, seed + 1))
    check_grads(lambda v, x: apply(layout, A.with_values(v), x), (A.values, x), **CHECK)


@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A.T"])
def test_check_grads_sddmm(transposed):
    seed = seed_of("check_grads sddmm", transposed)
    A, _ = standard_csb(F32, seed)
    P = A.T if transposed else A
    a = jax.device_put(random_dense((P.shape[0], 5), F32, seed + 1))
    b = jax.device_put(random_dense((5, P.shape[1]), F32, seed + 2))
    check_grads(lambda a, b: jaxcsb.sddmm(a, b, P).values, (a, b), **CHECK)


@pytest.mark.parametrize("layout", ["A@B", "X@AT"])
def test_check_grads_second_order(layout):
    """Second derivatives run the backward passes' own gradients (SDDMM's backward is two
    SpMMs, SpMM's backward an SpMM and an SDDMM)."""
    seed = seed_of("check_grads 2", layout)
    A, _ = standard_csb(F32, seed)
    x = jax.device_put(random_dense(dense_operand_shape(layout, SHAPE, 3), F32, seed + 1))
    check_grads(
        lambda v, x: apply(layout, A.with_values(v), x),
        (A.values, x),
        order=2,
        modes=["rev"],
        eps=1e-2,
        atol=5e-3,
        rtol=5e-3,
    )


def test_index_arrays_get_no_gradient():
    """Only the values are differentiable: grad with respect to the whole CSB pytree gives
    float0 (or zero) cotangents for the index arrays."""
    A, _ = standard_csb(F32, seed_of("index grads"))
    x = jax.device_put(random_dense((SHAPE[1], 4), F32, 1))
    g = jax.grad(lambda A: jnp.sum(A @ x), allow_int=True)(A)
    assert isinstance(g, jaxcsb.CSB)
    assert g.values.dtype == F32 and g.values.shape == (A.nnz,)
    for leaf in (g.block_ptr, g.local):
        assert leaf.dtype == jax.dtypes.float0 or not np.any(np.asarray(leaf))
