"""The implementations under comparison ("peers"), each turning a :class:`Problem` into one
timed call.

A peer's ``prepare`` builds its stored matrix and device operands (untimed) and returns a
:class:`Prepared`: ``fn(weight, *dense)`` is the call that is checked and then timed,
``to_numpy`` brings its output to the canonical float64 layout (untimed). A product a peer
does not have raises :class:`NotApplicable` with the reason; a peer that cannot run here at
all says why in ``unavailable()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxcsb

from .products import Problem


class NotApplicable(Exception):
    """The peer has no implementation of this product (or dtype); the message says why."""


@dataclass
class Prepared:
    kind: str  # "jax" (jitted, device arrays), "torch" (CUDA tensors) or "host" (numpy)
    fn: Callable
    weight: Any  # the stored matrix (or None), first argument of fn
    dense: tuple  # the dense operands, the rest of fn's arguments
    to_numpy: Callable  # output -> float64 numpy in the problem's canonical layout
    bytes: int  # bytes one call moves at least: stored matrix + dense operands + output
    tolerance: str  # key of products.TOLERANCE
    block_size: int | None = None


def _sddmm_gather(p: Problem):
    """Output -> float64 values at the pattern, for peers whose SDDMM output is dense."""
    row, col = p.matrix.row, p.matrix.col
    return lambda out: np.asarray(out)[row, col].astype(np.float64)


def _to_f64(out) -> np.ndarray:
    # On the host: an eager jnp conversion would compile one XLA program per shape.
    return np.asarray(out).astype(np.float64)


def _csb_order(a, shape) -> np.ndarray:
    """The permutation taking CSB storage order to row-major order (computed on the host;
    the formula of jaxcsb._format.coordinates)."""
    block_ptr, local = np.asarray(a.block_ptr), np.asarray(a.local).astype(np.int64)
    beta = a.block_size
    block_cols = max(1, -(-a.stored_shape[1] // beta))
    block = np.repeat(np.arange(block_ptr.size - 1), np.diff(block_ptr))
    row = (block // block_cols) * beta + (local >> 8)
    col = (block % block_cols) * beta + (local & 0xFF)
    return np.argsort(row * shape[1] + col)


def _device(arrays, dtype=None) -> tuple:
    """numpy arrays -> device arrays, cast on the host first."""
    return tuple(jnp.asarray(a if dtype is None else a.astype(dtype)) for a in arrays)


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


class Peer:
    name = ""
    short = ""  # column header in the terminal table
    label = ""  # one line for the legend and the JSON
    forward_peer = None  # peer whose forward time the transposed/forward ratio divides by

    def unavailable(self) -> str | None:
        return None

    def prepare(self, p: Problem, memo: dict) -> Prepared:
        raise NotImplementedError


# --- jaxcsb -------------------------------------------------------------------------------------


class JaxCSB(Peer):
    name, short = "jaxcsb", "jaxcsb"
    label = "jaxcsb.csb_matmul / jaxcsb.sddmm, impl='auto' (native FFI kernels)"

    def __init__(self, block_size: int | None = None):
        self.block_size = block_size  # of the stored matrices (None: jaxcsb's default)

    def prepare(self, p, memo):
        m = p.matrix
        key = ("csb", p.dtype)
        if key not in memo:
            memo[key] = jaxcsb.CSB.from_coo(
                m.row, m.col, p.values, m.shape, block_size=self.block_size
            )
        a = memo[key]
        fns = {
            "spmm": lambda a, b: jaxcsb.csb_matmul(a, b),
            "spmm_t": lambda a, b: jaxcsb.csb_matmul(a.T, b),
            "xw_t": lambda a, x: jaxcsb.csb_matmul(x, a.T),
            "xw": lambda a, x: jaxcsb.csb_matmul(x, a),
            "sddmm": lambda a, lhs, rhs: jaxcsb.sddmm(lhs, rhs, a).values,
        }
        to_numpy = _to_f64
        if p.product == "sddmm":
            if ("csb_order", p.dtype) not in memo:
                memo[("csb_order", p.dtype)] = _csb_order(a, m.shape)
            order = memo[("csb_order", p.dtype)]
            to_numpy = lambda out: _to_f64(out)[order]  # noqa: E731
        index_bytes = 2 * m.nnz + 4 * a.block_ptr.size  # positions and block pointers
        return Prepared(
            "jax",
            fns[p.product],
            a,
            _device(p.operands),
            to_numpy,
            p.dtype.itemsize * m.nnz + index_bytes + p.io_bytes(),
            p.dtype.name,
            block_size=a.block_size,
        )


# --- XLA dense ----------------------------------------------------------------------------------


class XlaDense(Peer):
    """The dense masked matrix through XLA's dot (cuBLAS on GPUs, Eigen/oneDNN on CPUs). For
    SDDMM the peer is the dense product L @ R that SDDMM samples."""

    def __init__(self, name, short, precision, cast_bf16=False):
        self.name, self.short = name, short
        self.precision, self.cast_bf16 = precision, cast_bf16
        what = "bfloat16 inputs" if cast_bf16 else f"precision={precision or 'default'}"
        self.label = f"XLA dense jnp.matmul on the masked matrix, {what}"

    def prepare(self, p, memo):
        dtype = np.dtype(jnp.bfloat16) if self.cast_bf16 else p.dtype
        if self.cast_bf16 and p.dtype == dtype:
            raise NotApplicable("the problem is already bfloat16: see the xla_dense column")
        prec = self.precision

        def mm(x, y):
            return jnp.matmul(x, y, precision=prec)

        fns = {
            "spmm": lambda w, b: mm(w, b),
            "spmm_t": lambda w, b: mm(w.T, b),
            "xw_t": lambda w, x: mm(x, w.T),
            "xw": lambda w, x: mm(x, w),
            "sddmm": lambda w, lhs, rhs: mm(lhs, rhs),
        }
        m = p.matrix
        if p.product == "sddmm":
            w, w_bytes = None, 0
            out_elements = m.shape[0] * m.shape[1]
            to_numpy = _sddmm_gather(p)
        else:
            key = ("dense", dtype)
            if key not in memo:
                memo[key] = jnp.asarray(m.dense(dtype, p.values.astype(dtype)))
            w, w_bytes = memo[key], m.shape[0] * m.shape[1] * dtype.itemsize
            out_elements = None
            to_numpy = _to_f64
        if self.cast_bf16:
            tolerance = "bfloat16"
        elif prec is None and p.dtype == np.float32 and _on_gpu():
            tolerance = "tf32"  # XLA's default float32 dot on GPUs may use TF32 tensor cores
        else:
            tolerance = p.dtype.name
        dense = _device(p.operands, dtype)
        nbytes = w_bytes + p.io_bytes(dtype.itemsize, out_elements)
        return Prepared("jax", fns[p.product], w, dense, to_numpy, nbytes, tolerance)


# --- jax.experimental.sparse --------------------------------------------------------------------


def _bcoo(p: Problem, memo):
    from jax.experimental import sparse

    key = ("bcoo", p.dtype)
    if key not in memo:
        m = p.matrix
        indices = jnp.asarray(np.stack([m.row, m.col], axis=1).astype(np.int32))
        memo[key] = sparse.BCOO(
            (jnp.asarray(p.values), indices),
            shape=m.shape,
            indices_sorted=True,
            unique_indices=True,
        )
    return memo[key]


class Bcoo(Peer):
    name, short = "bcoo", "BCOO"
    label = "jax.experimental.sparse BCOO (bcoo_dot_general; bcoo_dot_general_sampled)"

    def unavailable(self):
        try:
            import jax.experimental.sparse  # noqa: F401
        except ImportError as e:
            return f"jax.experimental.sparse does not import: {e}"
        return None

    def prepare(self, p, memo):
        from jax.experimental import sparse

        a = _bcoo(p, memo)
        m = p.matrix
        to_numpy = _to_f64
        if p.product == "sddmm":
            dims = (([1], [0]), ([], []))
            fn = lambda idx, lhs, rhs: sparse.bcoo_dot_general_sampled(  # noqa: E731
                lhs, rhs, idx, dimension_numbers=dims
            )
            weight = a.indices  # row-major sorted: the canonical order already
        else:
            fn = {
                "spmm": lambda a, b: a @ b,
                "spmm_t": lambda a, b: a.T @ b,
                "xw_t": lambda a, x: x @ a.T,
                "xw": lambda a, x: x @ a,
            }[p.product]
            weight = a
        return Prepared(
            "jax",
            fn,
            weight,
            _device(p.operands),
            to_numpy,
            m.nnz * (p.dtype.itemsize + 8) + p.io_bytes(),
            p.dtype.name,
        )


class Bcsr(Peer):
    name, short = "bcsr", "BCSR"
    label = "jax.experimental.sparse BCSR (bcsr_dot_general; A @ B only)"
    unavailable = Bcoo.unavailable

    def prepare(self, p, memo):
        from jax.experimental import sparse

        if p.product != "spmm":
            raise NotApplicable(
                "BCSR has no transpose and only a sparse left operand (jax raises "
                "NotImplementedError)"
                if p.product != "sddmm"
                else "jax.experimental.sparse has no BCSR sampled product"
            )
        key = ("bcsr", p.dtype)
        m = p.matrix
        if key not in memo:
            indptr = np.zeros(m.shape[0] + 1, np.int32)
            np.cumsum(np.bincount(m.row, minlength=m.shape[0]), out=indptr[1:])
            arrays = (p.values, m.col.astype(np.int32), indptr)
            memo[key] = sparse.BCSR(tuple(jnp.asarray(x) for x in arrays), shape=m.shape)
        return Prepared(
            "jax",
            lambda a, b: a @ b,
            memo[key],
            _device(p.operands),
            _to_f64,
            m.nnz * (p.dtype.itemsize + 4) + 4 * (m.shape[0] + 1) + p.io_bytes(),
            p.dtype.name,
        )


# --- cuSPARSE through torch.sparse --------------------------------------------------------------


def _torch():
    import torch

    return torch


def _torch_csr(p: Problem, memo, transposed=False):
    torch = _torch()
    key = ("torch_csr", p.dtype, transposed)
    if key not in memo:
        import scipy.sparse

        m = p.matrix
        a = scipy.sparse.csr_matrix((p.values.astype(np.float32), (m.row, m.col)), shape=m.shape)
        if transposed:
            a = a.T.tocsr()
        a.sort_indices()
        memo[key] = torch.sparse_csr_tensor(
            torch.from_numpy(a.indptr.astype(np.int32)),
            torch.from_numpy(a.indices.astype(np.int32)),
            torch.from_numpy(a.data).to(getattr(torch, p.dtype.name)),
            size=a.shape,
            device="cuda",
        )
    return memo[key]


def _torch_dense(p: Problem):
    torch = _torch()
    tdtype = getattr(torch, p.dtype.name)
    return tuple(
        torch.from_numpy(o.astype(np.float32)).to(device="cuda", dtype=tdtype) for o in p.operands
    )


def _torch_to_numpy(out) -> np.ndarray:
    if out.layout != _torch().strided:
        out = out.values()  # CSR values in row-major order: the canonical SDDMM order
    return out.float().cpu().numpy().astype(np.float64)


class TorchCsr(Peer):
    name, short = "torch_csr", "cuSPARSE"
    label = (
        "cuSPARSE through torch.sparse CSR: A @ B, transposed as the view A.t() @ B, "
        "SDDMM as torch.sparse.sampled_addmm"
    )
    forward_peer = "torch_csr"

    def unavailable(self):
        try:
            torch = _torch()
        except ImportError:
            return "torch is not installed"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device (cuSPARSE is the baseline; CPU torch is not)"
        if not _on_gpu():
            return "jax is not running on a GPU: the comparison would cross devices"
        return None

    def prepare(self, p, memo):
        torch = _torch()
        a = _torch_csr(p, memo)
        m = p.matrix
        fns = {
            "spmm": lambda a, b: a @ b,
            "spmm_t": lambda a, b: a.t() @ b,
            "xw_t": lambda a, x: x @ a.t(),
            "xw": lambda a, x: x @ a,
            "sddmm": lambda a, lhs, rhs: torch.sparse.sampled_addmm(a, lhs, rhs, beta=0.0),
        }
        return Prepared(
            "torch",
            fns[p.product],
            a,
            _torch_dense(p),
            _torch_to_numpy,
            m.nnz * (p.dtype.itemsize + 4) + 4 * (m.shape[0] + 1) + p.io_bytes(),
            p.dtype.name,
        )


class TorchCsrPrebuilt(TorchCsr):
    name, short = "torch_csr_tprebuilt", "cuSPARSE-T"
    label = "cuSPARSE through torch.sparse CSR of A.T built beforehand (a second copy): A.T @ B"
    forward_peer = "torch_csr"

    def prepare(self, p, memo):
        if p.product != "spmm_t":
            raise NotApplicable("only A.T @ B uses the prebuilt transposed copy")
        at = _torch_csr(p, memo, transposed=True)
        m = p.matrix
        return Prepared(
            "torch",
            lambda a, b: a @ b,
            at,
            _torch_dense(p),
            _torch_to_numpy,
            m.nnz * (p.dtype.itemsize + 4) + 4 * (m.shape[1] + 1) + p.io_bytes(),
            p.dtype.name,
        )


# --- scipy.sparse -------------------------------------------------------------------------------


class Scipy(Peer):
    name, short = "scipy", "scipy"
    label = "scipy.sparse CSR on the host CPU (single-threaded), float32"

    def unavailable(self):
        try:
            import scipy.sparse  # noqa: F401
        except ImportError:
            return "scipy is not installed"
        if jax.default_backend() != "cpu":
            return "scipy runs on the host CPU; left out when jax runs on an accelerator"
        return None

    def prepare(self, p, memo):
        import scipy.sparse

        if p.dtype != np.float32:
            raise NotApplicable(f"scipy.sparse has no {p.dtype.name} matmul")
        if p.product == "sddmm":
            raise NotApplicable("scipy.sparse has no sampled dense-dense product")
        m = p.matrix
        a = scipy.sparse.csr_matrix((p.values, (m.row, m.col)), shape=m.shape)
        fn = {
            "spmm": lambda a, b: a @ b,
            "spmm_t": lambda a, b: a.T @ b,
            "xw_t": lambda a, x: x @ a.T,
            "xw": lambda a, x: x @ a,
        }[p.product]
        return Prepared(
            "host",
            fn,
            a,
            p.operands,
            lambda out: np.asarray(out, np.float64),
            m.nnz * 8 + 4 * (m.shape[0] + 1) + p.io_bytes(),
            p.dtype.name,
        )


_PEERS = [
    JaxCSB(),
    XlaDense("xla_dense", "dense", None),
    XlaDense("xla_dense_highest", "dense-hi", "highest"),
    XlaDense("xla_dense_bf16", "dense-bf16", None, cast_bf16=True),
    Bcsr(),
    Bcoo(),
    TorchCsr(),
    TorchCsrPrebuilt(),
    Scipy(),
]
PEERS = {peer.name: peer for peer in _PEERS}
PEER_NAMES = tuple(PEERS)


def check_peer_name(name: str) -> str:
    if name not in PEERS:
        raise ValueError(f"peer must be one of {PEER_NAMES}, got {name!r}")
    return name
