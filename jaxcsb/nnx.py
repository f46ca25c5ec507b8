"""Flax NNX layers whose kernel is a pruned matrix stored in Compressed Sparse Blocks.

:class:`SparseLinear` is :class:`flax.nnx.Linear` with a sparse kernel: ``y = x @ W + b`` with
``W`` of shape (in_features, out_features) (Flax's layout), computed by
:func:`jaxcsb.csb_matmul` straight from the activations' layout. The kernel's nonzero values are
its only trainable array (an ``nnx.Param``); the pattern's index arrays are
:class:`SparseStructure` variables, which optimizers built with ``wrt=nnx.Param`` and
``nnx.grad`` ignore, so ``nnx.Optimizer``, ``nnx.jit`` and optax need nothing special.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._build import layer_block_size
from ._format import CSB
from ._ops import IMPLS, csb_matmul
from .pruning._masks import check_sparsity, magnitude_mask, random_mask
from .pruning._pattern import host_coordinates

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()

__all__ = ["SparseLinear", "SparseStructure"]


class SparseStructure(nnx.Variable):
    """The index arrays of a sparse kernel (``block_ptr``, ``local``): part of the model's
    state, saved with it, never trained.

    Filter on it like on any variable type, e.g. ``nnx.state(model, SparseStructure)``.
    """


def rescaled_init(dense: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scales column j of a dense initial kernel by sqrt(in_features / fan_in_j), fan_in_j the
    number of kept weights feeding output j, so each output's variance at initialization
    matches the dense layer's (for variance-scaling initializers such as the default
    lecun_normal this is the same initializer applied with the sparse fan-in)."""
    fan_in = mask.sum(axis=0)
    scale = np.sqrt(mask.shape[0] / np.maximum(fan_in, 1)).astype(np.float32)
    return (dense.astype(np.float32) * scale).astype(dense.dtype)


