"""A Flax Linen layer whose kernel is a pruned matrix stored in Compressed Sparse Blocks.

In Linen a module is a description and its arrays live in variable collections, so
:class:`SparseDense` keeps them apart the same way: the pattern is fixed when the module is
constructed (``mask=``, or ``sparsity=`` with a seed), the kernel's nonzero values and the bias
are in ``"params"`` (what optax trains), and the pattern's index arrays are in a collection of
their own, ``"csb_structure"``, created by ``init`` and passed back to ``apply`` like
``"batch_stats"``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ._build import check_block_size, layer_block_size
from ._format import CSB
from ._ops import IMPLS, csb_matmul
from .pruning._masks import check_sparsity, magnitude_mask, num_pruned
from .pruning._pattern import host_pattern

default_kernel_init = nn.initializers.lecun_normal()

__all__ = ["SparseDense", "STRUCTURE"]

STRUCTURE = "csb_structure"
_STRUCTURE_NAMES = ("block_ptr", "local")


class SparseDense(nn.Module):
    """A linear layer ``y = x @ W + b`` with a pruned kernel in CSB (Flax Linen).

    Fields follow :class:`flax.linen.Dense` (``features``, ``use_bias``, ``dtype``,
    ``param_dtype``, ``kernel_init``, ``bias_init``), plus the pattern, fixed at construction:

    * ``mask``: bool (in_features, features), True where a weight is kept; or
    * ``sparsity``: a uniformly random pattern pruning exactly ``round(sparsity * size)``
      weights, drawn with numpy from ``mask_seed`` and the module's path (so two layers of one
      model get different patterns, and ``init`` and ``apply`` agree without any rng);

    and ``block_size`` (None picks it from the density and dtype). Initialization and
    ``rescale_init`` are those of :class:`jaxcsb.nnx.SparseLinear`: ``kernel_init`` on the
    dense shape, kept entries taken, and each output's weights scaled by
    sqrt(in_features / fan_in) so its variance matches the dense layer's
    (``rescale_init=False`` keeps Flax's values).

    Variables: ``params/values`` (nnz,), ``params/bias`` (features,) and, in the
    ``"csb_structure"`` collection, ``block_ptr`` and ``local``.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcsb.linen import SparseDense
    >>> layer = SparseDense(32, sparsity=0.9)
    >>> x = jnp.ones((4, 64))
    >>> variables = layer.init(jax.random.key(0), x)
    >>> sorted(variables), variables["params"]["values"].shape
    (['csb_structure', 'params'], (205,))
    >>> layer.apply(variables, x).shape
    (4, 32)
    """

    features: int
    sparsity: float | None = None
    mask: Any = None
    block_size: int | None = None
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    rescale_init: bool = True
    mask_seed: int = 0
    impl: str = "auto"

    structure_collection: ClassVar[str] = STRUCTURE

    # the pattern (static, on the host) --------------------------------------------------------
    def _check_options(self, in_features):
        if (
            isinstance(self.features, bool)
            or not isinstance(self.features, int)
            or self.features < 1
        ):
            raise ValueError(f"features must be a positive int, got {self.features!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if (self.sparsity is None) == (self.mask is None):
            raise ValueError(
                "pass exactly one of sparsity= (a random pattern) or mask= (bool "
                f"(in_features, features)), got sparsity={self.sparsity!r} and "
                f"mask={'None' if self.mask is None else 'an array'}"
            )
        shape = (in_features, self.features)
        if self.mask is not None and np.shape(self.mask) != shape:
            raise ValueError(
                f"mask must have shape (in_features, features) = {shape} for inputs with "
                f"{in_features} features, got {np.shape(self.mask)}"
            )
        return shape

    def _nnz_and_block_size(self, shape):
        """The static facts ``apply`` needs, computed without building the pattern."""
        size = shape[0] * shape[1]
        if self.mask is not None:
            nnz = int(np.count_nonzero(np.asarray(self.mask)))
        else:
            nnz = size - num_pruned(size, check_sparsity(self.sparsity))
        if self.block_size is None:
            return nnz, layer_block_size(shape, nnz, self.dtype, self.param_dtype)
        return nnz, check_block_size(self.block_size)

    def pattern_mask(self, in_features: int, path: tuple = ()) -> np.ndarray:
        """The kept positions, numpy bool (in_features, features). ``path`` is the module's
        path in its model (``self.path`` inside the model; it seeds the random pattern)."""
        shape = self._check_options(in_features)
        if self.mask is not None:
            return np.asarray(self.mask).astype(bool)
        seed = [int(self.mask_seed), zlib.crc32("/".join(map(str, path)).encode())]
        size = shape[0] * shape[1]
        order = np.random.default_rng(seed).permutation(size)
        keep = np.ones(size, bool)
        keep[order[: num_pruned(size, check_sparsity(self.sparsity))]] = False
        return keep.reshape(shape)

    # calling ----------------------------------------------------------------------------------
    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies ``inputs @ W + b`` over the last dimension (any leading dimensions)."""
        in_features = inputs.shape[-1]
        shape = self._check_options(in_features)
        nnz, block_size = self._nnz_and_block_size(shape)
        path = tuple(self.scope.path)

        @functools.cache
        def pattern():
            mask = self.pattern_mask(in_features, path)
            return {"mask": mask, **host_pattern(mask, block_size)}

        if not self.is_initializing() and not self.has_variable(STRUCTURE, "local"):
            raise ValueError(
                f"SparseDense at {'/'.join(path) or '<root>'} needs the {STRUCTURE!r} "
                f"collection: pass the variables from init, e.g. "
                f"apply({{'params': params, {STRUCTURE!r}: variables[{STRUCTURE!r}]}}, x)"
            )
        arrays = [
            self.variable(STRUCTURE, name, lambda n=name: jnp.asarray(pattern()[n])).value
            for name in _STRUCTURE_NAMES
        ]

        def init_values(key):
            p = pattern()
            mask = p["mask"]
            dense = self.kernel_init(key, shape, self.param_dtype)
            if self.rescale_init:
                fan_in = mask.sum(axis=0)
                scale = np.sqrt(shape[0] / np.maximum(fan_in, 1)).astype(np.float32)
                dense = (dense.astype(jnp.float32) * scale).astype(self.param_dtype)
            return dense[p["row"], p["col"]]

        values = self.param("values", init_values)
        if values.shape != (nnz,):
            raise ValueError(
                f"params 'values' has shape {values.shape} but the pattern of this SparseDense "
                f"keeps {nnz} weights"
            )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        dtype = self.dtype
        if dtype is None:
            dtype = jnp.result_type(inputs, values, *(() if bias is None else (bias,)))
        kernel = CSB(values.astype(dtype), *arrays, stored_shape=shape, block_size=block_size)
        x = jnp.asarray(inputs, dtype)
        y = csb_matmul(x if x.ndim > 1 else x[None], kernel, impl=self.impl)
        if x.ndim == 1:
            y = y[0]
        if bias is not None:
            y = y + bias.astype(dtype)
        return y

    # conversions ------------------------------------------------------------------------------
    def to_dense(self, variables, in_features: int | None = None):
        """``(kernel, bias)`` from this layer's variables (as returned by ``init`` for it):
        the dense (in_features, features) kernel, zeros where pruned, and the bias or None.
        ``in_features`` is needed only when the module was built with ``sparsity=``."""
        if in_features is None:
            if self.mask is None:
                raise ValueError("in_features is required for a SparseDense built with sparsity=")
            in_features = np.shape(self.mask)[0]
        shape = self._check_options(in_features)
        _, block_size = self._nnz_and_block_size(shape)
        params, structure = variables["params"], variables[STRUCTURE]
        kernel = CSB(
            params["values"],
            *(structure[n] for n in _STRUCTURE_NAMES),
            stored_shape=shape,
            block_size=block_size,
        )
        return kernel.todense(), params.get("bias")

    @classmethod
    def from_dense(
        cls,
        kernel,
        bias=None,
        *,
        sparsity: float | None = None,
        mask=None,
        block_size: int | None = None,
        **kwargs,
    ):
        """``(module, variables)`` for a dense (in_features, features) kernel and optional bias.

        The pattern is ``mask``, else the magnitude mask at ``sparsity``, else the nonzeros of
        ``kernel``; the module carries it as its ``mask``. Other keyword arguments go to the
        module (``dtype``, ``impl``, ...).

        >>> import numpy as np, jax.numpy as jnp
        >>> from jaxcsb.linen import SparseDense
        >>> w = np.arange(12, dtype=np.float32).reshape(3, 4)
        >>> layer, variables = SparseDense.from_dense(w, sparsity=0.5)
        >>> np.asarray(layer.apply(variables, jnp.ones((1, 3)))).tolist()
        [[8.0, 9.0, 16.0, 18.0]]
        """
        if sparsity is not None and mask is not None:
            raise ValueError("pass at most one of sparsity= and mask=, got both")
        kernel = np.asarray(kernel)
        if kernel.ndim != 2:
            raise ValueError(
                f"kernel must be 2-D (in_features, features), got shape {kernel.shape}"
            )
        if mask is None:
            mask = (
                np.asarray(magnitude_mask(kernel, check_sparsity(sparsity)))
                if sparsity is not None
                else kernel != 0
            )
        mask = np.asarray(mask).astype(bool)
        if mask.shape != kernel.shape:
            raise ValueError(f"mask must have the kernel's shape {kernel.shape}, got {mask.shape}")
        module = cls(
            kernel.shape[1],
            mask=mask,
            block_size=block_size,
            use_bias=bias is not None,
            param_dtype=kernel.dtype,
            **kwargs,
        )
        csb = CSB.fromdense(kernel, mask, block_size=module._nnz_and_block_size(kernel.shape)[1])
        params = {"values": csb.values}
        if bias is not None:
            bias = jnp.asarray(bias)
            if bias.shape != (kernel.shape[1],):
                raise ValueError(
                    f"bias must have shape (features,) = ({kernel.shape[1]},), got {bias.shape}"
                )
            params["bias"] = bias
        structure = {n: getattr(csb, n) for n in _STRUCTURE_NAMES}
        return module, {"params": params, STRUCTURE: structure}
