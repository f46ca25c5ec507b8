"""Awkward shapes and patterns: sizes that are not multiples of the block size, 1 x 1, a single
nonzero, empty rows and blocks, nnz = 0, N = 1, zero-sized dimensions, every block size, and
skewed patterns with a few dense rows. Each product is checked against float64, for the
default implementation and the pure-JAX one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    BLOCK_SIZES,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    apply,
    assert_close,
    dense_operand_shape,
    random_dense,
    random_mask,
    reference,
    sddmm_reference,
    seed_of,
)

import jaxcsb

# name: (shape, n, mask options, block_size)
CASES = {
    "1x1": ((1, 1), 3, dict(density=1.0), None),
    "single_nonzero": ((45, 70), 5, dict(density=0.0, min_nnz=1), 16),
    "empty_rows_and_blocks": (
        (70, 50),
        6,
        # Rows 16..47 x columns 0..31 are whole empty 16 x 16 blocks, plus scattered empty rows.
        dict(density=0.3, empty_rows=(0, 5, 6, 7, 69), empty_block=(16, 48, 0, 32)),
        16,
    ),
    "nnz_0": ((40, 30), 4, dict(density=0.0, min_nnz=0), 16),
    "n_1": ((37, 53), 1, dict(density=0.3), 16),
    "rows_0": ((0, 20), 3, dict(density=0.5), 16),
    "cols_0": ((20, 0), 3, dict(density=0.5), 16),
    "both_0": ((0, 0), 3, dict(density=0.5), 16),
    "n_0": ((37, 53), 0, dict(density=0.3), 16),
    "skewed_dense_rows": ((300, 90), 5, dict(density=0.01, dense_rows=3), 32),
    "full": ((20, 33), 4, dict(density=1.0), 16),
    "exact_multiple": ((64, 32), 4, dict(density=0.2), 16),
    "thin_in_big_block": ((5, 300), 3, dict(density=0.2), 256),
}


def make(case, dtype, seed):
    shape, n, mask_options, block_size = CASES[case]
    mask = random_mask(shape, seed=seed, **mask_options)
    w = random_dense(shape, dtype, seed + 1)
    A = jaxcsb.CSB.fromdense(w, mask, block_size=block_size)
    assert A.nnz == int(mask.sum())
    return A, np.where(mask, w.astype(np.float64), 0.0), n


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES))
def test_product(case, layout):
    seed = seed_of("shape", case, layout)
    A, w, n = make(case, np.float32, seed)
    # A leading batch dimension of 2 for the sparse-right layouts (n may be 0 there too).
    batch = (2, n)
    x = jax.device_put(
        random_dense(dense_operand_shape(layout, A.shape, n, batch), np.float32, seed)
    )
    want, scale = reference(layout, w, x)
    for impl in ("auto", "jax"):
        out = apply(layout, A, x, impl)
        assert out.shape == want.shape and out.dtype == jnp.float32
        assert_close(out, want, scale, np.float32, f"{case} {layout} {impl}")


@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A.T"])
@pytest.mark.parametrize("case", list(CASES))
def test_sddmm(case, transposed):
    seed = seed_of("shape sddmm", case, transposed)
    A, _, n = make(case, np.float32, seed)
    P = A.T if transposed else A
    a = jax.device_put(random_dense((P.shape[0], n), np.float32, seed + 2))
    b = jax.device_put(random_dense((n, P.shape[1]), np.float32, seed + 3))
    want, scale = sddmm_reference(A, a, b, transposed)
    for impl in ("auto", "jax"):
        out = jaxcsb.sddmm(a, b, P, impl=impl)
        assert out.nnz == A.nnz
        assert_close(out.values, want, scale, np.float32, f"{case} sddmm {impl}")


def test_zero_sized_products_are_zeros_of_the_right_shape():
    """0 x k, m x 0 and n = 0 give correctly shaped results; a zero inner dimension gives
    zeros (the empty sum), never uninitialised memory."""
    for shape, n in [((0, 5), 3), ((5, 0), 3), ((6, 7), 0)]:
        A = jaxcsb.CSB.fromdense(np.ones(shape, np.float32))
        m, k = shape
        cases = [
            (A @ jnp.ones((k, n)), (m, n)),
            (A.T @ jnp.ones((m, n)), (k, n)),
            (jnp.ones((2, n, m)) @ A, (2, n, k)),
            (jnp.ones((n, k)) @ A.T, (n, m)),
        ]
        for out, want_shape in cases:
            assert out.shape == want_shape
            np.testing.assert_array_equal(np.asarray(out), np.zeros(want_shape, np.float32))


@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DTYPE_IDS[:2])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_every_block_size(block_size, dtype):
    """300 x 270 is not a multiple of any block size; every product and both SDDMMs."""
    seed = seed_of("block size", block_size, dtype)
    shape, n = (300, 270), 9
    mask = random_mask(shape, 0.05, seed)
    w_raw = random_dense(shape, dtype, seed + 1)
    A = jaxcsb.CSB.fromdense(w_raw, mask, block_size=block_size)
    assert A.block_size == block_size
    w = np.where(mask, w_raw.astype(np.float64), 0.0)
    for layout in LAYOUTS:
        x = jax.device_put(random_dense(dense_operand_shape(layout, shape, n), dtype, seed + 2))
        want, scale = reference(layout, w, x)
        assert_close(apply(layout, A, x), want, scale, dtype, f"{layout} beta={block_size}")
    for transposed in (False, True):
        P = A.T if transposed else A
        a = jax.device_put(random_dense((P.shape[0], n), dtype, seed + 3))
        b = jax.device_put(random_dense((n, P.shape[1]), dtype, seed + 4))
        want, scale = sddmm_reference(A, a, b, transposed)
        got = jaxcsb.sddmm(a, b, P).values
        assert_close(got, want, scale, dtype, f"sddmm transposed={transposed} beta={block_size}")


def test_wide_n_spans_several_tiles():
    """n = 700 crosses the kernels' column tiles (and their remainder) in every layout."""
    seed = seed_of("wide n")
    shape, n = (70, 90), 700
    mask = random_mask(shape, 0.2, seed)
    w_raw = random_dense(shape, np.float32, seed + 1)
    A = jaxcsb.CSB.fromdense(w_raw, mask, block_size=32)
    w = np.where(mask, w_raw.astype(np.float64), 0.0)
    for layout in LAYOUTS:
        x = jax.device_put(random_dense(dense_operand_shape(layout, shape, n), np.float32, seed))
        want, scale = reference(layout, w, x)
        assert_close(apply(layout, A, x), want, scale, np.float32, layout)
    a = jax.device_put(random_dense((shape[0], n), np.float32, seed + 2))
    b = jax.device_put(random_dense((n, shape[1]), np.float32, seed + 3))
    want, scale = sddmm_reference(A, a, b)
    assert_close(jaxcsb.sddmm(a, b, A).values, want, scale, np.float32, "sddmm")


@pytest.mark.parametrize("n", [2, 7, 8, 15, 16, 24, 31, 40, 63, 64, 65, 100, 129])
@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DTYPE_IDS[:2])
def test_every_column_width(n, dtype):
    """Widths that end on each piece of the kernels' column loop (64, 32, 16 and 8 wide, then
    single columns) and on each part of an 8 x 8 transposed tile, in every layout; 72 x 48 is
    a multiple of 8 (whole transposed tiles), so the narrow edges come from n alone."""
    seed = seed_of("width", n, dtype)
    shape = (72, 48)
    mask = random_mask(shape, 0.3, seed)
    w_raw = random_dense(shape, dtype, seed + 1)
    A = jaxcsb.CSB.fromdense(w_raw, mask, block_size=16)
    w = np.where(mask, w_raw.astype(np.float64), 0.0)
    for layout in LAYOUTS:
        x = jax.device_put(random_dense(dense_operand_shape(layout, shape, n), dtype, seed + 2))
        want, scale = reference(layout, w, x)
        assert_close(apply(layout, A, x), want, scale, dtype, f"{layout} n={n}")
