"""Host-side construction of the CSB arrays from coordinates, and the default block size."""

from __future__ import annotations

import math

import numpy as np

from ._dtypes import HALF_DTYPES, check_value_dtype

INT32_MAX = 2**31 - 1
BLOCK_SIZES = (16, 32, 64, 128, 256)


def check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise ValueError(f"block_size must be an int in {BLOCK_SIZES}, got {block_size!r}")
    if int(block_size) not in BLOCK_SIZES:
        raise ValueError(
            f"block_size must be a power of two from 16 to 256 {BLOCK_SIZES}, got {block_size}"
        )
    return int(block_size)


def check_shape(shape) -> tuple[int, int]:
    try:
        rows, cols = (int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair of ints (rows, cols), got {shape!r}") from None
    if rows < 0 or cols < 0:
        raise ValueError(f"shape must have non-negative dimensions, got {shape!r}")
    if max(rows, cols) > INT32_MAX:
        raise ValueError(
            f"shape must have dimensions of at most 2^31 - 1 (coordinates are int32), got {shape!r}"
        )
    return rows, cols


# Largest default block size on a GPU, per value type. Larger blocks mean fewer, longer work
# items, and products run on tensor cores only at block sizes up to 64. Float32 gains from 128
# at 90% sparsity and sparser (the default picks 128 there): the wide SpMM stages a beta x 128
# tile of the dense operand for every CSB block, and a block of 128 shares it among 4x the
# nonzeros (H100, 4096 x 1024, n = 4096: 0.62 -> 0.53 ms at 90%, 0.48 -> 0.35 ms at 95%,
# 0.41 -> 0.26 ms at 98%; the SDDMM runs as fast or faster; float32 on tensor cores at 64, in
# three TF32 products, takes 0.72-0.82 ms at 90%), at the price of small n (inference at a
# batch of 1 to 64 runs 1.3-2.5x slower than at 64). Beta 256 ran SpMM 1.4-3.7x slower than
# 128 from 95% sparsity down. The CPU kernels gain from every doubling up to 256 (fewer, longer
# rows of work).
# Dtypes other than the 16-bit ones count as float32: a layer's float64 (without
# jax_enable_x64) runs in it, and the constructors reject the rest.
GPU_MAX_DEFAULT_BLOCK_SIZE = 128
GPU_TENSOR_MAX_BLOCK_SIZE = 64  # the tensor-core kernels' largest block
GPU_MAX_DEFAULT_BLOCK_SIZE_16BIT = GPU_TENSOR_MAX_BLOCK_SIZE
# From this density on (cuda_config.h, kTensorMinDensityF32; test_format.py checks that the two
# agree), a GPU runs float32 products on the tensor cores too, which multiply every block as a dense
# tile: there the largest block they take, 64, leaves the fewest tiles and barriers. H100,
# kernel_check bench, SpMM at n >= 64: density 0.5, 2048 x 512 and 512 x 2048, n = 2048: float32
# 0.10 ms at 64 against 0.12-0.17 at 32 and 0.26-0.31 at 16; density 0.3, 4096 x 1024, n = 4096:
# float32 0.61-0.68 against 0.88-1.08 ms at 32, bfloat16 0.27-0.34 against 0.43-0.47 ms. A training
# step's three products at density 0.5, n = 2048: 512 x 512 0.10 ms at 64 against 0.14 at 32,
# 2048 x 512 0.30 against 0.41 (feature-major). What it costs: float32 at n = 16, 1.1x the time at
# 32, the float32 transposed product at n = 1, 1.4x, and the batch-leading products of a 512 x 512
# layer at n = 512, 1.2x.
GPU_TENSOR_MIN_DENSITY = 1 / 8


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(x, 1))))


