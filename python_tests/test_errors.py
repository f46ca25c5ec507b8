"""Bad input: one test per case, each checking the exception type and that the message names
the offending argument (and, where it helps, the expected and the actual value)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse

import jaxcsb


@pytest.fixture(scope="module")
def A():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((37, 53)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    return jaxcsb.CSB.fromdense(w, block_size=16)


def ones(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


# --- products: shapes -------------------------------------------------------------------------


def test_inner_dimension_mismatch_sparse_left(A):
    with pytest.raises(ValueError, match=r"b needs 53 rows, got b\.shape=\(52, 3\)"):
        jaxcsb.csb_matmul(A, ones(52, 3))


def test_inner_dimension_mismatch_transposed_sparse_left(A):
    with pytest.raises(ValueError, match=r"b needs 37 rows, got b\.shape=\(53, 3\)"):
        A.T @ ones(53, 3)


def test_inner_dimension_mismatch_sparse_right(A):
    with pytest.raises(
        ValueError, match=r"a needs a last dimension of 37, got a\.shape=\(2, 4, 53\)"
    ):
        ones(2, 4, 53) @ A


def test_inner_dimension_mismatch_sddmm(A):
    with pytest.raises(ValueError, match=r"a\.shape=\(37, 4\), b\.shape=\(5, 53\)"):
        jaxcsb.sddmm(ones(37, 4), ones(5, 53), A)


def test_sddmm_output_shape_mismatch(A):
    with pytest.raises(ValueError, match=r"pattern's shape \(37, 53\).*b\.shape=\(4, 52\)"):
        jaxcsb.sddmm(ones(37, 4), ones(4, 52), A)


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_sparse_left_needs_a_2d_dense_operand(A, rank):
    b = np.ones((53,) * rank, np.float32)
    with pytest.raises(ValueError, match=r"b must be a 2-D array"):
        A @ b


@pytest.mark.parametrize("rank", [0, 1])
def test_sparse_right_needs_rank_2_or_more(A, rank):
    a = np.ones((37,) * rank, np.float32)
    with pytest.raises(ValueError, match=r"a must have rank 2 or more"):
        a @ A


def test_sddmm_needs_2d_operands(A):
    with pytest.raises(ValueError, match=r"a and b must be 2-D, got a\.shape=\(37,\)"):
        jaxcsb.sddmm(ones(37), ones(4, 53), A)


# --- products: dtypes and operand kinds -------------------------------------------------------


def test_mixed_dtypes_sparse_left(A):
    with pytest.raises(
        TypeError, match=r"b has dtype bfloat16 but the CSB values have dtype float32"
    ):
        A @ jnp.ones((53, 3), jnp.bfloat16)


def test_mixed_dtypes_sparse_right(A):
    with pytest.raises(
        TypeError, match=r"a has dtype float16 but the CSB values have dtype float32"
    ):
        jnp.ones((3, 37), jnp.float16) @ A


def test_mixed_dtypes_sddmm(A):
    with pytest.raises(TypeError, match=r"b has dtype bfloat16"):
        jaxcsb.sddmm(ones(37, 4), jnp.ones((4, 53), jnp.bfloat16), A)


@pytest.mark.parametrize("dtype", [np.int32, np.float64])
def test_unsupported_dense_operand_dtype(A, dtype):
    with pytest.raises(TypeError, match=r"b must have dtype float32, bfloat16 or float16, got"):
        A @ np.ones((53, 3), dtype)


@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.bool_])
def test_unsupported_value_dtype_fromdense(dtype):
    with pytest.raises(TypeError, match=r"w must have dtype float32, bfloat16 or float16, got"):
        jaxcsb.CSB.fromdense(np.ones((4, 4), dtype))


def test_unsupported_value_dtype_from_coo():
    with pytest.raises(TypeError, match=r"values must have dtype .* got int64"):
        jaxcsb.CSB.from_coo([0], [1], np.array([3]), (2, 2))


def test_unsupported_value_dtype_from_scipy_sparse():
    with pytest.raises(TypeError, match=r"m\.data must have dtype .* got float64"):
        jaxcsb.CSB.from_scipy_sparse(sp.eye(3, format="csr"))


def test_unsupported_dtype_argument():
    with pytest.raises(TypeError, match=r"dtype must have dtype .* got int8"):
        jaxcsb.CSB.fromdense(np.eye(3, dtype=np.float32), dtype=np.int8)


def test_astype_float64_rejected(A):
    with pytest.raises(TypeError, match=r"dtype must have dtype .* got float64"):
        A.astype(np.float64)


def test_with_values_wrong_length(A):
    with pytest.raises(
        ValueError, match=rf"values must have shape \({A.nnz},\), got \({A.nnz - 1},\)"
    ):
        A.with_values(np.ones(A.nnz - 1, np.float32))


def test_with_values_integer_dtype(A):
    with pytest.raises(TypeError, match=r"values must have dtype .* got int32"):
        A.with_values(np.ones(A.nnz, np.int32))


def test_two_csb_operands(A):
    with pytest.raises(ValueError, match=r"exactly one CSB operand, got a: CSB and b: CSB"):
        A @ A.T


def test_no_csb_operand():
    with pytest.raises(ValueError, match=r"exactly one CSB operand, got a: ndarray and b: ndarray"):
        jaxcsb.csb_matmul(ones(2, 2), ones(2, 2))


@pytest.mark.parametrize("bad", ["hello", None, object()], ids=["str", "None", "object"])
def test_csb_matmul_of_a_non_array(A, bad):
    with pytest.raises(TypeError, match=r"b must be an array"):
        jaxcsb.csb_matmul(A, bad)


def test_csb_matmul_of_a_non_array_on_the_left(A):
    with pytest.raises(TypeError, match=r"a must be an array"):
        jaxcsb.csb_matmul("hello", A)


def test_sddmm_pattern_must_be_csb():
    with pytest.raises(ValueError, match=r"pattern must be a CSB matrix, got ndarray"):
        jaxcsb.sddmm(ones(2, 2), ones(2, 2), ones(2, 2))


def test_unknown_impl(A):
    with pytest.raises(ValueError, match=r"impl must be one of .* got 'cuda'"):
        jaxcsb.csb_matmul(A, ones(53, 2), impl="cuda")


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [8, 24, 512, 0, -16, True, 16.0, "16"])
def test_bad_block_size(block_size):
    with pytest.raises(ValueError, match=r"block_size must be"):
        jaxcsb.CSB.fromdense(np.eye(20, dtype=np.float32), block_size=block_size)


def test_fromdense_needs_2d():
    with pytest.raises(ValueError, match=r"w must be a 2-D array, got shape \(3,\)"):
        jaxcsb.CSB.fromdense(np.ones(3, np.float32))


def test_fromdense_mask_shape():
    with pytest.raises(ValueError, match=r"mask must have the shape of w \(3, 3\), got \(3, 2\)"):
        jaxcsb.CSB.fromdense(np.ones((3, 3), np.float32), np.ones((3, 2), bool))


def test_negative_shape():
    with pytest.raises(ValueError, match=r"shape must have non-negative dimensions"):
        jaxcsb.CSB.from_coo([], [], np.zeros(0, np.float32), (-1, 3))


def test_coo_lengths_differ():
    with pytest.raises(ValueError, match=r"must have one length, got 2, 1 and 1"):
        jaxcsb.CSB.from_coo([0, 1], [0], np.ones(1, np.float32), (2, 2))


def test_coo_row_index_out_of_range():
    with pytest.raises(ValueError, match=r"row indices must be < rows = 4, got 4"):
        jaxcsb.CSB.from_coo([0, 4], [0, 1], np.ones(2, np.float32), (4, 5))


def test_coo_column_index_out_of_range():
    with pytest.raises(ValueError, match=r"column indices must be < cols = 5, got 7"):
        jaxcsb.CSB.from_coo([0, 1], [7, 1], np.ones(2, np.float32), (4, 5))


def test_coo_negative_index():
    with pytest.raises(ValueError, match=r"row indices must be non-negative, got -1"):
        jaxcsb.CSB.from_coo([-1, 1], [0, 1], np.ones(2, np.float32), (4, 5))


def test_coo_float_indices():
    with pytest.raises(ValueError, match=r"column indices must hold integers, got dtype float64"):
        jaxcsb.CSB.from_coo([0, 1], [0.0, 1.0], np.ones(2, np.float32), (4, 5))


def test_duplicates_rejected_coo():
    """Duplicate coordinates are rejected, not summed: summing would hide a caller's bug."""
    with pytest.raises(ValueError, match=r"duplicate coordinate \(1, 2\)"):
        jaxcsb.CSB.from_coo([1, 0, 1], [2, 0, 2], np.ones(3, np.float32), (4, 5))


