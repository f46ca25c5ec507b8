"""Cutting one CSB matrix into shards of equal static shape, and gluing them back (host side).

A matrix is split along one logical axis at block boundaries. Every shard is a CSB matrix of
the same stored shape (the largest shard's extent along the split axis, the full extent along
the other), the same block size and the same orientation, so that the shards stack into arrays
with a leading shard axis that ``shard_map`` can hand out one per device:

* shards with fewer nonzeros than the largest are padded to its count with explicit zeros, all
  at one position that holds no nonzero of that shard (the bottom-right-most free position,
  searching from the last block). Such a position always exists: a shard that needs padding
  has fewer nonzeros than another shard of the same shape, so it is not full. The padding is
  part of the structure (``block_ptr`` counts it), so every kernel accepts it, and because it
  never shares a position with a real nonzero no kernel can mix the two up.

The shard records where its padding lies; :meth:`ShardedCSB.local` zeroes those values with
``jnp.where``, so their gradient is exactly zero and whatever an optimizer writes there never
reaches a product.
"""

from __future__ import annotations

import warnings
from itertools import pairwise

import numpy as np

from .._build import csb_arrays_from_coo
from .._format import CSB
from ._sharded import ShardedCSB

DEFAULT_IMBALANCE_WARNING = 1.25


class ShardImbalanceWarning(UserWarning):
    """The shards of a split hold very different numbers of nonzeros."""


# --- where to cut ------------------------------------------------------------------------------


