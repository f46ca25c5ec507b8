"""Work units: the precomputed split of each product direction into pieces of similar cost.

A pruned pattern is fixed for many steps, so the split is computed once on the host when the
matrix is built and stored with it. For one direction (forward: lines are block-rows;
transposed: lines are block-columns) the blocks are enumerated line by line; a unit is a range
of consecutive positions inside one line, and the array holds the boundaries of the units
(int32, nunits + 1 entries). Every line has at least one unit, so kernels that give one unit to
one worker also cover (and zero) empty lines; heavy lines are cut into several units whose
partial sums the kernels reduce in a fixed order.

No kernel reads the units at present: the CUDA kernels cut a line among a cluster's thread
blocks from ``block_ptr``, weighing each block by its nonzeros and its staging, and the CPU
kernels split their work from ``block_ptr`` too. The units stay in the format (its pytree,
validation and checkpoints) as its precomputed schedule for a kernel that balances work across
lines: in the transposed direction no prefix sum of nonzeros exists to search (``block_ptr``
runs in block-row order), so such a cut needs one computed ahead.
"""

from __future__ import annotations

import numpy as np


def unit_target_nnz(nnz: int, block_size: int) -> int:
    """Nonzeros per unit: about 2048 units in all (enough to fill 132 SMs several times over
    at small N), but never less than a quarter of a full block, below which the per-unit
    overhead (staging, the reduction of partial sums) dominates."""
    return max(block_size * block_size // 4, -(-nnz // 2048), 1)


def line_units(block_nnz: np.ndarray, target: int) -> np.ndarray:
    """Unit boundaries for blocks given as a (lines, line_length) array of nonzero counts."""
    lines, length = block_nnz.shape
    if lines == 0:
        return np.zeros(1, np.int32)
    before = np.cumsum(block_nnz, axis=1) - block_nnz  # nonzeros of the line before each block
    bucket = before // target
    starts = np.ones_like(block_nnz, dtype=bool)
    starts[:, 1:] = bucket[:, 1:] != bucket[:, :-1]
    if length == 0:
        return np.zeros(lines + 1, np.int32)
    positions = np.flatnonzero(starts.reshape(-1))
    return np.append(positions, lines * length).astype(np.int32)


def build_units(block_ptr: np.ndarray, block_rows: int, block_cols: int, block_size: int):
    """Returns (row_units, col_units): the forward and the transposed direction's units."""
    counts = np.diff(block_ptr).reshape(block_rows, block_cols)
    target = unit_target_nnz(int(block_ptr[-1]), block_size)
    return line_units(counts, target), line_units(np.ascontiguousarray(counts.T), target)
