"""Sharded products and a data-parallel gradient, each one shard_map over a mesh.

Under ``jax.jit`` alone XLA cannot split a custom call: given a batch sharded over devices it
all-gathers the batch in front of ``csb_matmul`` and has every device compute the whole
product. These wrappers run the product per device instead, and communicate only where the
split makes it necessary:

======================  =====================  ==================================
sparse operand          product                communication (forward)
======================  =====================  ==================================
CSB (replicated)        batch split            none
rows split              ``A @ b``              none: output rows stay sharded
columns split           ``x @ A``              none: output features stay sharded
columns split           ``A @ b``              psum of the partial products
rows split              ``x @ A``              psum of the partial products
======================  =====================  ==================================

Gradients taken outside (``jax.grad`` of a jitted loss that calls :func:`matmul`) come out
right with no extra code: the transpose of the shard_map sums a replicated operand's
per-device gradients (the values of a replicated CSB under data parallelism, ``b`` of a
row-split ``A @ b``) exactly once.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from .._format import CSB
from .._ops import csb_matmul
from ._compat import has_explicit_axes, mesh_axis_size, reshard, shard_map
from ._sharded import ShardedCSB


def _dense(x, name):
    if isinstance(x, (CSB, ShardedCSB)):
        raise ValueError(f"{name} must be a dense array: exactly one operand may be sparse")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = jax.numpy.asarray(x)
    return x


def _check_divisible(x, dim, mesh, axis_name, name):
    if axis_name is None:
        return
    size = mesh_axis_size(mesh, axis_name, "batch_axis")
    if x.shape[dim] % size:
        raise ValueError(
            f"{name} dimension {dim} (size {x.shape[dim]}) is split over mesh axis "
            f"{axis_name!r} of {size} devices and must be a multiple of {size}; got shape "
            f"{x.shape}"
        )


def _run(body, mesh, specs, out_spec, args):
    if has_explicit_axes(mesh):
        args = tuple(
            jax.tree_util.tree_map(lambda leaf, s=s: reshard(leaf, mesh, s), a)
            for a, s in zip(args, specs, strict=True)
        )
    return shard_map(body, mesh=mesh, in_specs=specs, out_specs=out_spec)(*args)


def matmul(a, b, *, mesh, model_axis=None, batch_axis=None, impl: str = "auto"):
    """``csb_matmul(a, b)`` run per device over ``mesh``; exactly one operand is sparse.

    * The sparse operand is a :class:`~jaxcsb.CSB` (replicated on every device; leave
      ``model_axis`` None) or a :class:`ShardedCSB` whose shards are split over mesh axis
      ``model_axis`` (its ``num_shards`` must be that axis's size).
    * ``batch_axis``: the mesh axis that splits the batch: the leading axis of ``x`` in
      ``x @ A``, the columns of ``b`` in ``A @ b``. None: the batch is replicated.

    A dense operand whose contracted axis is split (``x @ A`` with ``A`` split by rows,
    ``A @ b`` with ``A`` split by columns) and an output whose feature axis is split come in
    the shard layout: ``num_shards * shard_size`` long, which is the plain layout when the
    split is even (see :func:`to_shard_layout`). Works under ``jax.jit`` and ``jax.grad``.
    """
    sparse_left = isinstance(a, (CSB, ShardedCSB))
    sparse = a if sparse_left else b
    if not isinstance(sparse, (CSB, ShardedCSB)):
        raise ValueError(
            f"matmul needs a CSB or ShardedCSB operand, got {type(a).__name__} and "
            f"{type(b).__name__}"
        )
    name = "b" if sparse_left else "a"
    x = _dense(b if sparse_left else a, name)
    sharded = isinstance(sparse, ShardedCSB)
    if sharded:
        if model_axis is None:
            raise ValueError("model_axis must name the mesh axis that holds the shards")
        size = mesh_axis_size(mesh, model_axis, "model_axis")
        if size != sparse.num_shards:
            raise ValueError(
                f"the matrix has {sparse.num_shards} shards but mesh axis {model_axis!r} has "
                f"{size} devices: split it with num_shards={size}"
            )
        split, shape = sparse.axis, sparse.padded_shape
    else:
        if model_axis is not None:
            raise ValueError(
                "model_axis needs a ShardedCSB (shard_rows / shard_cols); a CSB operand is "
                f"replicated, got model_axis={model_axis!r}"
            )
        split, shape = None, sparse.shape
    if batch_axis is not None:
        mesh_axis_size(mesh, batch_axis, "batch_axis")

    # The contracted axis of the sparse operand: 1 for A @ b, 0 for x @ A.
    contracted = 1 if sparse_left else 0
    split_contraction = split == contracted
    feature = model_axis if split_contraction else None
    out_feature = model_axis if split is not None and not split_contraction else None
    if sparse_left:
        if x.ndim != 2 or x.shape[0] != shape[1]:
            raise ValueError(_shape_message("b", (shape[1], "n"), x.shape, split_contraction))
        _check_divisible(x, 1, mesh, batch_axis, "b")
        dense_spec = P(feature, batch_axis)
        out_spec = P(out_feature, batch_axis)
    else:
        if x.ndim < 2 or x.shape[-1] != shape[0]:
            raise ValueError(_shape_message("a", ("...", shape[0]), x.shape, split_contraction))
        _check_divisible(x, 0, mesh, batch_axis, "a")
        middle = (None,) * (x.ndim - 2)
        dense_spec = P(batch_axis, *middle, feature)
        out_spec = P(batch_axis, *middle, out_feature)

    def body(sp, d):
        mat = sp.local_csb() if sharded else sp
        out = csb_matmul(mat, d, impl=impl) if sparse_left else csb_matmul(d, mat, impl=impl)
        return jax.lax.psum(out, model_axis) if split_contraction else out

    sparse_spec = P(model_axis) if sharded else P()
    return _run(body, mesh, (sparse_spec, dense_spec), out_spec, (sparse, x))


def _shape_message(name, want, got, shard_layout):
    want = "(" + ", ".join(str(w) for w in want) + ")"
    layout = (
        " (the contracted axis is split: num_shards * shard_size long, see to_shard_layout)"
        if shard_layout
        else ""
    )
    return f"{name} must have shape {want}{layout}, got {tuple(got)}"


def data_parallel_value_and_grad(loss_fn, *, mesh, batch_axis, argnums=0, batch_argnums=(1,)):
    """``jax.value_and_grad(loss_fn, argnums)`` over a batch split along mesh axis
    ``batch_axis``, every other argument replicated.

    ``loss_fn`` sees one device's slice of the batch arguments (``batch_argnums``, split
    along their leading axis) and must return the mean loss over that slice. Each device
    differentiates its own slice; the losses and the gradients of replicated arguments (the
    weights) are then averaged over the devices with one ``pmean`` each, so the result equals
    the single-device gradient of the mean loss over the whole batch (the slices have equal
    sizes). Gradients of batch arguments stay split like them (scaled by 1 / devices, as the
    mean over the whole batch has it). Inside ``loss_fn`` every product is local: use
    ``x @ A`` as on one device.
    """
    batch_argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    single = isinstance(argnums, int)
    wrt = (argnums,) if single else tuple(argnums)
    devices = mesh_axis_size(mesh, batch_axis, "batch_axis")

    def body(*args):
        loss, grads = jax.value_and_grad(loss_fn, argnums=wrt)(*args)
        grads = tuple(
            jax.tree_util.tree_map(lambda g: g / devices, g)
            if i in batch_argnums
            else jax.lax.pmean(g, batch_axis)
            for i, g in zip(wrt, grads, strict=True)
        )
        return jax.lax.pmean(loss, batch_axis), grads[0] if single else grads

    def step(*args):
        for i in batch_argnums:
            for leaf in jax.tree_util.tree_leaves(args[i]):
                _check_divisible(leaf, 0, mesh, batch_axis, f"argument {i}")
        specs = tuple(P(batch_axis) if i in batch_argnums else P() for i in range(len(args)))
        grad_specs = tuple(specs[i] for i in wrt)
        out_specs = (P(), grad_specs[0] if single else grad_specs)
        return _run(body, mesh, specs, out_specs, args)

    return step
