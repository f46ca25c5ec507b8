"""Conversions into and out of CSB round-trip exactly: dense (with and without a mask),
scipy.sparse (csr, coo, csc), BCOO/BCSR, COO triplets, transposed views, with_values, astype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import DTYPE_IDS, DTYPES, host_coordinates, random_dense, random_mask, seed_of
from jax.experimental import sparse

import jaxcsb

SHAPE = (45, 38)


def _w(dtype, seed, density=0.25):
    """A dense matrix with about ``density`` nonzeros (exact zeros elsewhere)."""
    mask = random_mask(SHAPE, density, seed)
    return np.where(mask, random_dense(SHAPE, dtype, seed + 1), np.zeros((), dtype)), mask


def _exact(actual, expected):
    """Bitwise equality of values (dtype included)."""
    actual = np.ascontiguousarray(np.asarray(actual))
    expected = np.ascontiguousarray(np.asarray(expected))
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_array_equal(actual.view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fromdense_todense_round_trip(dtype):
    w, mask = _w(dtype, seed_of("fromdense", dtype))
    A = jaxcsb.CSB.fromdense(w)
    assert A.shape == SHAPE and A.dtype == dtype and A.nnz == int(mask.sum())
    _exact(A.todense(), w)
    _exact(A.T.todense(), w.T)
    _exact(jax.jit(lambda A: A.todense())(A), w)


def test_fromdense_with_mask_keeps_explicit_zeros_as_nonzeros():
    """Inside a mask, zeros of w are stored entries of the structure (a pruned weight that
    happens to be 0 keeps its slot and receives gradients)."""
    seed = seed_of("mask zeros")
    w = random_dense(SHAPE, np.float32, seed)
    mask = random_mask(SHAPE, 0.3, seed + 1)
    zeros_inside = mask & (random_mask(SHAPE, 0.3, seed + 2))
    w[zeros_inside] = 0.0
    assert zeros_inside.any()
    A = jaxcsb.CSB.fromdense(w, mask)
    assert A.nnz == int(mask.sum())
    row, col = host_coordinates(A)
    stored = np.zeros(SHAPE, bool)
    stored[row, col] = True
    np.testing.assert_array_equal(stored, mask)
    _exact(A.todense(), np.where(mask, w, np.float32(0)))
    # The explicit zeros take part in SDDMM: their gradient slot is filled.
    a = jax.device_put(random_dense((SHAPE[0], 3), np.float32, seed + 3))
    b = jax.device_put(random_dense((3, SHAPE[1]), np.float32, seed + 4))
    g = jaxcsb.sddmm(a, b, A).todense()
    assert np.all(np.asarray(g)[zeros_inside] != 0)


@pytest.mark.parametrize("fmt", ["csr", "coo", "csc", "csr_array"])
def test_from_scipy_sparse_round_trip(fmt):
    seed = seed_of("scipy", fmt)
    w, _ = _w(np.float32, seed)
    m = {
        "csr": sp.csr_matrix,
        "coo": sp.coo_matrix,
        "csc": sp.csc_matrix,
        "csr_array": sp.csr_array,
    }[fmt](w)
    m.data[:3] = 0.0  # explicitly stored zeros stay in the pattern
    A = jaxcsb.CSB.from_scipy_sparse(m, block_size=16)
    assert A.shape == m.shape and A.nnz == m.nnz
    _exact(A.todense(), m.toarray())
    back = A.to_scipy_sparse()
    assert back.shape == m.shape and back.nnz == m.nnz and back.dtype == np.float32
    _exact(back.toarray(), m.toarray())
    # The same coordinates, explicit zeros included.
    got = set(zip(*(np.asarray(c).tolist() for c in (back.row, back.col)), strict=True))
    coo = m.tocoo()
    assert got == set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=DTYPE_IDS[1:])
def test_to_scipy_sparse_widens_half_types_exactly(dtype):
    """scipy has no bfloat16 or float16: the values come back as float32, exactly."""
    w, _ = _w(dtype, seed_of("scipy half", dtype))
    back = jaxcsb.CSB.fromdense(w).to_scipy_sparse()
    assert back.dtype == np.float32
    _exact(back.toarray(), w.astype(np.float32))


def test_from_scipy_sparse_with_dtype_converts_float64():
    w, _ = _w(np.float32, seed_of("scipy f64"))
    m = sp.csr_matrix(w.astype(np.float64))
    A = jaxcsb.CSB.from_scipy_sparse(m, dtype=jnp.bfloat16)
    assert A.dtype == jnp.bfloat16
    _exact(A.todense(), w.astype(jnp.bfloat16))


def _bcoo_todense(m):
    """A BCOO's dense form, scattered on the host (out-of-range padding dropped, as JAX
    does)."""
    indices, data = np.asarray(m.indices), np.asarray(m.data)
    keep = (indices[:, 0] < m.shape[0]) & (indices[:, 1] < m.shape[1])
    out = np.zeros(m.shape, data.dtype)
    np.add.at(out, (indices[keep, 0], indices[keep, 1]), data[keep])
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bcoo_round_trip(dtype):
    w, mask = _w(dtype, seed_of("bcoo", dtype))
    row, col = np.nonzero(mask)
    b = sparse.BCOO((jnp.asarray(w[row, col]), jnp.asarray(np.stack([row, col], 1))), shape=SHAPE)
    A = jaxcsb.CSB.from_bcoo(b)
    assert A.nnz == b.nse
    _exact(A.todense(), w)
    back = A.to_bcoo()
    assert isinstance(back, sparse.BCOO) and back.shape == SHAPE and back.nse == A.nnz
    _exact(_bcoo_todense(back), w)
    _exact(_bcoo_todense(A.T.to_bcoo()), w.T)


def test_from_bcoo_drops_jax_padding_and_accepts_bcsr():
    """BCOO.fromdense(x, nse=...) pads with entries whose index equals the shape; those are
    not part of the matrix. BCSR converts through BCOO."""
    w, _ = _w(np.float32, seed_of("bcoo padding"))
    nnz = int(np.count_nonzero(w))
    row, col = np.nonzero(w)
    # Five padding entries as bcoo_fromdense writes them: index (rows, cols), value 0.
    indices = np.concatenate([np.stack([row, col], 1), np.tile(SHAPE, (5, 1))])
    data = np.concatenate([w[row, col], np.zeros(5, np.float32)])
    padded = sparse.BCOO((jnp.asarray(data), jnp.asarray(indices)), shape=SHAPE)
    A = jaxcsb.CSB.from_bcoo(padded)
    assert A.nnz == nnz
    _exact(A.todense(), w)
    csr = sp.csr_matrix(w)
    bcsr = sparse.BCSR(
        (jnp.asarray(csr.data), jnp.asarray(csr.indices), jnp.asarray(csr.indptr)), shape=SHAPE
    )
    B = jaxcsb.CSB.from_bcoo(bcsr)
    assert B.nnz == nnz
    _exact(B.todense(), w)


def test_from_coo_any_input_order():
    seed = seed_of("coo order")
    w, mask = _w(np.float32, seed)
    row, col = np.nonzero(mask)
    perm = np.random.default_rng(seed).permutation(row.size)
    A = jaxcsb.CSB.from_coo(row[perm], col[perm], w[row, col][perm], SHAPE, block_size=32)
    _exact(A.todense(), w)


def test_transpose_twice_is_the_same_matrix_and_shares_arrays():
    w, _ = _w(np.float32, seed_of("transpose"))
    A = jaxcsb.CSB.fromdense(w)
    AT = A.T
    assert AT.shape == SHAPE[::-1] and AT.transposed and not A.transposed
    assert AT.values is A.values and AT.block_ptr is A.block_ptr and AT.local is A.local
    ATT = A.T.T
    assert ATT.shape == A.shape and not ATT.transposed
    _exact(ATT.todense(), w)
    assert A.transpose().shape == AT.shape


def test_with_values_keeps_structure():
    seed = seed_of("with_values")
    w, mask = _w(np.float32, seed)
    A = jaxcsb.CSB.fromdense(w)
    v = random_dense((A.nnz,), np.float32, seed + 5)
    B = A.with_values(jax.device_put(v))
    assert B.block_ptr is A.block_ptr and B.local is A.local
    row, col = host_coordinates(A)
    want = np.zeros(SHAPE, np.float32)
    want[row, col] = v
    _exact(B.todense(), want)
    # On a transposed view the values keep their storage order.
    _exact(A.T.with_values(v).todense(), want.T)


@pytest.mark.parametrize("src", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("dst", DTYPES, ids=DTYPE_IDS)
def test_astype(src, dst):
    w, _ = _w(src, seed_of("astype", src, dst))
    A = jaxcsb.CSB.fromdense(w).astype(dst)
    assert A.dtype == dst
    _exact(A.values, np.asarray(jaxcsb.CSB.fromdense(w).values).astype(dst))


def test_pytree_round_trip_and_tree_map():
    w, _ = _w(np.float32, seed_of("pytree"))
    A = jaxcsb.CSB.fromdense(w, block_size=32).T
    leaves, treedef = jax.tree_util.tree_flatten(A)
    assert len(leaves) == 3  # values, block_ptr, local
    B = jax.tree_util.tree_unflatten(treedef, leaves)
    assert B.shape == A.shape and B.block_size == 32 and B.transposed
    doubled = jax.tree_util.tree_map(lambda x: x * 2 if x.dtype == np.float32 else x, A)
    _exact(doubled.todense(), (2 * w).T)
    assert "CSB(shape=(38, 45)" in repr(A) and "transposed view" in repr(A)
