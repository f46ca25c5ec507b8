"""Consistency checks of a CSB matrix's arrays, for matrices whose arrays were built or edited
by hand (jaxcsb's constructors always produce consistent arrays).

* Static checks (dtypes and lengths) read only shapes: they run on every product, traced or not.
* Content checks read the arrays on the host in O(nnz + blocks): ``block_ptr`` rises from 0 to
  nnz, every local index lies inside its (possibly clipped) block. They run when the arrays
  are concrete (eager calls, matrices closed over by ``jit``); a traced matrix is checked by
  the CPU handler at run time, the CUDA handlers trust it.

jax arrays are immutable, so a matrix whose index arrays were checked once is remembered (by
the identity of those arrays) and an eager loop pays for the content checks once.

Positions may repeat inside a block (the products sum them; the sharding padding repeats one
position holding zeros), and the order inside a block is free: jaxcsb's constructors sort by
(row, col) and never repeat a position.
"""

from __future__ import annotations

import threading
import weakref

import jax
import numpy as np


def _fail(what):
    raise ValueError(f"inconsistent CSB arrays: {what}")


def grid(stored_shape, block_size):
    """(block_rows, block_cols) of the stored matrix."""
    rows, cols = stored_shape
    return -(-rows // block_size), -(-cols // block_size)


def _check_array(name, x, dtype, length):
    if x is None:
        _fail(f"{name} is None (a matrix needs it for its products)")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        _fail(f"{name} must be an array, got {type(x).__name__}")
    if np.dtype(x.dtype) != np.dtype(dtype):
        _fail(f"{name} must have dtype {np.dtype(dtype).name}, got {np.dtype(x.dtype).name}")
    if len(x.shape) != 1:
        _fail(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if x.shape[0] != length:
        _fail(f"{name} must have {length} entries, got {x.shape[0]} ({_MEANING[name]})")


_MEANING = {
    "block_ptr": "the number of blocks + 1",
    "local": "one per nonzero: the length of values",
}


def check_static(a) -> None:
    """Dtypes and lengths of a CSB matrix's arrays; ValueError naming the array."""
    block_rows, block_cols = grid(a.stored_shape, a.block_size)
    values = a.values
    if not hasattr(values, "shape") or len(values.shape) < 1:
        got = tuple(values.shape) if hasattr(values, "shape") else type(values).__name__
        _fail(f"values must be an array of shape (nnz,), got {got}")
    nnz = values.shape[-1]
    _check_array("block_ptr", a.block_ptr, np.int32, block_rows * block_cols + 1)
    _check_array("local", a.local, np.uint16, nnz)


def check_contents(block_ptr, local, stored_shape, block_size):
    """The contents of concrete index arrays (numpy or jax), after ``check_static``."""
    bp = np.asarray(block_ptr).astype(np.int64)
    local = np.asarray(local)
    nnz = local.shape[0]
    if bp[0] != 0:
        _fail(f"block_ptr must start at 0, got block_ptr[0] = {bp[0]}")
    counts = np.diff(bp)
    drops = np.flatnonzero(counts < 0)
    if drops.size:
        b = int(drops[0])
        _fail(f"block_ptr must not decrease, got block_ptr[{b}] = {bp[b]} > {bp[b + 1]}")
    if bp[-1] != nnz:
        _fail(f"block_ptr must end at nnz = {nnz} (the length of local), got {bp[-1]}")
    rows, cols = stored_shape
    beta = block_size
    block_rows, block_cols = grid(stored_shape, beta)
    # Only blocks on the last block-row or block-column are clipped, and with beta = 256 no
    # uint16 local index can leave a full block: check the cheap bound first.
    lrow, lcol = local >> 8, local & 0xFF
    if nnz and (rows % beta or cols % beta or int(max(lrow.max(), lcol.max())) >= beta):
        if nnz >= counts.size:
            block = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        else:  # far fewer nonzeros than blocks: search instead of walking every block
            block = np.searchsorted(bp, np.arange(nnz), side="right") - 1
        height = np.minimum(beta, rows - block // block_cols * beta)
        width = np.minimum(beta, cols - block % block_cols * beta)
        bad = np.flatnonzero((lrow >= height) | (lcol >= width))
        if bad.size:
            e = int(bad[0])
            _fail(
                f"local[{e}] = {int(local[e])} is position ({lrow[e]}, {lcol[e]}) (row << 8 | "
                f"col), outside its block {block[e]} of {height[e]} x {width[e]} entries "
                f"(block_size {beta}, clipped at the matrix edge)"
            )


def is_concrete(*arrays) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in arrays)


class _Checked:
    """The index arrays whose contents passed, by identity (jax arrays only: immutable)."""

    def __init__(self, capacity=256):
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple] = {}
        self._capacity = capacity

    def _key(self, arrays, meta):
        return (*(id(x) for x in arrays), *meta)

    def __contains__(self, item):
        arrays, meta = item
        with self._lock:
            refs = self._entries.get(self._key(arrays, meta))
        return refs is not None and all(r() is x for r, x in zip(refs, arrays, strict=True))

    def add(self, arrays, meta):
        if not all(isinstance(x, jax.Array) for x in arrays):
            return  # numpy arrays can change in place: check them every time
        refs = tuple(weakref.ref(x) for x in arrays)
        with self._lock:
            self._entries[self._key(arrays, meta)] = refs
            while len(self._entries) > self._capacity:
                self._entries.pop(next(iter(self._entries)))


_checked = _Checked()


def check(a, *, contents: bool = True) -> None:
    """Static checks always; content checks when ``contents`` and the arrays are concrete."""
    check_static(a)
    arrays = (a.block_ptr, a.local)
    if not contents or not is_concrete(*arrays):
        return
    meta = (a.stored_shape, a.block_size)
    if (arrays, meta) in _checked:
        return
    check_contents(a.block_ptr, a.local, a.stored_shape, a.block_size)
    _checked.add(arrays, meta)
