"""The three products in plain jax.numpy (gather + segment sum).

Used where no native kernel exists for the platform, selectable with ``impl="jax"``, and the
reference the tests compare the kernels against. Accumulates in float32 like the kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._format import coordinates
from ._problem import Sddmm, Spmm


# Jitted (the problem description is static) so that eager calls compile once per shape
# instead of once per jnp operation.
@functools.partial(jax.jit, static_argnums=0)
def spmm(p: Spmm, values, dense, block_ptr, local):
    row, col = coordinates(block_ptr, local, p.stored_shape, p.block_size)
    out_idx, in_idx = (col, row) if p.transpose else (row, col)
    v = values.astype(jnp.float32)
    d = dense.astype(jnp.float32)
    if p.batch_leading:
        d = d.T
    terms = v[:, None] * d[in_idx]  # (nnz, n)
    out = jax.ops.segment_sum(terms, out_idx, num_segments=p.out_dim)  # (out_dim, n)
    if p.batch_leading:
        out = out.T
    return out.astype(values.dtype)


@functools.partial(jax.jit, static_argnums=0)
def sddmm(p: Sddmm, lhs, rhs, block_ptr, local):
    row, col = coordinates(block_ptr, local, p.stored_shape, p.block_size)
    left = lhs.T if p.lhs_transposed else lhs  # (rows, n)
    right = rhs if p.rhs_transposed else rhs.T  # (cols, n)
    left = left.astype(jnp.float32)[row]
    right = right.astype(jnp.float32)[col]
    return jnp.sum(left * right, axis=1).astype(lhs.dtype)
