"""The products under jit and vmap (over the dense operand, over the values, over both)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    LAYOUTS,
    N_FLAT,
    SHAPE,
    apply,
    assert_close,
    dense_operand_shape,
    random_dense,
    reference,
    sddmm_reference,
    seed_of,
    standard_csb,
)

import jaxcsb

F32 = np.dtype(np.float32)
IMPLS = ["auto", "jax"]


def _x(layout, seed, batch=None):
    return jax.device_put(
        random_dense(dense_operand_shape(layout, SHAPE, N_FLAT, batch), F32, seed)
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_jit_with_matrix_as_argument_and_as_constant(layout, impl):
    seed = seed_of("jit", layout, impl)
    A, w = standard_csb(F32, seed)
    x = _x(layout, seed + 1)
    want, scale = reference(layout, w, x)
    eager = apply(layout, A, x, impl)
    as_argument = jax.jit(lambda A, x: apply(layout, A, x, impl))(A, x)
    as_constant = jax.jit(lambda x: apply(layout, A, x, impl))(x)
    for out in (eager, as_argument, as_constant):
        assert_close(out, want, scale, F32, f"{layout} {impl}")
    if impl == "auto":  # the same kernel in and out of jit: bitwise the same
        np.testing.assert_array_equal(np.asarray(as_argument), np.asarray(eager))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A.T"])
def test_jit_sddmm(transposed, impl):
    seed = seed_of("jit sddmm", transposed, impl)
    A, _ = standard_csb(F32, seed)
    P = A.T if transposed else A
    a = jax.device_put(random_dense((P.shape[0], N_FLAT), F32, seed + 1))
    b = jax.device_put(random_dense((N_FLAT, P.shape[1]), F32, seed + 2))
    out = jax.jit(lambda a, b, P: jaxcsb.sddmm(a, b, P, impl=impl))(a, b, P)
    assert isinstance(out, jaxcsb.CSB) and out.transposed == transposed
    want, scale = sddmm_reference(A, a, b, transposed)
    assert_close(out.values, want, scale, F32, f"jit sddmm {impl}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_vmap_over_dense_operand(layout, impl):
    seed = seed_of("vmap dense", layout, impl)
    A, w = standard_csb(F32, seed)
    xs = jax.device_put(
        random_dense((3, *dense_operand_shape(layout, SHAPE, N_FLAT)), F32, seed + 1)
    )
    out = jax.vmap(lambda x: apply(layout, A, x, impl))(xs)
    for i in range(3):
        want, scale = reference(layout, w, xs[i])
        assert_close(out[i], want, scale, F32, f"vmap {layout} {impl} [{i}]")


@pytest.mark.parametrize("layout", ["X@A", "X@AT"])
def test_vmap_over_a_middle_axis_of_activations(layout):
    """in_axes=1 on x of shape (4, 3, features): the mapped axis sits between batch dims."""
    seed = seed_of("vmap middle", layout)
    A, w = standard_csb(F32, seed)
    x = _x(layout, seed + 1, batch=(4, 3))
    out = jax.jit(jax.vmap(lambda x: apply(layout, A, x), in_axes=1))(x)
    want, scale = reference(layout, w, np.swapaxes(np.asarray(x), 0, 1))
    assert_close(out, want, scale, F32, layout)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_vmap_over_values(layout, impl):
    seed = seed_of("vmap values", layout, impl)
    A, _ = standard_csb(F32, seed)
    vs = jax.device_put(random_dense((3, A.nnz), F32, seed + 1))
    x = _x(layout, seed + 2)
    out = jax.vmap(lambda v: apply(layout, A.with_values(v), x, impl))(vs)
    for i in range(3):
        w = np.asarray(A.with_values(vs[i]).todense(), np.float64)
        want, scale = reference(layout, w, x)
        assert_close(out[i], want, scale, F32, f"vmap values {layout} {impl} [{i}]")


def test_vmap_over_values_and_dense_operand_under_jit():
    seed = seed_of("vmap both")
    A, _ = standard_csb(F32, seed)
    vs = jax.device_put(random_dense((2, A.nnz), F32, seed + 1))
    xs = jax.device_put(random_dense((2, SHAPE[1], N_FLAT), F32, seed + 2))
    out = jax.jit(jax.vmap(lambda v, x: A.with_values(v) @ x))(vs, xs)
    for i in range(2):
        w = np.asarray(A.with_values(vs[i]).todense(), np.float64)
        want, scale = reference("A@B", w, xs[i])
        assert_close(out[i], want, scale, F32, f"[{i}]")


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_sddmm_over_left_operand(impl):
    seed = seed_of("vmap sddmm", impl)
    A, _ = standard_csb(F32, seed)
    a_s = jax.device_put(random_dense((3, SHAPE[0], N_FLAT), F32, seed + 1))
    b = jax.device_put(random_dense((N_FLAT, SHAPE[1]), F32, seed + 2))
    out = jax.vmap(lambda a: jaxcsb.sddmm(a, b, A, impl=impl).values)(a_s)
    for i in range(3):
        want, scale = sddmm_reference(A, a_s[i], b)
        assert_close(out[i], want, scale, F32, f"vmap sddmm {impl} [{i}]")


def test_vmap_of_grad_matches_per_example_grads():
    seed = seed_of("vmap grad")
    A, _ = standard_csb(F32, seed)
    xs = jax.device_put(random_dense((3, N_FLAT, SHAPE[0]), F32, seed + 1))

    def loss(values, x):
        return jnp.sum(jnp.sin(x @ A.with_values(values)))

    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(A.values, xs)
    for i in range(3):
        one = jax.grad(loss)(A.values, xs[i])
        np.testing.assert_allclose(np.asarray(per_example[i]), np.asarray(one), rtol=1e-5)