def default_block_size(
    shape: tuple[int, int], nnz: int, platform: str | None = None, dtype=np.float32
) -> int:
    """The block size used when none is given.

    The smallest power of two from 16 to 256 at which a block holds, on average, at least 8
    nonzeros per block row (density * beta >= 8). Each row of the dense operand that a kernel
    stages for a block is then reused by about 8 nonzeros, and the kernels' per-row work (one
    load and store of an output row's slice of accumulators) is shared by 8 multiply-adds.
    Measured at 90% sparsity (2048 x 512, n = 256, CPU): 32 -> 14, 64 -> 21, 128 -> 25 and
    256 -> 27 GFLOP/s on one core. Examples: 50% sparsity -> 16, 80% -> 64, 90% -> 128, 95%
    and sparser -> 256. Never larger than the matrix's larger dimension rounded up to a power
    of two (a 40 x 40 matrix gets 64 at most). When ``platform`` (by default
    ``jax.default_backend()``, where the matrix will run) is "gpu", at most 128 for float32
    values and 64 for bfloat16 and float16 ``dtype`` (the tensor-core kernels' largest block),
    and larger than 64 only where the smaller dimension fills such a block (a 64 x 576
    convolution weight at 128 leaves half of every block's rows empty: 1.25x slower); and 64
    from a density of 1/8 on, where the GPU's tensor cores take the products (50% and 80%
    sparsity -> 64).
    """
    if platform is None:
        import jax

        platform = jax.default_backend()
    dtype = np.dtype(dtype)
    rows, cols = shape
    density = nnz / max(1, rows * cols)
    cap = max(16, _pow2_at_least(max(rows, cols)))
    if platform == "gpu":
        fill_cap = max(64, _pow2_at_least(min(rows, cols)))
        sixteen = dtype in HALF_DTYPES
        dtype_cap = GPU_MAX_DEFAULT_BLOCK_SIZE_16BIT if sixteen else GPU_MAX_DEFAULT_BLOCK_SIZE
        cap = min(cap, dtype_cap, fill_cap)
        if density >= GPU_TENSOR_MIN_DENSITY:
            return min(GPU_TENSOR_MAX_BLOCK_SIZE, cap)
    for beta in BLOCK_SIZES:
        if density * beta >= 8 or beta >= cap:
            return beta
    return BLOCK_SIZES[-1]


def layer_block_size(shape: tuple[int, int], nnz: int, dtype, param_dtype) -> int:
    """The default block size of a layer's kernel, for the dtype that its products run in:
    ``dtype`` when given, else ``param_dtype``."""
    return default_block_size(shape, nnz, dtype=param_dtype if dtype is None else dtype)


def _check_index_array(name, idx, limit, dim_name):
    idx = np.asarray(idx)
    if idx.size and idx.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {idx.dtype}")
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0:
            raise ValueError(f"{name} must be non-negative, got {lo}")
        if hi >= limit:
            raise ValueError(f"{name} must be < {dim_name} = {limit}, got {hi}")
    return idx.astype(np.int64)


def csb_arrays_from_coo(row, col, values, shape, block_size=None, dtype=None):
    """Sorts COO triplets into the CSB layout.

    Returns (values, block_ptr, local, block_size) as numpy arrays. Duplicate coordinates are
    rejected with ValueError: summing them silently would hide a bug in the caller, and
    ``scipy.sparse`` users can call ``sum_duplicates()`` first.
    """
    rows, cols = check_shape(shape)
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    # Sizes first: nothing is allocated (or converted) for input that cannot fit.
    nnz = values.shape[0]
    if nnz > INT32_MAX:
        raise ValueError(f"nnz must be at most 2^31 - 1 (int32 block_ptr), got {nnz}")
    for name, idx in (("row indices", row), ("column indices", col)):
        if np.ndim(idx) != 1:
            raise ValueError(f"{name} must be a 1-D array of indices, got shape {np.shape(idx)}")
    if not (len(row) == len(col) == nnz):
        raise ValueError(
            f"row indices, column indices and values must have one length, got "
            f"{len(row)}, {len(col)} and {nnz}"
        )
    if dtype is not None:
        values = values.astype(check_value_dtype(dtype, "dtype"))
    check_value_dtype(values.dtype, "values")
    row = _check_index_array("row indices", row, rows, "rows")
    col = _check_index_array("column indices", col, cols, "cols")
    if block_size is None:
        block_size = default_block_size((rows, cols), nnz, dtype=values.dtype)
    beta = check_block_size(block_size)
    block_rows, block_cols = -(-rows // beta), -(-cols // beta)
    num_blocks = block_rows * block_cols
    if num_blocks + 1 > INT32_MAX:
        raise ValueError(
            f"shape {(rows, cols)} with block_size {beta} has {num_blocks} blocks; at most "
            f"2^31 - 2 fit the int32 block_ptr: use a larger block_size"
        )
    block = (row // beta) * block_cols + col // beta
    lrow, lcol = row % beta, col % beta
    order = np.lexsort((lcol, lrow, block))
    block, lrow, lcol = block[order], lrow[order], lcol[order]
    if nnz > 1:
        same = (block[1:] == block[:-1]) & (lrow[1:] == lrow[:-1]) & (lcol[1:] == lcol[:-1])
        if same.any():
            k = int(np.flatnonzero(same)[0]) + 1
            r, c = row[order][k], col[order][k]
            raise ValueError(
                f"duplicate coordinate ({r}, {c}) in the input: jaxcsb rejects duplicates "
                f"(sum them first, e.g. with scipy's sum_duplicates())"
            )
    block_ptr = np.zeros(num_blocks + 1, np.int32)
    np.cumsum(np.bincount(block, minlength=num_blocks), out=block_ptr[1:])
    local = ((lrow << 8) | lcol).astype(np.uint16)
    return values[order], block_ptr, local, beta
