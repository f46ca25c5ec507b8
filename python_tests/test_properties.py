"""Property tests: random shapes (0, 1, sizes that are not multiples of the block size), block
sizes, sparsities from 0% to 100%, skewed patterns (a few dense rows or columns), every dtype
and both dense layouts.

* every product and its gradients (dense operand and values), and SDDMM on a pattern and on
  its transposed view, against float64 references;
* every conversion (dense, scipy.sparse, BCOO, an .smtx file, COO in any order) round-trips
  exactly.

The example budget is a hypothesis settings profile chosen by $JAXCSB_HYPOTHESIS_PROFILE:
"ci" (default, small: the file runs in well under a minute on two CPU cores) or "gpu"
(larger, for the GPU machine). Examples are derandomized in both, so a run reproduces; a
failure prints the drawn example. Each product example compiles one program (all layouts,
gradients and SDDMMs together), since the shapes change from example to example.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import scipy.sparse as sp
from helpers import (
    BLOCK_SIZES,
    DTYPES,
    LAYOUTS,
    assert_close,
    dense_operand_shape,
    f64,
    host_coordinates,
    random_dense,
    reference,
    sddmm_reference,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxcsb

_COMMON = dict(
    deadline=None,  # the first example of a shape compiles
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=30, **_COMMON)
settings.register_profile("gpu", max_examples=150, **_COMMON)
PROFILE = os.environ.get("JAXCSB_HYPOTHESIS_PROFILE", "ci")
SETTINGS = settings.get_profile(PROFILE)
# The conversions compile several small programs per shape (scatters, BCOO): half the budget.
CONVERSION_SETTINGS = settings(SETTINGS, max_examples=SETTINGS.max_examples // 2)

# Dimensions: the edge cases often, anything up to a few blocks otherwise.
dims = st.one_of(st.sampled_from([0, 1, 15, 16, 17, 31, 33, 255, 257]), st.integers(0, 140))
densities = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


@st.composite
def patterns(draw):
    """(mask, block_size or None for the default, description) of a random pattern."""
    shape = (draw(dims), draw(dims))
    density = draw(densities)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    skew = draw(st.sampled_from(["none", "dense rows", "dense columns", "one nonzero"]))
    lines = draw(st.integers(1, 3))
    if skew == "dense rows" and shape[0]:
        mask[rng.choice(shape[0], size=min(lines, shape[0]), replace=False)] = True
    elif skew == "dense columns" and shape[1]:
        mask[:, rng.choice(shape[1], size=min(lines, shape[1]), replace=False)] = True
    elif skew == "one nonzero" and mask.size:
        mask[:] = False
        mask.reshape(-1)[rng.integers(mask.size)] = True
    block_size = draw(st.one_of(st.none(), st.sampled_from(BLOCK_SIZES)))
    return mask, block_size, seed


@st.composite
def matrices(draw):
    """(A, its exact float64 dense copy, its mask, dtype, seed)."""
    mask, block_size, seed = draw(patterns())
    dtype = draw(st.sampled_from(DTYPES))
    w = random_dense(mask.shape, dtype, seed + 1)
    A = jaxcsb.CSB.fromdense(w, mask, block_size=block_size)
    return A, np.where(mask, w.astype(np.float64), 0.0), mask, dtype, seed


# --- products and gradients -------------------------------------------------------------------


def grad_reference(layout, w, x, g):
    """float64 (d_dense, d_W, and their scales) of sum(product(layout, W, x) * g)."""
    x, g = f64(x), f64(g)
    if layout in ("X@A", "X@AT"):
        # Not reshape(-1, ...): that is ambiguous when a dimension is 0.
        x = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        g = g.reshape(math.prod(g.shape[:-1]), g.shape[-1])

    def grads(w, x, g):
        return {
            "A@B": lambda: (w.T @ g, g @ x.T),
            "AT@B": lambda: (w @ g, x @ g.T),
            "X@A": lambda: (g @ w.T, x.T @ g),
            "X@AT": lambda: (g @ w, g.T @ x),
        }[layout]()

    (dx, dw), (sx, sw) = grads(w, x, g), grads(np.abs(w), np.abs(x), np.abs(g))
    return dx, dw, sx, sw


@functools.partial(jax.jit, static_argnames=("impl",))
def all_products(A, xs, gs, sddmm_operands, impl):
    """Every layout's product and its vjp (dense operand and values), and SDDMM on A and on
    A.T, in one program."""
    results = {}
    for layout in LAYOUTS:

        def f(values, x, layout=layout):
            return jaxcsb.csb_matmul(*_operands(layout, A.with_values(values), x), impl=impl)

        out, vjp = jax.vjp(f, A.values, xs[layout])
        d_values, d_x = vjp(gs[layout])
        results[layout] = (out, d_x, d_values)
    (a, b), (at, bt) = sddmm_operands
    results["sddmm"] = jaxcsb.sddmm(a, b, A, impl=impl).values
    results["sddmm T"] = jaxcsb.sddmm(at, bt, A.T, impl=impl).values
    return results


def _operands(layout, A, x):
    return {
        "A@B": (A, x),
        "AT@B": (A.T, x),
        "X@A": (x, A),
        "X@AT": (x, A.T),
    }[layout]


IMPLS = ["auto", "jax"]


@SETTINGS
@given(
    matrices(),
    st.integers(0, 20),
    st.lists(st.integers(0, 4), min_size=0, max_size=2),
    st.sampled_from(IMPLS),
)
def test_products_and_gradients_match_float64(matrix, n, extra_batch, impl):
    A, w, _, dtype, seed = matrix
    m, k = A.shape
    rng_seed = seed + 2
    # X @ A takes any leading batch dimensions: (n, *extra_batch) of them.
    batch = (n, *extra_batch)
    xs, gs, want = {}, {}, {}
    for i, layout in enumerate(LAYOUTS):
        x = random_dense(dense_operand_shape(layout, A.shape, n, batch), dtype, rng_seed + i)
        out_shape = jax.eval_shape(lambda x, layout=layout: _apply(layout, A, x, impl), x).shape
        g = random_dense(out_shape, dtype, rng_seed + 10 + i)
        xs[layout], gs[layout] = x, g
        want[layout] = reference(layout, w, x), grad_reference(layout, w, x, g)
    a = random_dense((m, n), dtype, rng_seed + 20)
    b = random_dense((n, k), dtype, rng_seed + 21)
    at = random_dense((k, n), dtype, rng_seed + 22)
    bt = random_dense((n, m), dtype, rng_seed + 23)
    got = all_products(A, xs, gs, ((a, b), (at, bt)), impl=impl)

    row, col = host_coordinates(A)
    for layout in LAYOUTS:
        out, d_x, d_values = got[layout]
        (product, scale), (dx, dw, sx, sw) = want[layout]
        assert out.dtype == dtype and d_x.dtype == dtype and d_values.dtype == dtype
        assert_close(out, product, scale, dtype, f"{layout} product")
        assert_close(d_x, dx.reshape(xs[layout].shape), sx.reshape(xs[layout].shape), dtype,
                     f"{layout} d_dense")  # fmt: skip
        assert_close(d_values, dw[row, col], sw[row, col], dtype, f"{layout} d_values")
    assert_close(got["sddmm"], *sddmm_reference(A, a, b), dtype, "sddmm")
    assert_close(got["sddmm T"], *sddmm_reference(A, at, bt, transposed=True), dtype, "sddmm T")


def _apply(layout, A, x, impl):
    return jaxcsb.csb_matmul(*_operands(layout, A, x), impl=impl)


# --- conversions --------------------------------------------------------------------------------


def _same_arrays(A, B, what, values=True):
    assert A.shape == B.shape and A.block_size == B.block_size, what
    names = ("values", "block_ptr", "local")[0 if values else 1 :]
    for name in names:
        a, b = np.asarray(getattr(A, name)), np.asarray(getattr(B, name))
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name}"
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{what}: {name} differs"


def _write_smtx(path, csr):
    with open(path, "w") as f:
        f.write(f"{csr.shape[0]}, {csr.shape[1]}, {csr.nnz}\n")
        f.write(" ".join(map(str, csr.indptr)) + "\n")
        f.write(" ".join(map(str, csr.indices)) + "\n")


@CONVERSION_SETTINGS
@given(matrices())
def test_conversions_round_trip_exactly(matrix):
    A, w, mask, dtype, seed = matrix
    beta = A.block_size
    assert A.validate() is A
    dense = np.asarray(A.todense())
    assert dense.dtype == dtype and np.array_equal(f64(dense), w)
    assert np.array_equal(f64(A.T.todense()), w.T)
    _same_arrays(jaxcsb.CSB.fromdense(dense, mask, block_size=beta), A, "fromdense")

    coo = A.to_scipy_sparse()
    assert np.array_equal(coo.toarray(), w)
    _same_arrays(jaxcsb.CSB.from_scipy_sparse(coo, block_size=beta, dtype=dtype), A, "scipy")
    csr = coo.tocsr()
    _same_arrays(jaxcsb.CSB.from_scipy_sparse(csr, block_size=beta, dtype=dtype), A, "csr")
    transposed = jaxcsb.CSB.from_scipy_sparse(A.T.to_scipy_sparse(), dtype=dtype)
    assert np.array_equal(f64(transposed.todense()), w.T)

    bcoo = A.to_bcoo()
    assert np.array_equal(f64(bcoo.todense()), w)
    _same_arrays(jaxcsb.CSB.from_bcoo(bcoo, block_size=beta), A, "BCOO")

    # COO triplets in any order give the same arrays.
    row, col = host_coordinates(A)
    order = np.random.default_rng(seed).permutation(A.nnz)
    values = np.asarray(A.values)[order]
    shuffled = jaxcsb.CSB.from_coo(row[order], col[order], values, A.shape, block_size=beta)
    _same_arrays(shuffled, A, "from_coo shuffled")

    # .smtx stores the pattern only: the structure comes back exactly.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pattern.smtx"
        _write_smtx(path, sp.csr_matrix((np.ones(A.nnz), (row, col)), shape=A.shape))
        loaded = jaxcsb.load_smtx(path, dtype=dtype, seed=seed, block_size=beta)
    _same_arrays(loaded, A, ".smtx", values=False)
    assert loaded.dtype == dtype