def _check_features(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_block_size(block_size):
    from ._build import check_block_size

    return None if block_size is None else check_block_size(block_size)


class SparseLinear(nnx.Module):
    """A linear layer ``y = x @ W + b`` with a pruned kernel in CSB (Flax NNX).

    The constructor follows :class:`flax.nnx.Linear`, plus the pattern: ``sparsity=`` (a
    uniformly random pattern pruning exactly ``round(sparsity * in * out)`` weights) or
    ``mask=`` (bool (in_features, out_features), True where a weight is kept), and
    ``block_size=`` (the CSB block size; ``None`` picks it from the density).

    Initialization: ``kernel_init`` draws the dense (in_features, out_features) kernel exactly
    as ``nnx.Linear`` would (same rngs, same order: kernel then bias; the random pattern takes
    the next key), and the kept entries become the values. With ``rescale_init=True``
    (default) output j's weights are multiplied by sqrt(in_features / fan_in_j), fan_in_j its
    number of kept inputs, so each output's variance at initialization matches the dense
    layer's instead of shrinking with the density (the sparse-aware scaling of Evci et al.,
    "Gradient flow in sparse neural networks", 2022). ``rescale_init=False`` keeps Flax's
    values unchanged (masked).

    Computation: ``x`` and the values are promoted to ``dtype`` (or, if None, the promoted dtype
    of ``x`` and the parameters; float32, bfloat16 or float16), accumulated in float32.

    Construct it eagerly, not under ``jit`` or ``nnx.eval_shape``: the pattern is sorted into
    CSB on the host. Calling it works under every transformation.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxcsb.nnx import SparseLinear
    >>> layer = SparseLinear(64, 32, sparsity=0.9, rngs=nnx.Rngs(0))
    >>> layer.nnz, layer.kernel.shape
    (205, (64, 32))
    >>> layer(jnp.ones((8, 10, 64))).shape
    (8, 10, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        sparsity: float | None = None,
        mask=None,
        block_size: int | None = None,
        use_bias: bool = True,
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init=default_kernel_init,
        bias_init=default_bias_init,
        rescale_init: bool = True,
        impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        in_features = _check_features("in_features", in_features)
        out_features = _check_features("out_features", out_features)
        block_size = _check_block_size(block_size)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if (sparsity is None) == (mask is None):
            raise ValueError(
                "pass exactly one of sparsity= (a random pattern) or mask= (bool "
                f"(in_features, out_features)), got sparsity={sparsity!r} and "
                f"mask={'None' if mask is None else 'an array'}"
            )
        shape = (in_features, out_features)
        kernel_key = rngs.params()
        dense = np.asarray(kernel_init(kernel_key, shape, param_dtype))
        bias = bias_init(rngs.params(), (out_features,), param_dtype) if use_bias else None
        if mask is None:
            mask = random_mask(shape, check_sparsity(sparsity), rngs.params())
        else:
            mask = np.asarray(mask)
            if mask.shape != shape:
                raise ValueError(
                    f"mask must have shape (in_features, out_features) = {shape}, got {mask.shape}"
                )
            mask = mask.astype(bool)
        if rescale_init:
            dense = rescaled_init(dense, mask)

        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.impl = impl
        self.bias = nnx.Param(bias) if use_bias else nnx.data(None)
        if block_size is None:
            block_size = layer_block_size(shape, int(mask.sum()), dtype, param_dtype)
        self.set_kernel(CSB.fromdense(dense, mask, block_size=block_size))

    # the kernel --------------------------------------------------------------------------------
    @property
    def kernel(self) -> CSB:
        """The kernel as a :class:`jaxcsb.CSB` matrix of shape (in_features, out_features)."""
        return CSB(
            self.values[...],
            self.block_ptr[...],
            self.local[...],
            stored_shape=(self.in_features, self.out_features),
            block_size=self.block_size,
        )

    def set_kernel(self, kernel: CSB) -> None:
        """Replaces the kernel (pattern and values) in place.

        ``kernel`` must be a (in_features, out_features) CSB matrix, not a transposed view. When
        the number of nonzeros changes, build a new optimizer afterwards: its state has the old
        shapes.
        """
        if not isinstance(kernel, CSB):
            raise ValueError(f"kernel must be a jaxcsb.CSB matrix, got {type(kernel).__name__}")
        expected = (self.in_features, self.out_features)
        if kernel.transposed or kernel.stored_shape != expected:
            raise ValueError(
                f"kernel must be a stored (in_features, out_features) = {expected} CSB matrix, "
                f"got shape {kernel.shape}{' (a transposed view)' if kernel.transposed else ''}"
            )
        self.block_size = kernel.block_size
        arrays = {
            "block_ptr": kernel.block_ptr,
            "local": kernel.local,
        }
        if hasattr(self, "values"):
            self.values.set_value(jnp.asarray(kernel.values))
            for name, a in arrays.items():
                getattr(self, name).set_value(jnp.asarray(a))
        else:
            self.values = nnx.Param(jnp.asarray(kernel.values))
            for name, a in arrays.items():
                setattr(self, name, SparseStructure(jnp.asarray(a)))

    @property
    def nnz(self) -> int:
        """Number of stored (kept) weights."""
        return int(self.values.shape[0])

    @property
    def sparsity(self) -> float:
        """Fraction of the (in_features, out_features) kernel that is pruned."""
        return 1.0 - self.nnz / (self.in_features * self.out_features)

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of every stored weight, in the order of ``values`` (numpy, on the host)."""
        shape = (self.in_features, self.out_features)
        return host_coordinates(self.block_ptr[...], self.local[...], shape, self.block_size)

    def mask(self) -> np.ndarray:
        """The pattern as a numpy bool array (in_features, out_features)."""
        out = np.zeros((self.in_features, self.out_features), bool)
        out[self.coordinates()] = True
        return out

    # calling ----------------------------------------------------------------------------------
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies ``inputs @ W + b`` over the last dimension of ``inputs`` (any leading
        dimensions, including none)."""
        values = self.values[...]
        bias = self.bias[...] if self.bias is not None else None
        dtype = self.dtype
        if dtype is None:
            dtype = jnp.result_type(inputs, values, *(() if bias is None else (bias,)))
        if inputs.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"inputs must have a last dimension of in_features={self.in_features}, got "
                f"shape {inputs.shape}"
            )
        x = jnp.asarray(inputs, dtype)
        kernel = self.kernel.with_values(values.astype(dtype))
        y = csb_matmul(x if x.ndim > 1 else x[None], kernel, impl=self.impl)
        if x.ndim == 1:
            y = y[0]
        if bias is not None:
            y = y + bias.astype(dtype)
        return y

    # conversions ------------------------------------------------------------------------------
    def to_dense(self) -> tuple[jax.Array, jax.Array | None]:
        """``(kernel, bias)``: the dense (in_features, out_features) kernel (zeros where pruned)
        and the bias (None without one), in ``param_dtype``."""
        bias = self.bias[...] if self.bias is not None else None
        try:
            values = np.asarray(self.values[...])
        except jax.errors.TracerArrayConversionError:  # under a transformation
            return self.kernel.todense(), bias
        kernel = np.zeros((self.in_features, self.out_features), values.dtype)
        kernel[self.coordinates()] = values
        return jnp.asarray(kernel), bias

    def to_linear(self) -> nnx.Linear:
        """An ``nnx.Linear`` holding the dense kernel (pruned weights as zeros) and the bias."""
        kernel, bias = self.to_dense()
        return nnx.Linear(
            self.in_features,
            self.out_features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=lambda *_: kernel,
            bias_init=lambda *_: bias,
            rngs=nnx.Rngs(0),
        )

    @classmethod
    def from_dense(
        cls,
        kernel,
        bias=None,
        *,
        sparsity: float | None = None,
        mask=None,
        block_size: int | None = None,
        dtype=None,
        param_dtype=None,
        impl: str = "auto",
    ) -> SparseLinear:
        """A SparseLinear from a dense (in_features, out_features) kernel and optional bias.

        The pattern is ``mask`` (kept exactly, zeros inside it included), else the
        ``round(sparsity * size)``-pruned magnitude mask of ``kernel``, else the nonzeros of
        ``kernel``. ``param_dtype`` defaults to the kernel's dtype.

        >>> import numpy as np
        >>> from jaxcsb.nnx import SparseLinear
        >>> w = np.arange(12, dtype=np.float32).reshape(3, 4)
        >>> layer = SparseLinear.from_dense(w, sparsity=0.5)
        >>> np.asarray(layer.to_dense()[0]).tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]]
        """
        if sparsity is not None and mask is not None:
            raise ValueError("pass at most one of sparsity= and mask=, got both")
        kernel = np.asarray(kernel)
        if kernel.ndim != 2:
            raise ValueError(
                f"kernel must be 2-D (in_features, out_features), got shape {kernel.shape}"
            )
        if mask is None:
            if sparsity is not None:
                mask = np.asarray(magnitude_mask(kernel, check_sparsity(sparsity)))
            else:
                mask = kernel != 0
        if bias is not None:
            bias = jnp.asarray(bias)
            if bias.shape != (kernel.shape[1],):
                raise ValueError(
                    f"bias must have shape (out_features,) = ({kernel.shape[1]},), got {bias.shape}"
                )
        param_dtype = kernel.dtype if param_dtype is None else param_dtype
        return cls(
            kernel.shape[0],
            kernel.shape[1],
            mask=mask,
            block_size=block_size,
            use_bias=bias is not None,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=lambda _, shape, dt: jnp.asarray(kernel, dt),
            bias_init=lambda _, shape, dt: jnp.asarray(bias, dt),
            rescale_init=False,
            impl=impl,
            rngs=nnx.Rngs(0),
        )

    @classmethod
    def from_linear(
        cls,
        linear: nnx.Linear,
        *,
        sparsity: float | None = None,
        mask=None,
        block_size: int | None = None,
        impl: str = "auto",
    ) -> SparseLinear:
        """A SparseLinear with the kernel, bias, dtype and param_dtype of an ``nnx.Linear``
        (pattern chosen as in :meth:`from_dense`). Its ``precision`` and ``dot_general``
        options have no sparse equivalent and are dropped."""
        if not isinstance(linear, nnx.Linear):
            raise ValueError(f"linear must be an nnx.Linear, got {type(linear).__name__}")
        return cls.from_dense(
            linear.kernel[...],
            linear.bias[...] if linear.bias is not None else None,
            sparsity=sparsity,
            mask=mask,
            block_size=block_size,
            dtype=linear.dtype,
            param_dtype=linear.param_dtype,
            impl=impl,
        )
