"""Reading the Deep Learning Matrix Collection's ``.smtx`` files (patterns without values)."""

from __future__ import annotations

import os

import numpy as np

from ._format import CSB


def _fail(path, what):
    raise ValueError(f"malformed .smtx file {os.fspath(path)!r}: {what}")


def _ints(path, line, what):
    try:
        return np.array(line.replace(",", " ").split(), dtype=np.int64)
    except ValueError:
        _fail(path, f"{what} must be integers")


def read_smtx(path):
    """Returns (shape, indptr, indices) of the CSR pattern in an ``.smtx`` file, checked."""
    with open(path) as f:
        lines = [f.readline(), f.readline(), f.readline()]
    header = _ints(path, lines[0], "the header")
    if header.size != 3:
        _fail(path, f"the header must be 'nrows, ncols, nnz', got {lines[0].strip()!r}")
    nrows, ncols, nnz = (int(v) for v in header)
    if min(nrows, ncols, nnz) < 0:
        _fail(path, f"the header has a negative count: {lines[0].strip()!r}")
    indptr = _ints(path, lines[1], "row offsets")
    indices = _ints(path, lines[2], "column indices")
    if indptr.size != nrows + 1:
        _fail(path, f"expected nrows + 1 = {nrows + 1} row offsets, got {indptr.size}")
    if indices.size != nnz:
        _fail(path, f"expected nnz = {nnz} column indices, got {indices.size}")
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        _fail(path, f"row offsets must rise from 0 to nnz = {nnz} without decreasing")
    if nnz and (indices.min() < 0 or indices.max() >= ncols):
        bad = indices[(indices < 0) | (indices >= ncols)][0]
        _fail(path, f"column index {bad} is outside 0..ncols - 1 = {ncols - 1}")
    return (nrows, ncols), indptr, indices


def load_smtx(path, dtype=np.float32, seed=0, block_size=None) -> CSB:
    """Loads a DLMC ``.smtx`` pattern as a CSB matrix with standard-normal values drawn from
    ``seed`` (the files store no values). Raises ValueError for a malformed file."""
    shape, indptr, indices = read_smtx(path)
    row = np.repeat(np.arange(shape[0]), np.diff(indptr))
    values = np.random.default_rng(seed).standard_normal(indices.size).astype(np.float32)
    return CSB.from_coo(row, indices, values, shape, block_size=block_size, dtype=dtype)
