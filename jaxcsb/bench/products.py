"""The five benchmarked products: their operands, useful work and float64 references.

With A the sparse (M, K) weight matrix (rows = output features):

=========  ==================  ==========================  ==========================
name       math                dense operands              output
=========  ==================  ==========================  ==========================
spmm       A @ B               B (K, N)                    (M, N)
spmm_t     A.T @ B             B (M, N)                    (K, N)
xw_t       X @ A.T  (forward)  X (N, K), batch leading     (N, M)
xw         X @ A  (transposed) X (N, M), batch leading     (N, K)
sddmm      (L @ R) at A's nnz  L (M, N), R (N, K)          nnz values, row-major order
=========  ==================  ==========================  ==========================

``spmm``/``xw_t`` are the forward pass in the two layouts, ``spmm_t``/``xw`` the input
gradient, ``sddmm`` the weight gradient. Useful work is 2 * nnz * N flops for all five.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .matrices import Matrix

PRODUCTS = ("spmm", "spmm_t", "xw_t", "xw", "sddmm")
# The transposed product of each forward one, for the transposed / forward time ratio.
TRANSPOSED_OF = {"spmm_t": "spmm", "xw": "xw_t"}

DTYPES = {
    "float32": np.dtype(jnp.float32),
    "bfloat16": np.dtype(jnp.bfloat16),
    "float16": np.dtype(jnp.float16),
}

# Relative Frobenius-norm error allowed against the float64 product of the (rounded) inputs.
# float32: accumulation order only; half types: one rounding of the output plus float32
# accumulation; "tf32": XLA's default precision for float32 on GPUs (10-bit mantissa inputs).
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3, "tf32": 5e-3}

# Rough host speeds for choosing how to compute the float64 reference (see attach_reference).
SPARSE_MACS_PER_S = 3e8  # scipy.sparse CSR times dense, one thread
DENSE_MACS_PER_S_PER_CORE = 4e9  # numpy float64 GEMM
HOST_REFERENCE_MAX_S = 3.0


def dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def check_product(name: str) -> str:
    if name not in PRODUCTS:
        raise ValueError(f"product must be one of {PRODUCTS}, got {name!r}")
    return name


@dataclass(eq=False)
class Problem:
    """One case: a matrix, N, a dtype and a product, with its inputs and reference output."""

    matrix: Matrix
    n: int
    dtype: np.dtype
    product: str
    values: np.ndarray  # the matrix's values rounded to dtype (numpy, dtype)
    operands: tuple  # dense operands (numpy, dtype), as in the table above
    reference: np.ndarray | None = None  # float64, canonical layout

    @property
    def useful_flops(self) -> float:
        return 2.0 * self.matrix.nnz * self.n

    @property
    def out_shape(self) -> tuple[int, ...]:
        m, k = self.matrix.shape
        return {
            "spmm": (m, self.n),
            "spmm_t": (k, self.n),
            "xw_t": (self.n, m),
            "xw": (self.n, k),
            "sddmm": (self.matrix.nnz,),
        }[self.product]

    def io_bytes(self, itemsize: int | None = None, out_elements: int | None = None) -> int:
        """Bytes of the dense operands read and the output written, at ``itemsize`` bytes per
        element (default: the problem's dtype); ``out_elements`` overrides the output size
        (a dense peer of SDDMM writes the whole product)."""
        size = self.dtype.itemsize if itemsize is None else itemsize
        inputs = sum(int(np.prod(o.shape)) for o in self.operands)
        out = int(np.prod(self.out_shape)) if out_elements is None else out_elements
        return size * (inputs + out)


def operand_shapes(m: Matrix, n: int, product: str) -> tuple[tuple[int, int], ...]:
    rows, cols = m.shape
    return {
        "spmm": ((cols, n),),
        "spmm_t": ((rows, n),),
        "xw_t": ((n, cols),),
        "xw": ((n, rows),),
        "sddmm": ((rows, n), (n, cols)),
    }[check_product(product)]


def make_problem(m: Matrix, n: int, dtype, product: str, seed: int = 1) -> Problem:
    """Draws the dense operands (standard normal, rounded to ``dtype``); no reference yet."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    operands = tuple(
        rng.standard_normal(s, dtype=np.float32).astype(dtype)
        for s in operand_shapes(m, n, product)
    )
    values = m.values.astype(dtype)
    return Problem(m, int(n), dtype, product, values, operands)


