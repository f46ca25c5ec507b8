"""ShardedCSB: the shards of one CSB matrix, stacked along a leading shard axis.

Leaves (each with a leading axis of length ``num_shards``, so that ``PartitionSpec(axis)``
hands one shard to each device of a mesh axis):

* ``values`` (num_shards, nnz_max): the trainable array, padded with zeros;
* ``block_ptr`` (num_shards, blocks + 1), ``local`` (num_shards, nnz_max): each shard's
  structure, padding included;
* ``pad`` (num_shards, 2) int32: the range ``[start, stop)`` of each shard's padding.

Static metadata: the full logical ``shape``, the split ``axis`` (0: rows, 1: columns), the cut
points ``bounds`` along it, the real nonzero count of every shard, and the stored shape, block
size and orientation shared by all shards.
"""

from __future__ import annotations

from itertools import pairwise
from operator import attrgetter
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._dtypes import check_value_dtype
from .._format import CSB


class ShardStats(NamedTuple):
    """How evenly a split spreads the work."""

    num_shards: int
    nnz: tuple[int, ...]  # real nonzeros per shard
    sizes: tuple[int, ...]  # extent of each shard along the split axis
    shard_size: int  # the padded extent every shard is stored with
    imbalance: float  # largest shard's nonzeros / mean nonzeros (1.0: perfect)
    padded_nnz: int  # nonzeros stored per shard, padding included


# The arrays of a ShardedCSB are its pytree's children; the rest is static.
_ARRAYS = ("values", "block_ptr", "local", "pad")
_STATIC = ("shape", "axis", "bounds", "shard_nnz", "stored_shape", "block_size", "transposed")
_arrays_of = attrgetter(*_ARRAYS)
_static_of = attrgetter(*_STATIC)


