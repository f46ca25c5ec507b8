"""NaN and Inf propagate through the stored nonzeros exactly as in the dense product restricted
to those nonzeros."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import (
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    SHAPE,
    apply,
    assert_close,
    dense_operand_shape,
    f64,
    host_coordinates,
    random_dense,
    random_mask,
    sddmm_reference,
    seed_of,
)

import jaxcsb


def stored_product(layout, shape, row, col, values, x):
    """float64 product that sums over the stored nonzeros only (NaN/Inf-aware): scipy's sparse
    product multiplies the stored entries alone, explicit zeros included."""
    a = sp.csr_matrix((np.asarray(values, np.float64), (row, col)), shape=shape)
    x = np.asarray(x, np.float64)
    return {
        "A@B": lambda: a @ x,
        "AT@B": lambda: a.T @ x,
        "X@A": lambda: (a.T @ x.T).T,
        "X@AT": lambda: (a @ x.T).T,
    }[layout]()


def assert_same_nonfinite(actual, expected, scale, dtype, what):
    actual = f64(actual)
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        np.testing.assert_array_equal(test(actual), test(expected), err_msg=f"{what}: {name}")
    finite = np.isfinite(expected)
    assert_close(actual[finite], expected[finite], scale[finite], dtype, what)


def check_nonfinite_propagation(layout, dtype, n, shape, block_size, columns):
    """NaN and +-Inf in the values, and in the dense operand at the columns of n (rows of X)
    `columns` = (a NaN, an Inf at the input of an explicitly stored zero, an Inf at an input
    that no stored nonzero reads), against stored_product, for both implementations."""
    seed = seed_of("nonfinite", layout, dtype, n, shape, block_size)
    mask = random_mask(shape, 0.3, 20261121)
    mask[7, :] = mask[:, 5] = False  # row 7 and column 5 hold only structural zeros
    w = random_dense(shape, dtype, seed)
    A = jaxcsb.CSB.fromdense(w, mask, block_size=block_size)
    row, col = host_coordinates(A)
    values = np.asarray(A.values).copy()
    values[[3, 40, 41, 100]] = [np.nan, np.inf, -np.inf, 0.0]  # 100: an explicit zero
    A = A.with_values(jax.device_put(values))
    x = random_dense(dense_operand_shape(layout, shape, n), dtype, seed + 1)
    # Put a NaN and an Inf into x at inputs that stored nonzeros read; the explicit zero's
    # input gets the Inf (0 * Inf = NaN there).
    reads = col if layout in ("A@B", "X@AT") else row
    inputs = [reads[10], reads[100]]
    nan_at, inf_at, unread_at = columns
    if layout.startswith("X"):
        x[nan_at, inputs[0]], x[inf_at, inputs[1]] = np.nan, np.inf
    else:
        x[inputs[0], nan_at], x[inputs[1], inf_at] = np.nan, np.inf
    # And an Inf at an input that no stored nonzero reads (row 7 or column 5): it must vanish,
    # where a dense product would turn it into a column of NaN (0 * Inf).
    unread = 5 if layout in ("A@B", "X@AT") else 7
    assert unread not in reads
    if layout.startswith("X"):
        x[unread_at, unread] = np.inf
    else:
        x[unread, unread_at] = np.inf
    with np.errstate(invalid="ignore"):
        want = stored_product(layout, shape, row, col, values.astype(np.float64), x)
    finite_v = np.where(np.isfinite(values), np.abs(values.astype(np.float64)), 0)
    finite_x = np.where(np.isfinite(x), np.abs(x.astype(np.float64)), 0)
    scale = stored_product(layout, shape, row, col, finite_v, finite_x)
    assert np.isnan(want).any() and np.isinf(want).any()
    unread_output = want[unread_at] if layout.startswith("X") else want[:, unread_at]
    assert not np.isnan(unread_output).all()  # a dense product would give all NaN here
    for impl in ("auto", "jax"):
        out = apply(layout, A, jax.device_put(x), impl)
        assert_same_nonfinite(out, want, scale, dtype, f"{layout} {impl}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
# On a GPU: 80, float32 on tensor cores; 600, their warps split n (tensor_split_n_preferred).
@pytest.mark.parametrize("n", [6, 80, 600])
def test_nan_and_inf_propagate_like_the_dense_product_over_stored_entries(layout, dtype, n):
    """NaN and +-Inf in the values or in the dense operand reach exactly the outputs that a
    stored nonzero connects them to, with IEEE semantics (Inf - Inf = NaN, 0 * Inf = NaN for
    an explicitly stored zero). Structural zeros contribute nothing: unlike a dense product,
    where 0 * Inf = NaN would spread an Inf of x into every output, an Inf meeting only
    structural zeros leaves the output finite."""
    check_nonfinite_propagation(layout, dtype, n, SHAPE, 16, columns=(1, 2, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(40, 300), (300, 40)], ids=["40x300", "300x40"])
def test_nan_and_inf_on_lines_of_one_block(layout, dtype, shape):
    """The same on lines of one block of 64 (transposed for 40 x 300, forward for 300 x 40) and
    a long n: on a GPU, thread blocks there walk several tiles of n and copy each tile's slice
    of the dense operand while they multiply the one before, so the non-finite values sit in
    tiles past the first and in the last."""
    n = 20000
    check_nonfinite_propagation(layout, dtype, n, shape, 64, columns=(n // 2 + 3, n - 1, n // 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_and_inf_in_sddmm(dtype):
    """A NaN in a row of ``a`` makes that row's sampled values NaN; an Inf in ``b`` reaches the
    sampled entries of its column; other entries stay finite."""
    seed = seed_of("nonfinite sddmm", dtype)
    A = jaxcsb.CSB.fromdense(
        random_dense(SHAPE, dtype, seed), random_mask(SHAPE, 0.3, 20261121), block_size=16
    )
    a = random_dense((SHAPE[0], 5), dtype, seed + 1)
    b = random_dense((5, SHAPE[1]), dtype, seed + 2)
    a[4, 2] = np.nan
    b[1, 7] = np.inf
    # Values exact in TF32 (1.0) meet a -Inf: the tensor cores' three TF32 products split each
    # value into a TF32 part and a remainder (0 here), and 0 * -Inf must not turn -Inf into NaN.
    a[:, 3] = 1.0
    b[3, 9] = -np.inf
    with np.errstate(invalid="ignore"):
        want, _ = sddmm_reference(A, a, b)
    finite_a, finite_b = np.nan_to_num(a.astype(np.float64)), np.nan_to_num(b.astype(np.float64))
    _, scale = sddmm_reference(A, np.abs(finite_a), np.minimum(np.abs(finite_b), 10.0))
    assert np.isnan(want).any() and np.isposinf(want).any() and np.isneginf(want).any()
    for impl in ("auto", "jax"):
        got = jaxcsb.sddmm(jax.device_put(a), jax.device_put(b), A, impl=impl).values
        assert_same_nonfinite(got, want, scale, dtype, f"sddmm {impl}")