def test_duplicates_rejected_scipy_coo():
    m = sp.coo_matrix((np.ones(3, np.float32), ([1, 0, 1], [2, 0, 2])), shape=(4, 5))
    with pytest.raises(ValueError, match=r"duplicate coordinate \(1, 2\).*sum_duplicates"):
        jaxcsb.CSB.from_scipy_sparse(m)


def test_duplicates_rejected_scipy_csr():
    m = sp.csr_matrix(
        (np.ones(3, np.float32), np.array([2, 2, 0]), np.array([0, 0, 2, 3, 3])), shape=(4, 5)
    )
    assert not m.has_canonical_format
    with pytest.raises(ValueError, match=r"duplicate coordinate \(1, 2\)"):
        jaxcsb.CSB.from_scipy_sparse(m)


def test_duplicates_rejected_bcoo():
    m = sparse.BCOO((jnp.ones(3), jnp.array([[1, 2], [0, 0], [1, 2]])), shape=(4, 5))
    with pytest.raises(ValueError, match=r"duplicate coordinate \(1, 2\)"):
        jaxcsb.CSB.from_bcoo(m)


def test_scipy_index_out_of_range():
    m = sp.coo_matrix((np.ones(2, np.float32), ([0, 1], [0, 1])), shape=(4, 5))
    m.col[1] = 9  # scipy checks on construction only
    with pytest.raises(ValueError, match=r"column indices must be < cols = 5, got 9"):
        jaxcsb.CSB.from_scipy_sparse(m)


