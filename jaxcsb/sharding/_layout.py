"""The shard layout of a feature axis that a split matrix cuts unevenly.

When the shards of a :class:`ShardedCSB` differ in extent along the split axis, each is stored
``shard_size`` long, and the products that produce or consume that axis see it laid out shard
by shard: ``num_shards * shard_size`` entries, shard ``i``'s features first and zeros after.
Two layers split with the same ``bounds`` (one by columns, the next by rows) pass activations
in this layout without converting; these two functions convert at the edges. When the split is
even the layouts coincide and both functions return their argument unchanged.
"""

from __future__ import annotations

from itertools import pairwise

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ._sharded import ShardedCSB


def _axis(x, axis):
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [-{x.ndim}, {x.ndim}) for shape {x.shape}, got {axis}")
    return axis % x.ndim


def _gathered(x, axis):
    """``x`` replicated along ``axis`` when an explicit mesh axis (sharding in types) splits
    it: rearranging a split axis needs its entries on every device, and with explicit axes
    JAX wants that communication written out. Arrays on auto axes are left to XLA."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not getattr(mesh, "explicit_axes", ()):
        return x
    spec = list(sharding.spec) + [None] * (x.ndim - len(sharding.spec))
    if spec[axis] is None:
        return x
    spec[axis] = None
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, P(*spec)))


def _namespace(x):
    """numpy for host arrays (no dispatch to a device), jax.numpy for everything else."""
    return np if isinstance(x, np.ndarray) else jnp


def to_shard_layout(x, sharded: ShardedCSB, axis: int = -1):
    """``x`` with its ``axis`` (the split features, length ``sharded.shape[sharded.axis]``)
    rearranged into the shard layout (length ``num_shards * shard_size``). A numpy array
    is rearranged on the host and stays a numpy array."""
    xp = _namespace(x)
    x = xp.asarray(x)
    axis = _axis(x, axis)
    full = sharded.shape[sharded.axis]
    if x.shape[axis] != full:
        raise ValueError(
            f"x must have {full} entries along axis {axis} (the split axis of a matrix of "
            f"shape {sharded.shape}), got shape {x.shape}"
        )
    if not sharded.is_padded:
        return x
    if xp is jnp:
        x = _gathered(x, axis)
    pieces = []
    for (a, b), size in zip(pairwise(sharded.bounds), sharded.sizes, strict=True):
        piece = xp.take(x, xp.arange(a, b), axis=axis)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, sharded.shard_size - size)
        pieces.append(xp.pad(piece, widths))
    return xp.concatenate(pieces, axis=axis)


def from_shard_layout(y, sharded: ShardedCSB, axis: int = -1):
    """The inverse of :func:`to_shard_layout`: drops each shard's padding along ``axis``."""
    xp = _namespace(y)
    y = xp.asarray(y)
    axis = _axis(y, axis)
    padded = sharded.num_shards * sharded.shard_size
    if y.shape[axis] != padded:
        raise ValueError(
            f"y must have num_shards * shard_size = {sharded.num_shards} * "
            f"{sharded.shard_size} = {padded} entries along axis {axis}, got shape {y.shape}"
        )
    if not sharded.is_padded:
        return y
    if xp is jnp:
        y = _gathered(y, axis)
    starts = [i * sharded.shard_size for i in range(sharded.num_shards)]
    index = np.concatenate(
        [np.arange(s, s + size) for s, size in zip(starts, sharded.sizes, strict=True)]
    ).astype(np.int32)
    return xp.take(y, index, axis=axis)
