"""The CSB matrix: a pytree holding one stored copy of a sparse matrix in Compressed Sparse
Blocks, with constructors and conversions.

Leaves: ``values`` (the only differentiable array, length nnz), ``block_ptr`` (int32, one entry
per block + 1) and ``local`` (uint16 position inside the block, row << 8 | col). Static
metadata: the stored shape, the block size and whether this object is the transposed view of
the stored matrix.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from . import _build, _validate
from ._dtypes import check_value_dtype


# Jitted so that eager calls compile once per shape instead of once per jnp operation.
@functools.partial(jax.jit, static_argnames=("stored_shape", "block_size"))
def coordinates(block_ptr, local, stored_shape, block_size):
    """Global (row, col) of every stored nonzero, as int32 arrays (works under jit)."""
    nnz = local.shape[0]
    block_cols = max(-(-stored_shape[1] // block_size), 1)
    # The block of nonzero e is the last b with block_ptr[b] <= e. A binary search compiles in
    # constant time (jnp.repeat or a prefix sum compile in time growing with nnz) and runs in
    # O(nnz log nblocks).
    e = jnp.arange(nnz, dtype=jnp.int32)
    block = jnp.searchsorted(block_ptr, e, side="right").astype(jnp.int32) - 1
    local = local.astype(jnp.int32)
    row = (block // block_cols) * block_size + (local >> 8)
    col = (block % block_cols) * block_size + (local & 0xFF)
    return row, col


def host_array(x, name: str, where: str) -> np.ndarray:
    """``x`` as a numpy array, or TypeError naming ``name`` when it is traced: the sparsity
    structure is built on the host and its size depends on the values."""
    if isinstance(x, jax.core.Tracer):
        aval = getattr(x, "aval", None)
        traced = aval.str_short() if hasattr(aval, "str_short") else aval
        raise TypeError(
            f"{name} must be a concrete array: {where} builds the sparsity structure on the "
            f"host, and its size (nnz) depends on the values, but {name} is traced "
            f"({traced}) inside jit, vmap, grad or a similar transformation. Build "
            f"the CSB outside the transformation and pass it in; inside, keep the structure "
            f"and change the values with A.with_values(...)"
        )
    return np.asarray(x)


def host_coordinates(block_ptr, local, stored_shape, block_size):
    """``coordinates`` in numpy, for concrete arrays: no compilation (conversions in eager
    code run in milliseconds)."""
    block_ptr, local = np.asarray(block_ptr), np.asarray(local).astype(np.int32)
    block_cols = max(-(-stored_shape[1] // block_size), 1)
    block = np.repeat(np.arange(block_ptr.size - 1, dtype=np.int32), np.diff(block_ptr))
    row = (block // block_cols) * block_size + (local >> 8)
    col = (block % block_cols) * block_size + (local & 0xFF)
    return row, col


@functools.partial(jax.jit, static_argnames=("shape",))
def _scatter(values, row, col, shape):
    return jnp.zeros(shape, values.dtype).at[row, col].set(values)


# The arrays of a CSB matrix (its pytree children, in order); everything else is static.
CSB_ARRAYS = ("values", "block_ptr", "local")
_arrays_of = operator.attrgetter(*CSB_ARRAYS)  # flattening runs at every call: one C call


@jax.tree_util.register_pytree_node_class
class CSB:
    """A sparse matrix in Compressed Sparse Blocks, stored once for A @ B, A.T @ B and SDDMM.

    Build one with :meth:`fromdense`, :meth:`from_scipy_sparse`, :meth:`from_bcoo`,
    :meth:`from_coo` or :func:`jaxcsb.load_smtx`. ``A.T`` is a view: it shares every array.

    >>> import numpy as np, jaxcsb
    >>> w = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    >>> A = jaxcsb.CSB.fromdense(w)
    >>> A.shape, A.nnz, A.block_size
    ((2, 2), 2, 16)
    """

    # numpy defers `ndarray @ CSB` to CSB.__rmatmul__ instead of building an object array.
    __array_ufunc__ = None

    def __init__(
        self,
        values,
        block_ptr,
        local,
        *,
        stored_shape: tuple[int, int],
        block_size: int,
        transposed: bool = False,
    ):
        self.values = values
        self.block_ptr = block_ptr
        self.local = local
        self.stored_shape = (int(stored_shape[0]), int(stored_shape[1]))
        self.block_size = int(block_size)
        self.transposed = bool(transposed)

    # pytree protocol --------------------------------------------------------------------------
    def tree_flatten(self):
        return _arrays_of(self), (self.stored_shape, self.block_size, self.transposed)

    @classmethod
    def tree_unflatten(cls, aux, children):
        stored_shape, block_size, transposed = aux
        return cls(
            *children, stored_shape=stored_shape, block_size=block_size, transposed=transposed
        )

    # properties -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.stored_shape
        return (cols, rows) if self.transposed else (rows, cols)

    @property
    def nnz(self) -> int:
        return int(self.values.shape[-1])

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def T(self) -> CSB:
        children, (stored_shape, block_size, transposed) = self.tree_flatten()
        return CSB.tree_unflatten((stored_shape, block_size, not transposed), children)

    def transpose(self) -> CSB:
        return self.T

    def __repr__(self):
        return (
            f"CSB(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, "
            f"block_size={self.block_size}{', transposed view' if self.transposed else ''})"
        )

    def validate(self) -> CSB:
        """Checks that the arrays are consistent and returns the matrix; ValueError naming the
        first inconsistent array.

        Shapes and dtypes are always checked; the contents (``block_ptr`` rises from 0 to nnz,
        every local index lies inside its block, clipped at the matrix edge) when the arrays
        are concrete, in O(nnz + blocks) on the host. Only arrays built or edited by hand can
        fail: the constructors build consistent ones. Products run the same checks (the
        contents once per set of jax arrays).
        """
        _validate.check(self)
        return self

    # values -----------------------------------------------------------------------------------
    def with_values(self, values) -> CSB:
        """The same structure with new values (length nnz, a supported dtype)."""
        if not hasattr(values, "shape") or not hasattr(values, "dtype"):
            values = jnp.asarray(values)
        if tuple(values.shape) != (self.nnz,):
            raise ValueError(f"values must have shape ({self.nnz},), got {tuple(values.shape)}")
        check_value_dtype(values.dtype, "values")
        children, aux = self.tree_flatten()
        return CSB.tree_unflatten(aux, (values, *children[1:]))

    def astype(self, dtype) -> CSB:
        return self.with_values(self.values.astype(check_value_dtype(dtype, "dtype")))

    # conversions ------------------------------------------------------------------------------
    def coordinates(self):
        """Global (row, col) of every nonzero in this matrix's (logical) orientation, as int32
        arrays in storage order. Computed on the host when the index arrays are concrete
        (which also checks them, see :meth:`validate`)."""
        _validate.check(self)
        args = (self.block_ptr, self.local, self.stored_shape, self.block_size)
        try:
            row, col = jax.device_put(host_coordinates(*args))
        except jax.errors.TracerArrayConversionError:  # under jit, vmap, grad, ...
            row, col = coordinates(*args)
        return (col, row) if self.transposed else (row, col)

    def todense(self):
        row, col = self.coordinates()
        return _scatter(self.values, row, col, self.shape)

    def to_bcoo(self):
        from jax.experimental import sparse

        row, col = self.coordinates()
        indices = jnp.stack([row, col], axis=1)
        return sparse.BCOO(
            (self.values, indices), shape=self.shape, indices_sorted=False, unique_indices=True
        )

    def to_scipy_sparse(self):
        """A scipy.sparse COO matrix. scipy has no bfloat16 or float16, so those values are
        widened (exactly) to float32."""
        import scipy.sparse

        row, col = (np.asarray(a) for a in self.coordinates())
        values = np.asarray(self.values)
        if values.dtype != np.float32:
            values = values.astype(np.float32)
        return scipy.sparse.coo_matrix((values, (row, col)), shape=self.shape)

    # constructors -----------------------------------------------------------------------------
    @classmethod
    def from_coo(cls, row, col, values, shape, *, block_size=None, dtype=None) -> CSB:
        """From coordinate triplets. Duplicate coordinates raise ValueError. Without
        ``block_size`` one is picked from the density, the value dtype and the platform
        (``jaxcsb._build.default_block_size``)."""
        where = "CSB.from_coo"
        row, col = host_array(row, "row", where), host_array(col, "col", where)
        values = host_array(values, "values", where)
        values, block_ptr, local, beta = _build.csb_arrays_from_coo(
            row, col, values, shape, block_size, dtype
        )
        rows, cols = _build.check_shape(shape)
        # device_put copies without compiling anything (jnp.asarray compiles per shape).
        return cls(
            *jax.device_put((values, block_ptr, local)),
            stored_shape=(rows, cols),
            block_size=beta,
        )

    @classmethod
    def fromdense(cls, w, mask=None, *, block_size=None, dtype=None) -> CSB:
        """From a dense 2-D array. Without ``mask`` the nonzeros of ``w`` are kept; with a mask
        the pattern is exactly the mask's True entries, explicit zeros inside it included."""
        w = host_array(w, "w", "CSB.fromdense")
        if w.ndim != 2:
            raise ValueError(f"w must be a 2-D array, got shape {w.shape}")
        if mask is None:
            keep = w != 0
        else:
            keep = host_array(mask, "mask", "CSB.fromdense")
            if keep.shape != w.shape:
                raise ValueError(f"mask must have the shape of w {w.shape}, got {keep.shape}")
            keep = keep.astype(bool)
        if dtype is None:
            check_value_dtype(w.dtype, "w")
        row, col = np.nonzero(keep)
        return cls.from_coo(row, col, w[row, col], w.shape, block_size=block_size, dtype=dtype)

    @classmethod
    def from_scipy_sparse(cls, m, *, block_size=None, dtype=None) -> CSB:
        """From any scipy.sparse matrix or array. Explicitly stored zeros stay in the pattern;
        duplicate entries (possible in COO) raise ValueError."""
        if not hasattr(m, "tocoo"):
            raise ValueError(f"m must be a scipy.sparse matrix, got {type(m).__name__}")
        coo = m.tocoo()
        if dtype is None:
            check_value_dtype(coo.data.dtype, "m.data")
        return cls.from_coo(
            coo.row, coo.col, coo.data, coo.shape, block_size=block_size, dtype=dtype
        )

    @classmethod
    def from_bcoo(cls, m, *, block_size=None, dtype=None) -> CSB:
        """From a jax.experimental.sparse BCOO (or BCSR) matrix without batch or dense
        dimensions. Duplicate indices raise ValueError. Entries whose index equals the shape,
        the padding that JAX writes (``BCOO.fromdense(x, nse=...)``, ``sum_duplicates``), are
        dropped; any other index out of range raises ValueError."""
        from jax.experimental import sparse

        if isinstance(m, sparse.BCSR):
            m = m.to_bcoo()
        if not isinstance(m, sparse.BCOO):
            raise ValueError(f"m must be a jax.experimental.sparse BCOO, got {type(m).__name__}")
        if m.n_batch or m.n_dense or m.ndim != 2:
            raise ValueError(
                f"m must be a 2-D BCOO with no batch or dense dimensions, got n_batch="
                f"{m.n_batch}, n_dense={m.n_dense}, shape={m.shape}"
            )
        indices = host_array(m.indices, "m.indices", "CSB.from_bcoo")
        data = host_array(m.data, "m.data", "CSB.from_bcoo")
        if dtype is None:
            check_value_dtype(data.dtype, "m.data")
        padding = (indices[:, 0] == m.shape[0]) & (indices[:, 1] == m.shape[1])
        if padding.any():
            indices, data = indices[~padding], data[~padding]
        return cls.from_coo(
            indices[:, 0],
            indices[:, 1],
            data,
            m.shape,
            block_size=block_size,
            dtype=dtype,
        )

    # products ---------------------------------------------------------------------------------
    def __matmul__(self, other):
        from ._ops import csb_matmul

        return csb_matmul(self, other)

    def __rmatmul__(self, other):
        from ._ops import csb_matmul

        return csb_matmul(other, self)
