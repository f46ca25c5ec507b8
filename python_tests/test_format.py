"""The stored layout: the invariants the kernels rely on, the memory budget and the default
block size."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BLOCK_SIZES, random_dense, random_mask, seed_of

import jaxcsb
from jaxcsb._build import GPU_TENSOR_MIN_DENSITY, default_block_size


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_layout_invariants(block_size):
    """block_ptr rises from 0 to nnz over the row-major block grid; local is uint16
    (row << 8 | col) inside the (possibly clipped) block; nonzeros inside a block are sorted
    by (row, col); values are in the same order."""
    seed = seed_of("layout", block_size)
    shape = (300, 170)
    mask = random_mask(shape, 0.1, seed, empty_rows=range(40, 90))
    w = random_dense(shape, np.float32, seed + 1)
    A = jaxcsb.CSB.fromdense(w, mask, block_size=block_size)
    bp, local, values = (np.asarray(a) for a in (A.block_ptr, A.local, A.values))
    beta = block_size
    brows, bcols = -(-shape[0] // beta), -(-shape[1] // beta)
    assert bp.dtype == np.int32 and bp.shape == (brows * bcols + 1,)
    assert local.dtype == np.uint16 and local.shape == (A.nnz,)
    assert bp[0] == 0 and bp[-1] == A.nnz and np.all(np.diff(bp) >= 0)
    for b in range(brows * bcols):
        lr, lc = local[bp[b] : bp[b + 1]] >> 8, local[bp[b] : bp[b + 1]] & 0xFF
        r0, c0 = b // bcols * beta, b % bcols * beta
        assert np.all(lr < min(beta, shape[0] - r0)) and np.all(lc < min(beta, shape[1] - c0))
        key = lr.astype(np.int64) * 256 + lc
        assert np.all(np.diff(key) > 0), f"block {b} not sorted by (row, col)"
        np.testing.assert_array_equal(values[bp[b] : bp[b + 1]], w[r0 + lr, c0 + lc])
    # Memory: sizeof(value) + 2 bytes per nonzero, plus 4 bytes per block for block_ptr.
    assert A.values.dtype.itemsize + A.local.dtype.itemsize == 4 + 2
    assert len(jax.tree_util.tree_leaves(A)) == 3 and bp.dtype == np.int32


@pytest.mark.parametrize(
    "sparsity, on_cpu, on_gpu, on_gpu_16bit",
    [
        (0.5, 16, 64, 64),
        (0.7, 32, 64, 64),
        (0.8, 64, 64, 64),
        (0.9, 128, 128, 64),
        (0.95, 256, 128, 64),
        (0.98, 256, 128, 64),
    ],
)
def test_default_block_size_examples(sparsity, on_cpu, on_gpu, on_gpu_16bit):
    """The documented heuristic: density * beta >= 8 at the smallest such beta, at most 128
    for float32 and 64 for 16-bit values on a GPU, and 64 there from a density of 1/8 on."""
    shape = (1024, 1024)
    nnz = int(round((1 - sparsity) * shape[0] * shape[1]))
    assert default_block_size(shape, nnz, "cpu") == on_cpu
    assert default_block_size(shape, nnz, "gpu") == on_gpu
    for dtype in (jnp.bfloat16, np.float16):
        assert default_block_size(shape, nnz, "cpu", dtype) == on_cpu
        assert default_block_size(shape, nnz, "gpu", dtype) == on_gpu_16bit
    here = on_gpu if jax.default_backend() == "gpu" else on_cpu
    assert default_block_size(shape, nnz) == here


def test_default_block_size_on_a_gpu_is_the_tensor_cores_from_a_density_of_an_eighth():
    """64 from a density of 1/8 on, within the matrix's size; the density rule below it."""
    shape = (1024, 1024)
    eighth = shape[0] * shape[1] // 8
    for dtype in (np.float32, jnp.bfloat16):
        assert default_block_size(shape, eighth, "gpu", dtype) == 64
        assert default_block_size(shape, shape[0] * shape[1], "gpu", dtype) == 64
        assert default_block_size((40, 40), 1600, "gpu", dtype) == 64
        assert default_block_size((3, 5), 15, "gpu", dtype) == 16
    assert default_block_size(shape, eighth - 1, "gpu") == 128
    assert default_block_size(shape, eighth, "cpu") == 64
    assert default_block_size(shape, shape[0] * shape[1] // 2, "cpu") == 16


def test_default_block_size_uses_the_kernels_tensor_core_density():
    """GPU_TENSOR_MIN_DENSITY mirrors kTensorMinDensityF32, the density from which the CUDA
    kernels run float32 products on the tensor cores."""
    header = Path(__file__).resolve().parents[1] / "cuda" / "cuda_config.h"
    if not header.is_file():
        pytest.skip(f"{header} is not here: the tests run outside the source tree")
    match = re.search(r"constexpr double kTensorMinDensityF32 = ([0-9.]+);", header.read_text())
    assert match, f"kTensorMinDensityF32 not found in {header}"
    assert float(match.group(1)) == GPU_TENSOR_MIN_DENSITY


def test_default_block_size_on_a_gpu_stays_64_below_a_dimension_of_65():
    """Past 64 only where the smaller dimension fills the block."""
    nnz = int(0.1 * 64 * 576)
    assert default_block_size((64, 576), nnz, "gpu") == 64
    assert default_block_size((576, 64), nnz, "gpu") == 64
    assert default_block_size((65, 576), nnz, "gpu") == 128
    assert default_block_size((64, 576), nnz, "cpu") == 128


def test_default_block_size_follows_the_values_dtype():
    """fromdense picks the block size for the dtype the values are stored in."""
    rng = np.random.default_rng(seed_of("default-block-dtype"))
    w = np.where(rng.random((256, 256)) < 0.05, rng.standard_normal((256, 256)), 0.0)
    gpu = jax.default_backend() == "gpu"
    assert jaxcsb.CSB.fromdense(w.astype(np.float32)).block_size == (128 if gpu else 256)
    assert jaxcsb.CSB.fromdense(w.astype(jnp.bfloat16)).block_size == (64 if gpu else 256)


def test_default_block_size_takes_other_dtypes_as_float32():
    """A layer asked for float64 without jax_enable_x64 runs in float32."""
    assert default_block_size((1024, 1024), 100_000, "gpu", np.float64) == 128


def test_default_block_size_is_capped_by_the_matrix_size():
    assert default_block_size((40, 40), 1) == 64
    assert default_block_size((3, 5), 1) == 16
    assert default_block_size((0, 0), 0) == 16
    w = np.zeros((40, 40), np.float32)
    w[3, 7] = 1.0
    assert jaxcsb.CSB.fromdense(w).block_size == 64
