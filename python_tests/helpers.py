"""Shared test helpers: random sparse matrices, float64 references and per-dtype tolerances.

Every random input is drawn from a seed derived from the test's parameters (``seed_of``), so a
failure reproduces exactly and no two cases share their data by accident.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxcsb

DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
DTYPE_IDS = ("float32", "bfloat16", "float16")
BLOCK_SIZES = (16, 32, 64, 128, 256)

# Relative tolerance against the float64 product of the (already rounded) inputs, applied to
# the scale sum_k |a_ik| |b_kj| of each output element. float32: accumulation order (the kernels
# and XLA may sum in any order); half types: one rounding of the output (2^-8 for bfloat16,
# 2^-11 for float16) with room for float32 accumulation on top. These hold on CPUs and GPUs.
RTOL = {
    np.dtype(jnp.float32): 1e-4,
    np.dtype(jnp.bfloat16): 2e-2,
    np.dtype(jnp.float16): 5e-3,
}

LAYOUTS = ("A@B", "AT@B", "X@A", "X@AT")


def seed_of(*parts) -> int:
    """A 32-bit seed from any printable parameters (stable across runs and machines)."""
    return zlib.crc32(repr(parts).encode())


def native_here() -> bool:
    """Whether the default backend has jaxcsb's native FFI targets."""
    backend = jax.default_backend()
    platform = "cuda" if backend == "gpu" else backend
    return platform in jaxcsb.native_platforms()


def random_mask(
    shape,
    density: float,
    seed: int,
    *,
    dense_rows: int = 0,
    empty_rows=(),
    empty_block=None,
    min_nnz: int = 1,
) -> np.ndarray:
    """A boolean pattern with about ``density`` of its entries set.

    ``dense_rows`` rows are full (a skewed pattern), ``empty_rows`` are cleared, and
    ``empty_block=(r0, r1, c0, c1)`` clears that rectangle. At least ``min_nnz`` entries are
    set when the matrix has room for them and nothing was cleared on purpose.
    """
    rng = np.random.default_rng(seed)
    rows, cols = shape
    mask = rng.random(shape) < density
    if dense_rows and rows:
        mask[rng.choice(rows, size=min(dense_rows, rows), replace=False)] = True
    if mask.sum() < min_nnz and mask.size:
        flat = rng.choice(mask.size, size=min(min_nnz, mask.size), replace=False)
        mask.reshape(-1)[flat] = True
    for r in empty_rows:
        mask[r] = False
    if empty_block is not None:
        r0, r1, c0, c1 = empty_block
        mask[r0:r1, c0:c1] = False
    return mask