def _host_sparse_reference(p: Problem) -> np.ndarray:
    """float64 through scipy.sparse (single-threaded; cost ~ nnz * N)."""
    import scipy.sparse

    m = p.matrix
    ops = [o.astype(np.float64) for o in p.operands]
    if p.product == "sddmm":
        lhs, rhs = ops
        out = np.empty(m.nnz)
        step = max(1, int(2**22 // max(1, p.n)))
        for s in range(0, m.nnz, step):
            r, c = m.row[s : s + step], m.col[s : s + step]
            out[s : s + step] = np.einsum("en,en->e", lhs[r], rhs[:, c].T)
        return out
    a = scipy.sparse.csr_matrix((p.values.astype(np.float64), (m.row, m.col)), shape=m.shape)
    b = ops[0]
    return {
        "spmm": lambda: a @ b,
        "spmm_t": lambda: a.T @ b,
        "xw_t": lambda: (a @ b.T).T,
        "xw": lambda: (a.T @ b.T).T,
    }[p.product]()


def _host_dense_reference(p: Problem) -> np.ndarray:
    """float64 through numpy's multithreaded BLAS on the masked matrix (cost ~ M * K * N)."""
    m = p.matrix
    ops = [o.astype(np.float64) for o in p.operands]
    if p.product == "sddmm":
        return (ops[0] @ ops[1])[m.row, m.col]
    w, b = m.dense(np.float64, p.values.astype(np.float64)), ops[0]
    return {
        "spmm": lambda: w @ b,
        "spmm_t": lambda: w.T @ b,
        "xw_t": lambda: b @ w.T,
        "xw": lambda: b @ w,
    }[p.product]()


@functools.partial(jax.jit, static_argnames="product")
def _dense_product(w, ops, product):
    hi = jax.lax.Precision.HIGHEST
    if product == "sddmm":
        return jnp.matmul(ops[0], ops[1], precision=hi)
    b = ops[0]
    if product == "spmm":
        return jnp.matmul(w, b, precision=hi)
    if product == "spmm_t":
        return jnp.matmul(w.T, b, precision=hi)
    if product == "xw_t":
        return jnp.matmul(b, w.T, precision=hi)
    return jnp.matmul(b, w, precision=hi)  # xw


def _device_reference(p: Problem) -> np.ndarray:
    m = p.matrix
    ops = tuple(jnp.asarray(o.astype(np.float32)) for o in p.operands)
    if p.product == "sddmm":
        full = np.asarray(_dense_product(None, ops, p.product))
        return full[m.row, m.col].astype(np.float64)
    w = jnp.asarray(m.dense(np.float32, p.values.astype(np.float32)))
    return np.asarray(_dense_product(w, ops, p.product), np.float64)


def attach_reference(p: Problem) -> str:
    """Computes ``p.reference`` in float64 on the host, through scipy.sparse or numpy's BLAS
    whichever is expected to be faster; when both would take more than a few seconds, through
    the dense product at precision="highest" on the default device. Returns which was used."""
    m = p.matrix
    sparse_s = m.nnz * p.n / SPARSE_MACS_PER_S
    dense_s = m.shape[0] * m.shape[1] * p.n / (DENSE_MACS_PER_S_PER_CORE * (os.cpu_count() or 1))
    if min(sparse_s, dense_s) > HOST_REFERENCE_MAX_S:
        p.reference = _device_reference(p)
        return "float32 dense on the device, precision=highest"
    if sparse_s <= dense_s:
        p.reference = _host_sparse_reference(p)
        return "float64 scipy.sparse"
    p.reference = _host_dense_reference(p)
    return "float64 numpy dense"


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref||_F / ||ref||_F in float64 (inf if shapes differ or the output is not
    finite)."""
    out = np.asarray(out, np.float64)
    if out.shape != ref.shape or not np.all(np.isfinite(out)):
        return float("inf")
    scale = float(np.linalg.norm(ref))
    return float(np.linalg.norm(out - ref)) / (scale if scale > 0 else 1.0)