def _even_line_bounds(lines: int, num_shards: int) -> np.ndarray:
    return np.array([s * lines // num_shards for s in range(num_shards + 1)], np.int64)


def _balanced_line_bounds(line_nnz: np.ndarray, num_shards: int) -> np.ndarray:
    """Cut points (in lines) that minimise the largest shard's nonzero count; among the cut
    points that reach that minimum, each is the one nearest to an even cut, so that balancing
    never lengthens a shard (and the padding of every shard) for nothing."""
    lines = line_nnz.shape[0]
    prefix = np.concatenate([[0], np.cumsum(line_nnz, dtype=np.int64)])

    def reach(load):  # for each start line, the furthest end line within `load` nonzeros
        return np.searchsorted(prefix, prefix + load, side="right") - 1

    def parts_needed(load):  # shards needed from each start line, greedily
        far = reach(load)
        need = np.zeros(lines + 1, np.int64)
        for j in range(lines - 1, -1, -1):
            need[j] = 1 + need[far[j]]
        return need

    # The smallest feasible largest load, by bisection on [heaviest line, all nonzeros].
    lo, hi = int(line_nnz.max(initial=0)), int(prefix[-1])
    while lo < hi:
        mid = (lo + hi) // 2
        if parts_needed(mid)[0] <= num_shards:
            hi = mid
        else:
            lo = mid + 1
    far, need = reach(lo), parts_needed(lo)
    bounds = np.zeros(num_shards + 1, np.int64)
    bounds[-1] = lines
    for s in range(1, num_shards):
        prev = bounds[s - 1]
        # Feasible ends of shard s - 1: within the load, and leaving a suffix that the
        # remaining num_shards - s shards can cover (need is non-increasing).
        first = max(prev, int(np.argmax(need <= num_shards - s)))
        last = max(first, int(far[prev]))
        even = s * lines / num_shards
        bounds[s] = min(max(round(even), first), last)
    return bounds


def _check_bounds(bounds, num_shards: int, dim: int, block_size: int) -> np.ndarray:
    """User-given cut points (in elements of the split axis) -> cut points in lines."""
    try:
        b = [int(v) for v in bounds]
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a sequence of ints, got {bounds!r}") from None
    if len(b) != num_shards + 1:
        raise ValueError(
            f"bounds must have num_shards + 1 = {num_shards + 1} entries, got {len(b)}: {b}"
        )
    if b[0] != 0 or b[-1] != dim:
        raise ValueError(f"bounds must start at 0 and end at the split extent {dim}, got {b}")
    if any(x > y for x, y in pairwise(b)):
        raise ValueError(f"bounds must be non-decreasing, got {b}")
    off_block = [x for x in b if x % block_size and x != dim]
    if off_block:
        raise ValueError(
            f"bounds must lie on block boundaries (multiples of block_size={block_size}, or "
            f"the extent {dim}), got {b}"
        )
    return np.array([-(-x // block_size) for x in b], np.int64)


# --- one shard -------------------------------------------------------------------------------


def stored_coordinates(a: CSB):
    """(row, col, values) of every stored nonzero of ``a``'s stored matrix, as numpy arrays."""
    block_ptr = np.asarray(a.block_ptr)
    local = np.asarray(a.local).astype(np.int64)
    beta = a.block_size
    block_cols = max(1, -(-a.stored_shape[1] // beta))
    block = np.repeat(np.arange(block_ptr.shape[0] - 1), np.diff(block_ptr))
    row = block // block_cols * beta + (local >> 8)
    col = block % block_cols * beta + (local & 0xFF)
    return row, col, np.asarray(a.values)


def _free_position(block_ptr, local, shape, beta):
    """(row, col) of the bottom-right-most position holding no nonzero, searching blocks
    from the last one, or None when the matrix is full."""
    rows, cols = shape
    block_cols = max(1, -(-cols // beta))
    for b in range(block_ptr.shape[0] - 2, -1, -1):
        r0, c0 = b // block_cols * beta, b % block_cols * beta
        vr, vc = min(beta, rows - r0), min(beta, cols - c0)
        seg = local[block_ptr[b] : block_ptr[b + 1]].astype(np.int64)
        if seg.shape[0] >= vr * vc:
            continue
        free = np.ones((vr, vc), bool)
        free[seg >> 8, seg & 0xFF] = False
        p = int(np.flatnonzero(free.reshape(-1))[-1])
        return r0 + p // vc, c0 + p % vc
    return None


def _shard_structure(row, col, values, shape, beta, nnz_target):
    """CSB arrays of one shard with its padding: (values, block_ptr, local, pad_range)."""
    nnz = row.shape[0]
    pad = nnz_target - nnz
    if pad:
        position = _free_position(*_structure_only(row, col, values, shape, beta), shape, beta)
        if position is None:  # a shard short of nonzeros is not full (see the module doc)
            raise AssertionError(
                f"no free position in a shard of shape {shape} with {nnz} nonzeros"
            )
        r, c = position
        row, col = np.append(row, r), np.append(col, c)
        values = np.append(values, np.zeros(1, values.dtype))
    vals, block_ptr, local, _ = csb_arrays_from_coo(row, col, values, shape, beta)
    if not pad:
        return vals, block_ptr, local, (nnz, nnz)
    # The one padding entry is the only one at its position: find it, then repeat it.
    block_cols = max(1, -(-shape[1] // beta))
    block = (r // beta) * block_cols + c // beta
    want = ((r % beta) << 8) | (c % beta)
    seg = local[block_ptr[block] : block_ptr[block + 1]]
    at = int(block_ptr[block] + np.flatnonzero(seg == want)[0])
    vals = np.insert(vals, at, np.zeros(pad - 1, vals.dtype))
    local = np.insert(local, at, np.full(pad - 1, want, np.uint16))
    block_ptr[block + 1 :] += pad - 1
    return vals, block_ptr, local, (at, at + pad)


def _structure_only(row, col, values, shape, beta):
    _, block_ptr, local, _ = csb_arrays_from_coo(row, col, values, shape, beta)
    return block_ptr, local


# --- the split -------------------------------------------------------------------------------


def _split(a, num_shards, axis, bounds, balance, warn_above) -> ShardedCSB:
    if not isinstance(a, CSB):
        raise ValueError(f"a must be a jaxcsb.CSB matrix, got {type(a).__name__}")
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)):
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    num_shards = int(num_shards)
    if num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards}")
    if bounds is not None and balance:
        raise ValueError("give either bounds or balance=True, not both")
    beta = a.block_size
    stored_axis = axis ^ int(a.transposed)
    dim = a.stored_shape[stored_axis]
    lines = -(-dim // beta)
    row, col, values = stored_coordinates(a)
    coord = row if stored_axis == 0 else col
    if bounds is not None:
        line_bounds = _check_bounds(bounds, num_shards, dim, beta)
    elif balance:
        line_nnz = np.bincount(coord // beta, minlength=lines)
        line_bounds = _balanced_line_bounds(line_nnz, num_shards)
    else:
        line_bounds = _even_line_bounds(lines, num_shards)
    elem_bounds = np.minimum(line_bounds * beta, dim)
    sizes = np.diff(elem_bounds)
    extent = int(sizes.max()) if num_shards else 0
    shard_shape = list(a.stored_shape)
    shard_shape[stored_axis] = extent
    shard_shape = (shard_shape[0], shard_shape[1])

    shard_of = np.searchsorted(elem_bounds, coord, side="right") - 1
    parts = []
    for s in range(num_shards):
        sel = shard_of == s
        r, c = row[sel], col[sel]
        if stored_axis == 0:
            r = r - elem_bounds[s]
        else:
            c = c - elem_bounds[s]
        parts.append((r, c, values[sel]))
    shard_nnz = [p[0].shape[0] for p in parts]
    nnz_max = max(shard_nnz)
    arrays = [_shard_structure(*p, shard_shape, beta, nnz_max) for p in parts]

    sharded = ShardedCSB(
        np.stack([v for v, _, _, _ in arrays]),
        np.stack([bp for _, bp, _, _ in arrays]),
        np.stack([loc for _, _, loc, _ in arrays]),
        np.array([pad for _, _, _, pad in arrays], np.int32).reshape(num_shards, 2),
        shape=a.shape,
        axis=axis,
        bounds=tuple(int(x) for x in elem_bounds),
        shard_nnz=tuple(int(n) for n in shard_nnz),
        stored_shape=shard_shape,
        block_size=beta,
        transposed=a.transposed,
    )
    _warn_if_imbalanced(sharded, warn_above, balance)
    return sharded.to_device()


def _warn_if_imbalanced(sharded: ShardedCSB, warn_above, balanced: bool):
    if warn_above is None:
        return
    stats = sharded.stats()
    if stats.imbalance > warn_above:
        hint = "" if balanced else "; balance=True chooses cut points by nonzero count"
        warnings.warn(
            f"the {stats.num_shards} shards hold {list(stats.nnz)} nonzeros: the largest has "
            f"{stats.imbalance:.2f}x the mean (threshold {warn_above}), and every device "
            f"waits for the largest{hint}",
            ShardImbalanceWarning,
            stacklevel=3,
        )


def shard_rows(
    a: CSB,
    num_shards: int,
    *,
    bounds=None,
    balance: bool = False,
    warn_above: float | None = DEFAULT_IMBALANCE_WARNING,
) -> ShardedCSB:
    """Splits ``a`` (m, k) by rows into ``num_shards`` shards of block-rows.

    For ``a @ b`` this splits the output features (each device computes its rows of the
    result, with no communication); for ``x @ a`` it splits the input features (each device
    computes a partial product over its slice of ``x``'s last axis, summed with ``psum``).

    * ``bounds``: the cut points in rows (``num_shards + 1`` non-decreasing ints from 0 to m,
      multiples of the block size except m), e.g. another split's ``bounds`` so that two
      layers share one layout. By default the block-rows are dealt out evenly; with
      ``balance=True`` the cut points balance the shards' nonzero counts instead.
    * ``warn_above``: emit a :class:`ShardImbalanceWarning` when the largest shard holds more
      than this many times the mean number of nonzeros (None: never).

    Every shard has the same static shape: ``shard_size`` rows (the largest shard's) by k.
    """
    return _split(a, num_shards, 0, bounds, balance, warn_above)


def shard_cols(
    a: CSB,
    num_shards: int,
    *,
    bounds=None,
    balance: bool = False,
    warn_above: float | None = DEFAULT_IMBALANCE_WARNING,
) -> ShardedCSB:
    """Splits ``a`` (m, k) by columns into ``num_shards`` shards of block-columns.

    For ``x @ a`` this splits the output features (no communication in the product); for
    ``a @ b`` it splits the contracted dimension (partial products summed with ``psum``).
    The options are those of :func:`shard_rows`, with bounds in columns.
    """
    return _split(a, num_shards, 1, bounds, balance, warn_above)


def unshard(sharded: ShardedCSB) -> CSB:
    """The unsplit matrix, with the values the shards hold now (host side).

    For a matrix built by jaxcsb's constructors, ``unshard(shard_rows(a, n))`` has exactly
    ``a``'s arrays: the same values in the same order and the same structure.
    """
    if not isinstance(sharded, ShardedCSB):
        raise ValueError(f"sharded must be a ShardedCSB, got {type(sharded).__name__}")
    beta = sharded.block_size
    stored_axis = sharded.axis ^ int(sharded.transposed)
    values = np.asarray(sharded.values)
    pads = np.asarray(sharded.pad)
    rows, cols, vals = [], [], []
    for s in range(sharded.num_shards):
        one = CSB(
            values[s],
            np.asarray(sharded.block_ptr[s]),
            np.asarray(sharded.local[s]),
            stored_shape=sharded.stored_shape,
            block_size=beta,
        )
        r, c, v = stored_coordinates(one)
        keep = np.ones(v.shape[0], bool)
        keep[pads[s, 0] : pads[s, 1]] = False
        r, c, v = r[keep], c[keep], v[keep]
        if stored_axis == 0:
            r = r + sharded.bounds[s]
        else:
            c = c + sharded.bounds[s]
        rows.append(r)
        cols.append(c)
        vals.append(v)
    stored = sharded.shape[::-1] if sharded.transposed else sharded.shape
    full = CSB.from_coo(
        np.concatenate(rows),
        np.concatenate(cols),
        np.concatenate(vals).astype(values.dtype),
        stored,
        block_size=beta,
    )
    return full.T if sharded.transposed else full