@jax.tree_util.register_pytree_node_class
class ShardedCSB:
    """A CSB matrix split along one axis into shards of equal static shape.

    Build one with :func:`jaxcsb.sharding.shard_rows` or :func:`~jaxcsb.sharding.shard_cols`,
    place it with ``jax.device_put(s, NamedSharding(mesh, P(axis_name)))``, and inside
    ``shard_map`` (``in_specs=P(axis_name)``) take the device's shard with :meth:`local_csb`.
    :func:`~jaxcsb.sharding.unshard` gives back the unsplit matrix.
    """

    def __init__(
        self,
        values,
        block_ptr,
        local,
        pad,
        *,
        shape: tuple[int, int],
        axis: int,
        bounds: tuple[int, ...],
        shard_nnz: tuple[int, ...],
        stored_shape: tuple[int, int],
        block_size: int,
        transposed: bool,
    ):
        self.values = values
        self.block_ptr = block_ptr
        self.local = local
        self.pad = pad
        self.shape = (int(shape[0]), int(shape[1]))
        self.axis = int(axis)
        self.bounds = tuple(int(b) for b in bounds)
        self.shard_nnz = tuple(int(n) for n in shard_nnz)
        self.stored_shape = (int(stored_shape[0]), int(stored_shape[1]))
        self.block_size = int(block_size)
        self.transposed = bool(transposed)

    # pytree protocol --------------------------------------------------------------------------
    def tree_flatten(self):
        return _arrays_of(self), _static_of(self)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, **dict(zip(_STATIC, aux, strict=True)))

    def _replace(self, **changes) -> ShardedCSB:
        fields = dict(zip(_ARRAYS + _STATIC, _arrays_of(self) + _static_of(self), strict=True))
        return ShardedCSB(**(fields | changes))

    # properties -------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self.bounds) - 1

    @property
    def sizes(self) -> tuple[int, ...]:
        """Extent of each shard along the split axis (the real part, without padding)."""
        return tuple(b - a for a, b in pairwise(self.bounds))

    @property
    def shard_size(self) -> int:
        """The extent every shard is stored with along the split axis (the largest size)."""
        return self.stored_shape[self.axis ^ int(self.transposed)]

    @property
    def shard_shape(self) -> tuple[int, int]:
        """The logical shape of one shard, as :meth:`local_csb` returns it."""
        rows, cols = self.stored_shape
        return (cols, rows) if self.transposed else (rows, cols)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """The logical shape of the shards laid side by side: the split axis is
        ``num_shards * shard_size`` long (the shard layout of the products)."""
        shape = list(self.shape)
        shape[self.axis] = self.num_shards * self.shard_size
        return (shape[0], shape[1])

    @property
    def is_padded(self) -> bool:
        """Whether some shard is shorter than ``shard_size`` (products then use the shard
        layout, see :func:`~jaxcsb.sharding.to_shard_layout`)."""
        return any(s != self.shard_size for s in self.sizes)

    @property
    def nnz(self) -> int:
        """Real nonzeros of the whole matrix (padding not counted)."""
        return sum(self.shard_nnz)

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def T(self) -> ShardedCSB:
        """The transposed view: the same shards, split along the other logical axis."""
        return self._replace(
            shape=self.shape[::-1], axis=1 - self.axis, transposed=not self.transposed
        )

    def __repr__(self):
        kind = "rows" if self.axis == 0 else "columns"
        return (
            f"ShardedCSB(shape={self.shape}, nnz={self.nnz}, {self.num_shards} shards of "
            f"{kind} {list(self.bounds)}, dtype={self.dtype}, block_size={self.block_size}"
            f"{', transposed view' if self.transposed else ''})"
        )

    def stats(self) -> ShardStats:
        nnz = self.shard_nnz
        mean = sum(nnz) / len(nnz)
        return ShardStats(
            num_shards=self.num_shards,
            nnz=nnz,
            sizes=self.sizes,
            shard_size=self.shard_size,
            imbalance=max(nnz) / mean if mean else 1.0,
            padded_nnz=max(nnz),
        )

    # values -----------------------------------------------------------------------------------
    def with_values(self, values) -> ShardedCSB:
        """The same shards with new values, shape (num_shards, nnz_max)."""
        if not hasattr(values, "shape") or not hasattr(values, "dtype"):
            values = jnp.asarray(values)
        want = tuple(self.values.shape)
        if tuple(values.shape) != want:
            raise ValueError(f"values must have shape {want}, got {tuple(values.shape)}")
        check_value_dtype(values.dtype, "values")
        return self._replace(values=values)

    def astype(self, dtype) -> ShardedCSB:
        return self.with_values(self.values.astype(check_value_dtype(dtype, "dtype")))

    def to_device(self) -> ShardedCSB:
        """The same shards with every leaf a jax array (on the default device)."""
        return jax.tree_util.tree_map(jnp.asarray, self)

    # one shard --------------------------------------------------------------------------------
    def shard(self, index) -> CSB:
        """Shard ``index`` as a CSB matrix of shape :attr:`shard_shape`, its padding zeroed
        (``index`` may be traced, e.g. ``jax.lax.axis_index``)."""
        take = lambda x: jnp.asarray(x)[index]  # noqa: E731
        return self._csb(*(take(x) for x in self.tree_flatten()[0]))

    def local_csb(self) -> CSB:
        """Inside ``shard_map`` with ``in_specs=P(axis_name)``: this device's shard as a CSB
        matrix of shape :attr:`shard_shape`, its padding zeroed."""
        lead = self.values.shape[0] if self.values.ndim == 2 else None
        if lead != 1:
            raise ValueError(
                "local_csb() needs the leaves of one shard, i.e. a leading shard axis of length 1 "
                "(inside shard_map with in_specs=P(axis_name), where the mesh axis has "
                f"num_shards={self.num_shards} devices); got values of shape "
                f"{tuple(self.values.shape)}. Outside shard_map use shard(i)."
            )
        return self.shard(0)

    def _csb(self, values, block_ptr, local, pad) -> CSB:
        if max(self.shard_nnz) != min(self.shard_nnz):
            # where, not a multiply: the padding's gradient is exactly zero even if the
            # kernel's cotangent there were not finite.
            idx = jnp.arange(values.shape[0], dtype=jnp.int32)
            values = jnp.where((idx >= pad[0]) & (idx < pad[1]), jnp.zeros_like(values), values)
        return CSB(
            values,
            block_ptr,
            local,
            stored_shape=self.stored_shape,
            block_size=self.block_size,
            transposed=self.transposed,
        )