def random_dense(shape, dtype, seed: int) -> np.ndarray:
    """Standard-normal entries (never all zeros), rounded to ``dtype``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def random_csb(
    shape, density, dtype, seed, *, block_size=None, **mask_options
) -> tuple[jaxcsb.CSB, np.ndarray]:
    """A random CSB matrix and its exact float64 dense copy (structural zeros are 0)."""
    mask = random_mask(shape, density, seed, **mask_options)
    w = random_dense(shape, dtype, seed + 1)
    A = jaxcsb.CSB.fromdense(w, mask, block_size=block_size)
    dense = np.where(mask, w.astype(np.float64), 0.0)
    return A, dense


# The matrix most tests use: not a multiple of the block size in either direction, several
# blocks each way. Its pattern is fixed (so compiled programs are shared across tests, which
# keeps the suite fast) and its values are drawn per test.
SHAPE = (37, 53)
# Leading dimensions of the dense operand, all flattening to N_FLAT rows.
N_FLAT = 12
BATCHES = ((12,), (3, 4), (2, 3, 2))


def standard_csb(dtype, seed, *, block_size=16):
    """The standard pattern (30% dense, fixed) with values drawn from ``seed``."""
    mask = random_mask(SHAPE, 0.3, seed=20261121)
    w = random_dense(SHAPE, dtype, seed)
    A = jaxcsb.CSB.fromdense(w, mask, block_size=block_size)
    return A, np.where(mask, w.astype(np.float64), 0.0)


def f64(x) -> np.ndarray:
    """Any array (jax, numpy, bfloat16 included) as float64 numpy."""
    return np.asarray(x).astype(np.float64)


def assert_close(actual, expected, scale, dtype, what=""):
    """|actual - expected| <= rtol(dtype) * (scale + 1e-3 * max(scale)) elementwise.

    ``expected`` is a float64 reference and ``scale`` the matching float64 product of absolute
    values (the size a rounding error can have), both of ``actual``'s shape.
    """
    actual = f64(actual)
    expected = np.asarray(expected, np.float64)
    scale = np.asarray(scale, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol = RTOL[np.dtype(dtype)]
    bound = rtol * (scale + 1e-3 * (scale.max() if scale.size else 0.0))
    err = np.abs(actual - expected)
    bad = ~(err <= bound)  # also catches NaN
    if bad.any():
        i = tuple(int(v[0]) for v in np.nonzero(bad))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements off (dtype {np.dtype(dtype)}, "
            f"rtol {rtol}); first at {i}: got {actual[i]}, expected {expected[i]}, "
            f"bound {bound[i]}"
        )


# --- the products and their float64 references ------------------------------------------------


def dense_operand_shape(layout, shape, n, batch=None):
    """Shape of the dense operand of ``layout`` for a sparse matrix of ``shape``: (k, n) or
    (m, n) for a sparse left operand, (*batch, m) or (*batch, k) for a sparse right operand
    (batch defaults to (n,))."""
    m, k = shape
    batch = (n,) if batch is None else tuple(batch)
    return {
        "A@B": (k, n),
        "AT@B": (m, n),
        "X@A": (*batch, m),
        "X@AT": (*batch, k),
    }[layout]


def apply(layout, A, x, impl="auto"):
    """The product ``layout`` through jaxcsb."""
    if layout == "A@B":
        return jaxcsb.csb_matmul(A, x, impl=impl)
    if layout == "AT@B":
        return jaxcsb.csb_matmul(A.T, x, impl=impl)
    if layout == "X@A":
        return jaxcsb.csb_matmul(x, A, impl=impl)
    if layout == "X@AT":
        return jaxcsb.csb_matmul(x, A.T, impl=impl)
    raise ValueError(layout)


def reference(layout, w, x):
    """float64 (product, scale) of ``layout`` for the dense matrix ``w``: scale is the same
    product of absolute values."""
    w = np.asarray(w, np.float64)
    x = f64(x)

    def product(w, x):
        if layout == "A@B":
            return w @ x
        if layout == "AT@B":
            return w.T @ x
        if layout == "X@A":
            return x @ w
        return x @ w.T

    return product(w, x), product(np.abs(w), np.abs(x))


def host_coordinates(A) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the stored matrix's nonzeros in storage order, computed with numpy from
    block_ptr and local alone (independent of jaxcsb's own ``coordinates``)."""
    block_ptr, local = np.asarray(A.block_ptr), np.asarray(A.local).astype(np.int64)
    beta = A.block_size
    block_cols = -(-A.stored_shape[1] // beta)
    block = np.repeat(np.arange(block_ptr.size - 1), np.diff(block_ptr))
    row = block // max(block_cols, 1) * beta + (local >> 8)
    col = block % max(block_cols, 1) * beta + (local & 0xFF)
    return row, col


def sddmm_reference(mask_w, a, b, transposed=False):
    """float64 (values, scale) of sddmm(a, b, P) in storage order, for P = A or A.T.

    ``mask_w`` is the CSB pattern ``A``; the values are (a @ b) at the coordinates of
    ``A.T`` when ``transposed`` else of ``A``, listed in storage order.
    """
    row, col = host_coordinates(mask_w)
    if transposed:
        row, col = col, row
    a, b = f64(a), f64(b)
    values = np.einsum("en,en->e", a[row], b[:, col].T)
    scale = np.einsum("en,en->e", np.abs(a[row]), np.abs(b[:, col].T))
    return values, scale


# --- DLMC ------------------------------------------------------------------------------------


def dlmc_dir() -> Path | None:
    """The DLMC sample: $JAXCSB_DLMC_DIR, else ../shared/dlmc beside the repository (or
    shared/dlmc inside it). None when none of them holds .smtx files."""
    repo = Path(__file__).resolve().parent.parent
    candidates = []
    if os.environ.get("JAXCSB_DLMC_DIR"):
        candidates.append(Path(os.environ["JAXCSB_DLMC_DIR"]))
    candidates += [repo.parent / "shared" / "dlmc", repo / "shared" / "dlmc"]
    for c in candidates:
        if c.is_dir() and any(c.rglob("*.smtx")):
            return c
    return None


def run_with_host_devices(args, devices: int, cwd, timeout: float):
    """Runs ``args`` in a process whose XLA has ``devices`` CPU devices (the flag must be set
    before JAX starts, so it cannot be this process), from ``cwd``: a directory outside the
    repository, so that ``import jaxcsb`` finds the installed package with its native module
    rather than the source tree. Returns the completed process with its output captured."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