def test_bcoo_index_out_of_range_that_is_not_padding():
    m = sparse.BCOO((jnp.ones(2), jnp.array([[0, 0], [4, 1]])), shape=(4, 5))
    with pytest.raises(ValueError, match=r"row indices must be < rows = 4, got 4"):
        jaxcsb.CSB.from_bcoo(m)


def test_bcoo_negative_index():
    m = sparse.BCOO((jnp.ones(2), jnp.array([[0, 0], [1, -1]])), shape=(4, 5))
    with pytest.raises(ValueError, match=r"column indices must be non-negative, got -1"):
        jaxcsb.CSB.from_bcoo(m)


def test_bcoo_with_batch_dimensions():
    # Two batches of one entry each: indices (2, 1, 2) make n_batch = 1.
    m = sparse.BCOO((jnp.ones((2, 1)), jnp.zeros((2, 1, 2), jnp.int32)), shape=(2, 3, 3))
    assert m.n_batch == 1
    with pytest.raises(ValueError, match=r"m must be a 2-D BCOO with no batch or dense"):
        jaxcsb.CSB.from_bcoo(m)


def test_from_bcoo_of_something_else():
    with pytest.raises(ValueError, match=r"m must be a jax.experimental.sparse BCOO, got ndarray"):
        jaxcsb.CSB.from_bcoo(np.eye(2))


def test_from_scipy_sparse_of_something_else():
    with pytest.raises(ValueError, match=r"m must be a scipy.sparse matrix, got list"):
        jaxcsb.CSB.from_scipy_sparse([[1.0]])


# --- int32 limits, checked without allocating ---------------------------------------------------


def test_block_count_overflowing_int32_block_ptr():
    """2^24 x 2^24 with block_size 16 has 2^40 blocks: rejected before block_ptr exists."""
    empty = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match=r"has 1099511627776 blocks.*use a larger block_size"):
        jaxcsb.CSB.from_coo(empty, empty, np.zeros(0, np.float32), (2**24, 2**24), block_size=16)


def test_block_count_overflow_with_default_block_size():
    empty = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match=r"blocks; at most 2\^31 - 2 fit"):
        jaxcsb.CSB.from_coo(empty, empty, np.zeros(0, np.float32), (2**30, 2**30))


def test_dimension_overflowing_int32_coordinates():
    empty = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match=r"shape must have dimensions of at most 2\^31 - 1"):
        jaxcsb.CSB.from_coo(empty, empty, np.zeros(0, np.float32), (2**31, 16), block_size=256)
