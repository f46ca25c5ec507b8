"""Flax NNX over a mesh: a data-parallel ``value_and_grad`` for whole models, and
:class:`ShardedSparseLinear`, a :class:`jaxcsb.nnx.SparseLinear` whose kernel is split over a
mesh axis (Megatron-style model parallelism).

A model parallel pair: the first layer split by output features (``split="out"``: no
communication, its output stays split), the second by input features (``split="in"``, with the
first layer's ``bounds``: it consumes the split activations and sums its partial products
once). Between them the activations are in the shard layout of :mod:`jaxcsb.sharding`.

>>> layer1 = ShardedSparseLinear(SparseLinear(512, 2048, sparsity=0.9, rngs=rngs),
...                              mesh=mesh, model_axis="model", split="out")  # doctest: +SKIP
>>> layer2 = ShardedSparseLinear(SparseLinear(2048, 512, sparsity=0.9, rngs=rngs),
...                              mesh=mesh, model_axis="model", split="in",
...                              bounds=layer1.bounds)  # doctest: +SKIP
>>> y = layer2(jax.nn.gelu(layer1(x)))  # doctest: +SKIP
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..nnx import SparseLinear, SparseStructure
from . import _parallel
from ._compat import mesh_axis_size
from ._layout import from_shard_layout, to_shard_layout
from ._sharded import ShardedCSB
from ._split import (
    DEFAULT_IMBALANCE_WARNING,
    shard_cols,
    shard_rows,
    stored_coordinates,
    unshard,
)

__all__ = ["ShardedSparseLinear", "data_parallel_value_and_grad"]

_STRUCTURE = ("block_ptr", "local", "pad")


def data_parallel_value_and_grad(loss_fn, *, mesh, batch_axis, wrt=nnx.Param):
    """``nnx.value_and_grad(loss_fn)`` with the batch split over mesh axis ``batch_axis``.

    ``loss_fn(model, *batch)`` returns the mean loss over the slice of the batch it sees
    (every batch argument is split along its leading axis). The returned function takes
    ``(model, *batch)`` and gives ``(loss, grads)``, ``grads`` an ``nnx.State`` of the ``wrt``
    variables, averaged over the devices once: the single-device gradient of the mean loss
    over the whole batch. The model is replicated and only read (state other than ``wrt`` is
    not written back). Use it inside ``nnx.jit`` or ``jax.jit``.
    """

    def step(model, *batch):
        graphdef, params, rest = nnx.split(model, wrt, ...)

        def pure(params, rest, *batch):
            return loss_fn(nnx.merge(graphdef, params, rest), *batch)

        first_batch = 2
        fn = _parallel.data_parallel_value_and_grad(
            pure,
            mesh=mesh,
            batch_axis=batch_axis,
            argnums=0,
            batch_argnums=tuple(range(first_batch, first_batch + len(batch))),
        )
        return fn(params, rest, *batch)

    return step


class ShardedSparseLinear(nnx.Module):
    """A :class:`~jaxcsb.nnx.SparseLinear` with its kernel split over mesh axis
    ``model_axis``.

    * ``split="out"``: the kernel's columns (output features) are split. The input is
      replicated over ``model_axis``; the output is split, in the shard layout
      (``num_shards * shard_size`` features, see :func:`~jaxcsb.sharding.from_shard_layout`).
      No communication in the forward pass.
    * ``split="in"``: the kernel's rows (input features) are split. The input comes split, in
      the shard layout (the output of a ``split="out"`` layer with the same ``bounds``); the
      output is replicated, summed over the devices with one ``psum``.

    ``batch_axis`` additionally splits the batch (the inputs' leading axis) over another mesh
    axis. ``bounds``, ``balance`` and ``warn_above`` choose the cut points as in
    :func:`~jaxcsb.sharding.shard_rows`. The values are an ``nnx.Param`` of shape
    (num_shards, nnz_max) placed one shard per device (padding included: its gradient is
    exactly zero); the index arrays are ``SparseStructure`` variables.
    """

    def __init__(
        self,
        layer: SparseLinear,
        *,
        mesh,
        model_axis: str,
        split: str = "out",
        batch_axis: str | None = None,
        bounds=None,
        balance: bool = False,
        warn_above: float | None = DEFAULT_IMBALANCE_WARNING,
    ):
        if not isinstance(layer, SparseLinear):
            raise ValueError(f"layer must be a jaxcsb.nnx.SparseLinear, got {type(layer).__name__}")
        if split not in ("out", "in"):
            raise ValueError(f"split must be 'out' or 'in', got {split!r}")
        num_shards = mesh_axis_size(mesh, model_axis, "model_axis")
        if batch_axis is not None:
            mesh_axis_size(mesh, batch_axis, "batch_axis")
        cut = shard_cols if split == "out" else shard_rows
        sharded = cut(
            layer.kernel, num_shards, bounds=bounds, balance=balance, warn_above=warn_above
        )
        sharded = jax.device_put(sharded, NamedSharding(mesh, P(model_axis)))
        self.in_features = layer.in_features
        self.out_features = layer.out_features
        self.use_bias = layer.use_bias
        self.dtype = layer.dtype
        self.param_dtype = layer.param_dtype
        self.impl = layer.impl
        self.mesh = mesh
        self.model_axis = model_axis
        self.batch_axis = batch_axis
        self.split = split
        self.meta = sharded.tree_flatten()[1]
        self.values = nnx.Param(sharded.values)
        for name in _STRUCTURE:
            setattr(self, name, SparseStructure(getattr(sharded, name)))
        if layer.use_bias:
            bias = np.asarray(layer.bias[...])
            if split == "out":
                bias = to_shard_layout(bias, sharded, axis=0)
            bias = jax.device_put(
                bias, NamedSharding(mesh, P(model_axis if split == "out" else None))
            )
            self.bias = nnx.Param(bias)
        else:
            self.bias = nnx.data(None)

    @property
    def sharded(self) -> ShardedCSB:
        """The kernel as a :class:`~jaxcsb.sharding.ShardedCSB` (in_features, out_features)."""
        leaves = [self.values[...]] + [getattr(self, n)[...] for n in _STRUCTURE]
        return ShardedCSB.tree_unflatten(self.meta, leaves)

    @property
    def bounds(self) -> tuple[int, ...]:
        """The cut points of the split features (pass them to the paired layer)."""
        return self.sharded.bounds

    def __call__(self, inputs: jax.Array) -> jax.Array:
        values = self.values[...]
        bias = self.bias[...] if self.bias is not None else None
        dtype = self.dtype
        if dtype is None:
            dtype = jnp.result_type(inputs, values, *(() if bias is None else (bias,)))
        x = jnp.asarray(inputs, dtype)
        kernel = self.sharded.with_values(values.astype(dtype))
        y = _parallel.matmul(
            x,
            kernel,
            mesh=self.mesh,
            model_axis=self.model_axis,
            batch_axis=self.batch_axis,
            impl=self.impl,
        )
        if bias is not None:
            y = y + bias.astype(dtype)
        return y

    def to_sparse_linear(self) -> SparseLinear:
        """The unsplit layer with the current values and bias (on the default device)."""
        kernel = unshard(self.sharded)
        bias = None
        if self.bias is not None:
            bias = np.asarray(self.bias[...])
            if self.split == "out":
                bias = from_shard_layout(bias, self.sharded, axis=0)
        dense, mask = _dense_and_mask(kernel)
        layer = SparseLinear.from_dense(
            dense,
            bias,
            mask=mask,
            block_size=kernel.block_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            impl=self.impl,
        )
        layer.set_kernel(kernel)
        return layer


def _dense_and_mask(kernel):
    """The dense kernel and its pattern, on the host."""
    row, col, values = stored_coordinates(kernel)
    dense = np.zeros(kernel.shape, values.dtype)
    dense[row, col] = values
    mask = np.zeros(kernel.shape, bool)
    mask[row, col] = True
    return dense, mask
