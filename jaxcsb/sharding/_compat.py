"""The pieces of JAX's sharding API that moved between versions, resolved once.

``jax.shard_map`` (JAX 0.6 and later) is preferred; older releases only have
``jax.experimental.shard_map.shard_map``, whose replication check is called ``check_rep``
instead of ``check_vma``.

Every shard_map in this package runs with that check off. The check tracks which values vary
across devices (the "varying manual axes"); jaxcsb's FFI calls do not yet declare that their
output varies like their inputs, so with the check on a ``csb_matmul`` inside ``shard_map``
fails to type-check. With the check off the reductions the sharded products need are written
out explicitly (``psum`` where a contraction is split), and gradients taken outside the
shard_map are still summed across devices by the shard_map's transpose.
"""

from __future__ import annotations

import jax

_shard_map = getattr(jax, "shard_map", None)
if _shard_map is None:  # pragma: no cover - JAX releases before jax.shard_map
    from jax.experimental.shard_map import shard_map as _experimental_shard_map

    def shard_map(f, *, mesh, in_specs, out_specs):
        return _experimental_shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False
        )

else:

    def shard_map(f, *, mesh, in_specs, out_specs):
        return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def mesh_axis_size(mesh, axis_name: str, what: str) -> int:
    """The size of ``axis_name`` in ``mesh``, or a ValueError naming ``what`` needs it."""
    if axis_name not in mesh.shape:
        raise ValueError(
            f"{what} must name an axis of the mesh {tuple(mesh.shape)}, got {axis_name!r}"
        )
    return int(mesh.shape[axis_name])


def has_explicit_axes(mesh) -> bool:
    """Whether some axis of ``mesh`` has sharding in types (``AxisType.Explicit``).

    shard_map insists that such arguments already carry the shardings its ``in_specs``
    name; arguments on auto axes are resharded by XLA as needed.
    """
    explicit = getattr(mesh, "explicit_axes", ())
    return bool(explicit)


def reshard(x, mesh, spec):
    """``x`` with sharding ``spec`` over ``mesh`` (inside or outside jit)."""
    sharding = jax.sharding.NamedSharding(mesh, spec)
    if hasattr(jax, "reshard"):
        return jax.reshard(x, sharding)
    return jax.device_put(x, sharding)  # pragma: no cover - JAX without jax.reshard
