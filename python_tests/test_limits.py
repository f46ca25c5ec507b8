"""Large matrices and the index limits (README.md, "Guarantees and limits / Size limits").

Coordinates and block_ptr are int32: dimensions up to 2^31 - 1, nnz up to 2^31 - 1, blocks up
to 2^31 - 2. Products address the dense operands and the output with 64-bit offsets, so
rows x cols and n x rows may exceed 2^31. The limits that fail are checked from the sizes,
before anything is allocated (test_errors.py has the dimension and block-count cases).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import assert_close, f64, seed_of

import jaxcsb

F32 = np.dtype(np.float32)


def scipy_products(S, b, bt, x, a_dense, b_dense, row, col):
    """float64 (A @ b, A.T @ bt, x @ A, sddmm values) and their scales, from scipy."""
    S_abs = abs(S)
    b64, bt64, x64 = f64(b), f64(bt), f64(x)
    products = {
        "A@B": (S @ b64, S_abs @ np.abs(b64)),
        "AT@B": (S.T @ bt64, S_abs.T @ np.abs(bt64)),
        "X@A": ((S.T @ x64.T).T, (S_abs.T @ np.abs(x64).T).T),
    }
    a64, bd64 = f64(a_dense), f64(b_dense)
    sddmm = np.einsum("en,en->e", a64[row], bd64[:, col].T)
    scale = np.einsum("en,en->e", np.abs(a64[row]), np.abs(bd64[:, col].T))
    products["sddmm"] = (sddmm, scale)
    return products


def check_large(shape, nnz, n, seed, *, corners=True):
    """A random (shape) matrix with nnz nonzeros (and its four corners): every product on the
    default path against scipy in float64, and the coordinates back exactly."""
    rows, cols = shape
    rng = np.random.default_rng(seed)
    flat = np.unique(rng.integers(0, rows * cols, size=nnz, dtype=np.int64))
    if corners:
        flat = np.union1d(flat, [0, cols - 1, (rows - 1) * cols, rows * cols - 1])
    row, col = np.divmod(flat, cols)
    values = rng.standard_normal(flat.size).astype(F32)
    A = jaxcsb.CSB.from_coo(row, col, values, shape)
    assert A.shape == shape and A.nnz == flat.size
    # The stored coordinates come back exactly (in storage order: compare as sets of pairs).
    coo = A.to_scipy_sparse()
    got = np.sort(coo.row.astype(np.int64) * cols + coo.col)
    assert np.array_equal(got, flat)
    S = sp.csr_matrix((values.astype(np.float64), (row, col)), shape=shape)
    b = rng.standard_normal((cols, n)).astype(F32)
    bt = rng.standard_normal((rows, n)).astype(F32)
    x = rng.standard_normal((n, rows)).astype(F32)
    a_dense = rng.standard_normal((rows, n)).astype(F32)
    b_dense = rng.standard_normal((n, cols)).astype(F32)
    srow, scol = (np.asarray(v).astype(np.int64) for v in A.coordinates())
    want = scipy_products(S, b, bt, x, a_dense, b_dense, srow, scol)
    got = {
        "A@B": A @ b,
        "AT@B": A.T @ bt,
        "X@A": x @ A,
        "sddmm": jaxcsb.sddmm(a_dense, b_dense, A).values,
    }
    for name, out in got.items():
        assert_close(out, *want[name], F32, f"{shape} {name}")


def test_rows_times_cols_beyond_int32_with_few_nonzeros():
    """100,000 x 50,000 (5e9 entries, beyond 2^32) with 200 nonzeros and the four corners."""
    check_large((100_000, 50_000), 200, 3, seed_of("5e9 entries"))


def test_200k_square_at_99_999_percent_sparsity():
    """200,000 x 200,000 with 400,000 nonzeros (and the corners): A @ B, A.T @ B, x @ A and
    SDDMM on the default path, against scipy. About 2 s on two CPU cores."""
    t0 = time.perf_counter()
    check_large((200_000, 200_000), 400_000, 8, seed_of("200k"))
    assert time.perf_counter() - t0 < 60


def test_nnz_beyond_int32_is_rejected_before_anything_is_allocated():
    """2^31 coordinates as zero-stride views (no memory): the size check comes first."""
    nnz = 2**31
    index = np.broadcast_to(np.int64(0), (nnz,))
    values = np.broadcast_to(np.float32(1.0), (nnz,))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"nnz must be at most 2\^31 - 1 .* got 2147483648"):
        jaxcsb.CSB.from_coo(index, index, values, (2**20, 2**20))
    assert time.perf_counter() - t0 < 1.0  # no pass over 2^31 entries


def test_largest_dimension_is_accepted():
    """A dimension of exactly 2^31 - 1 builds, and its coordinates come back exactly on the host
    and under jit (int32 arithmetic that stays below 2^31). A product would need a dense
    operand of 2^31 - 1 rows: the output-size case below covers 64-bit offsets."""
    rows = 2**31 - 1
    A = jaxcsb.CSB.from_coo(
        [0, rows - 1], [0, 3], np.array([2.0, 3.0], F32), (rows, 4), block_size=256
    )
    assert A.shape == (rows, 4) and A.validate() is A
    want = [(0, 0), (rows - 1, 3)]
    for row, col in (A.coordinates(), jax.jit(lambda A: A.coordinates())(A)):
        pairs = zip(np.asarray(row).tolist(), np.asarray(col).tolist(), strict=True)
        assert sorted(pairs) == want
    coo = A.T.to_scipy_sparse()
    assert coo.shape == (4, rows) and sorted(zip(coo.col, coo.row, strict=True)) == want


# The output of the case below: 2^31 + 32768 bfloat16 elements.
OUTPUT_BYTES = (2**31 + 2**15) * 2


def _memory_shortfall() -> str | None:
    """Why the 4.3 GB case cannot run here, or None when it can (with room to spare)."""
    import psutil

    available = psutil.virtual_memory().available
    if available < 3 * OUTPUT_BYTES:
        return f"needs 13 GB of available host memory, {available / 2**30:.1f} GiB free"
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        if free < 1.5 * OUTPUT_BYTES:
            return f"needs 6.5 GB of free device memory, {free / 2**30:.1f} GiB free"
    return None


@pytest.mark.skipif(
    os.environ.get("JAXCSB_TEST_LARGE") == "0", reason="JAXCSB_TEST_LARGE=0 skips the 4.3 GB case"
)
@pytest.mark.parametrize("layout", ["A@B", "X@AT"])
def test_output_beyond_2_31_elements(layout):
    """out_dim x n = 65537 x 32768 = 2^31 + 32768 bfloat16 elements: the last output row lies
    past offset 2^31, where 32-bit offsets would wrap. Rows 0 and 65536 are nonzero; the rows
    on either side of offset 2^31 are checked exactly. About 5 s per layout on two CPU cores
    (mostly the first touch of the output's pages)."""
    shortfall = _memory_shortfall()
    if shortfall:
        pytest.skip(f"output of 4.3 GB: {shortfall}")
    m, n = 2**16 + 1, 2**15
    dtype = np.dtype(jnp.bfloat16)
    A = jaxcsb.CSB.from_coo([0, m - 1], [0, 0], np.array([1.0, 2.0], dtype), (m, 1))
    ramp = np.arange(1, n + 1).astype(dtype)  # exact in bfloat16 up to 256, then rounded
    if layout == "A@B":
        out = A @ jax.device_put(ramp.reshape(1, n))
        assert out.shape == (m, n)
        row = lambda i: np.asarray(out[i])  # noqa: E731
    else:
        out = jax.device_put(ramp.reshape(n, 1)) @ A.T
        assert out.shape == (n, m)
        row = lambda i: np.asarray(out[:, i])  # noqa: E731
    np.testing.assert_array_equal(row(0), ramp)
    np.testing.assert_array_equal(row(m - 1), (2 * ramp.astype(np.float32)).astype(dtype))
    for i in (1, m - 3, m - 2):
        assert not np.asarray(row(i), np.float32).any(), f"output row {i} was written"
