"""Loading .smtx files: malformed files raise ValueError naming the problem, and the 42 DLMC
matrices load with the file's exact pattern (products checked on a few of them)."""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    LAYOUTS,
    apply,
    assert_close,
    dense_operand_shape,
    dlmc_dir,
    host_coordinates,
    random_dense,
    reference,
    sddmm_reference,
    seed_of,
)

import jaxcsb

# --- malformed files --------------------------------------------------------------------------

MALFORMED = {
    "empty_file": ("", r"the header must be 'nrows, ncols, nnz', got ''"),
    "header_not_integers": ("a, b, c\n0 1\n0\n", r"the header must be integers"),
    "header_two_numbers": ("2, 3\n0 0 0\n\n", r"the header must be 'nrows, ncols, nnz'"),
    "negative_count": ("2, -3, 1\n0 1 1\n0\n", r"the header has a negative count"),
    "too_few_row_offsets": ("2, 3, 1\n0 1\n2\n", r"expected nrows \+ 1 = 3 row offsets, got 2"),
    "missing_lines": ("2, 3, 1\n", r"expected nrows \+ 1 = 3 row offsets, got 0"),
    "too_many_column_indices": (
        "2, 3, 1\n0 1 1\n2 0\n",
        r"expected nnz = 1 column indices, got 2",
    ),
    "column_index_equal_to_ncols": (
        "2, 3, 2\n0 1 2\n2 3\n",
        r"column index 3 is outside 0\.\.ncols - 1 = 2",
    ),
    "negative_column_index": ("2, 3, 2\n0 1 2\n-1 0\n", r"column index -1 is outside"),
    "decreasing_row_offsets": (
        "3, 3, 2\n0 2 1 2\n0 1\n",
        r"row offsets must rise from 0 to nnz = 2",
    ),
    "row_offsets_not_ending_at_nnz": ("2, 3, 2\n0 1 1\n0 1\n", r"row offsets must rise"),
    "non_integer_column_index": ("2, 3, 1\n0 1 1\n1.5\n", r"column indices must be integers"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_smtx(tmp_path, case):
    text, match = MALFORMED[case]
    path = tmp_path / f"{case}.smtx"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"malformed \.smtx file .*" + match):
        jaxcsb.load_smtx(path)


def test_smtx_duplicate_column_in_a_row(tmp_path):
    path = tmp_path / "dup.smtx"
    path.write_text("2, 3, 2\n0 2 2\n1 1\n")
    with pytest.raises(ValueError, match=r"duplicate coordinate \(0, 1\)"):
        jaxcsb.load_smtx(path)


def test_small_smtx_loads_its_pattern_with_seeded_values(tmp_path):
    path = tmp_path / "small.smtx"
    path.write_text("3, 4, 4\n0 2 2 4\n3 0 1 2\n")
    A = jaxcsb.load_smtx(path, seed=5)
    assert A.shape == (3, 4) and A.nnz == 4 and A.dtype == jnp.float32
    pattern = np.asarray(A.todense()) != 0
    want = np.zeros((3, 4), bool)
    want[[0, 0, 2, 2], [3, 0, 1, 2]] = True
    np.testing.assert_array_equal(pattern, want)
    again = jaxcsb.load_smtx(path, seed=5)
    np.testing.assert_array_equal(np.asarray(again.values), np.asarray(A.values))
    other = jaxcsb.load_smtx(path, seed=6)
    assert not np.array_equal(np.asarray(other.values), np.asarray(A.values))
    half = jaxcsb.load_smtx(path, dtype=jnp.bfloat16, seed=5, block_size=32)
    assert half.dtype == jnp.bfloat16 and half.block_size == 32
    np.testing.assert_array_equal(
        np.asarray(half.values), np.asarray(A.values).astype(jnp.bfloat16)
    )


# --- the DLMC sample ----------------------------------------------------------------------------

DLMC = dlmc_dir()
DLMC_FILES = sorted(p.relative_to(DLMC).as_posix() for p in DLMC.rglob("*.smtx")) if DLMC else []
NO_DLMC = (
    "DLMC sample not found: set JAXCSB_DLMC_DIR or put it at ../shared/dlmc beside the repository"
)


def read_csr(path):
    """The file's CSR arrays, parsed independently of jaxcsb."""
    with open(path) as f:
        header, indptr, indices = (f.readline() for _ in range(3))
    nrows, ncols, nnz = (int(v) for v in header.split(","))
    return (
        (nrows, ncols),
        nnz,
        np.array(indptr.split(), np.int64),
        np.array(indices.split(), np.int64),
    )


@pytest.mark.skipif(DLMC is None, reason=NO_DLMC)
def test_dlmc_sample_is_complete():
    assert len(DLMC_FILES) == 42
    with open(DLMC / "dlmc_subset.csv") as f:
        listed = {row["path"].removeprefix("dlmc/") for row in csv.DictReader(f)}
    assert listed == set(DLMC_FILES)


@pytest.mark.skipif(DLMC is None, reason=NO_DLMC)
@pytest.mark.parametrize("name", DLMC_FILES or ["none"])
def test_dlmc_pattern_round_trip(name):
    """Shape, nnz and the CSR arrays of every file survive load_smtx exactly."""
    shape, nnz, indptr, indices = read_csr(DLMC / name)
    A = jaxcsb.load_smtx(DLMC / name)
    assert A.shape == shape and A.nnz == nnz
    row, col = host_coordinates(A)
    order = np.lexsort((col, row))
    row, col = row[order], col[order]
    np.testing.assert_array_equal(np.searchsorted(row, np.arange(shape[0] + 1)), indptr)
    # Within a row the file need not be sorted; compare sorted column lists.
    file_cols = np.concatenate(
        [np.sort(indices[indptr[r] : indptr[r + 1]]) for r in range(shape[0])]
    )
    np.testing.assert_array_equal(col, file_cols)


DLMC_PRODUCT_FILES = [
    "rn50/magnitude_pruning/0.95/bottleneck_2_block_group1_1_1.smtx",  # 64 x 576
    "transformer/magnitude_pruning/0.98/"
    "body_encoder_layer_0_self_attention_multihead_attention_q_fully_connected.smtx",
    "transformer/random_pruning/0.9/body_encoder_layer_0_ffn_conv2_fully_connected.smtx",
]


@pytest.mark.skipif(DLMC is None, reason=NO_DLMC)
@pytest.mark.parametrize(
    ("name", "dtype"),
    [(name, np.float32) for name in DLMC_FILES or ["none"]]
    + [(name, jnp.bfloat16) for name in DLMC_PRODUCT_FILES],
)
def test_dlmc_products(name, dtype):
    """Every product and both SDDMMs on every DLMC matrix in float32 (and on three in
    bfloat16) against float64, within the documented tolerance."""
    dtype = np.dtype(dtype)
    seed = seed_of("dlmc", name, dtype)
    A = jaxcsb.load_smtx(DLMC / name, dtype=dtype, seed=seed)
    w = np.asarray(A.todense()).astype(np.float64)
    n = 8
    for layout in LAYOUTS:
        x = jax.device_put(random_dense(dense_operand_shape(layout, A.shape, n), dtype, seed))
        want, scale = reference(layout, w, x)
        assert_close(apply(layout, A, x), want, scale, dtype, f"{name} {layout}")
    for transposed in (False, True):
        P = A.T if transposed else A
        a = jax.device_put(random_dense((P.shape[0], n), dtype, seed + 1))
        b = jax.device_put(random_dense((n, P.shape[1]), dtype, seed + 2))
        want, scale = sddmm_reference(A, a, b, transposed)
        got = jaxcsb.sddmm(a, b, P).values
        assert_close(got, want, scale, dtype, f"{name} sddmm transposed={transposed}")
