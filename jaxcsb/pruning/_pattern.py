"""A pruned layer's pattern on the host: the CSB index arrays of a mask and the coordinates of
the stored entries, in numpy, so the layers build and inspect patterns without compiling
anything and with constants even when ``init`` is traced."""

from __future__ import annotations

import numpy as np

from .._build import csb_arrays_from_coo


def host_coordinates(block_ptr, local, shape, block_size) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of every stored entry, in storage order (numpy int64)."""
    block_ptr, local = np.asarray(block_ptr), np.asarray(local).astype(np.int64)
    block_cols = max(-(-shape[1] // block_size), 1)
    block = np.repeat(np.arange(block_ptr.shape[0] - 1), np.diff(block_ptr))
    row = (block // block_cols) * block_size + (local >> 8)
    col = (block % block_cols) * block_size + (local & 0xFF)
    return row, col


def host_pattern(mask: np.ndarray, block_size: int | None) -> dict:
    """The CSB index arrays of ``mask`` (``block_ptr``, ``local``), its ``block_size`` and the
    ``row`` and ``col`` of the stored entries."""
    mask = np.asarray(mask, bool)
    row, col = np.nonzero(mask)
    zeros = np.zeros(row.shape, np.float32)
    _, block_ptr, local, beta = csb_arrays_from_coo(row, col, zeros, mask.shape, block_size)
    row, col = host_coordinates(block_ptr, local, mask.shape, beta)
    return {
        "block_ptr": block_ptr,
        "local": local,
        "block_size": beta,
        "row": row,
        "col": col,
    }
