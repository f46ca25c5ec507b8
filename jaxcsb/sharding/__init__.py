"""jaxcsb under JAX's own sharding: data parallelism and model parallelism over a mesh.

* Data parallel: the CSB weights replicated, the batch split over a mesh axis.
  :func:`matmul` (a ``shard_map`` that ``jax.jit`` and ``jax.grad`` see through) or
  :func:`data_parallel_value_and_grad` (the whole step in one ``shard_map``).
* Model parallel: :func:`shard_rows` / :func:`shard_cols` split a matrix at block boundaries
  into a :class:`ShardedCSB` (shards of equal static shape, stacked along a leading axis),
  :func:`matmul` multiplies with it, :func:`unshard` glues it back exactly.
* :func:`collectives` lists the collectives in compiled HLO, to check that a step
  communicates only where it should.

See docs/sharding.md for examples.
"""

from ._hlo import collectives
from ._layout import from_shard_layout, to_shard_layout
from ._parallel import data_parallel_value_and_grad, matmul
from ._sharded import ShardedCSB, ShardStats
from ._split import (
    DEFAULT_IMBALANCE_WARNING,
    ShardImbalanceWarning,
    shard_cols,
    shard_rows,
    unshard,
)

__all__ = [
    "DEFAULT_IMBALANCE_WARNING",
    "ShardImbalanceWarning",
    "ShardStats",
    "ShardedCSB",
    "collectives",
    "data_parallel_value_and_grad",
    "from_shard_layout",
    "matmul",
    "shard_cols",
    "shard_rows",
    "to_shard_layout",
    "unshard",
]
