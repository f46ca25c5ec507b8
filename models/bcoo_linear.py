"""The peer for the sparse Transformer: a linear layer on jax.experimental.sparse BCOO.

Same pattern, initialization and interface as ``jaxcsb.nnx.SparseLinear`` (values an
``nnx.Param``, the (nnz, 2) indices a non-trainable ``SparseStructure``), computed with
``x @ BCOO`` (``bcoo_dot_general``), JAX's own sparse product.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import sparse

from jaxcsb.nnx import SparseStructure, rescaled_init
from jaxcsb.pruning import random_mask

DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()


class BCOOLinear(nnx.Module):
    """``y = x @ W + b`` with W a BCOO matrix of shape (in_features, out_features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        sparsity: float,
        use_bias: bool = True,
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init=DEFAULT_KERNEL_INIT,
        rngs: nnx.Rngs,
    ):
        shape = (in_features, out_features)
        dense = np.asarray(kernel_init(rngs.params(), shape, param_dtype))
        rngs.params()  # the bias's key in SparseLinear (the bias starts at zero)
        mask = random_mask(shape, sparsity, rngs.params())
        dense = rescaled_init(dense, mask)
        row, col = np.nonzero(mask)  # row-major: sorted indices
        self.values = nnx.Param(jnp.asarray(dense[row, col]))
        self.indices = SparseStructure(jnp.asarray(np.stack([row, col], axis=1).astype(np.int32)))
        bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.bias = bias if use_bias else nnx.data(None)
        self.in_features, self.out_features = in_features, out_features
        self.dtype = dtype

    def __call__(self, x):
        dtype = self.dtype or jnp.result_type(x, self.values[...])
        w = sparse.BCOO(
            (self.values[...].astype(dtype), self.indices[...]),
            shape=(self.in_features, self.out_features),
            indices_sorted=True,
            unique_indices=True,
        )
        y = x.astype(dtype).reshape(-1, self.in_features) @ w
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
