"""Bad input beyond test_errors.py: traced values where the structure needs concrete ones,
non-finite values (accepted: they propagate, see test_nonfinite.py), operands on different
devices, and the native targets called directly with what Python never sends. One test per
case, each checking the exception type and that the message names the argument."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import SHAPE, f64, run_with_host_devices, seed_of, standard_csb
from jax.experimental import sparse
from test_native import RuntimeErrors, _valid_spmm, needs_native, sddmm_call, spmm_call

import jaxcsb
from jaxcsb import _native

F32 = np.dtype(np.float32)


@pytest.fixture(scope="module")
def A():
    return standard_csb(F32, seed_of("bad input"))[0]


def w():
    return np.eye(20, dtype=np.float32)


# --- traced input where the structure needs concrete values -------------------------------------

TRACED = r"must be a concrete array: CSB\.\w+ builds the sparsity structure on the host"


def test_fromdense_under_jit_names_w():
    with pytest.raises(TypeError, match=rf"w {TRACED}.*traced \(float32\[20,20\]\)"):
        jax.jit(jaxcsb.CSB.fromdense)(w())


def test_fromdense_under_grad_names_w():
    with pytest.raises(TypeError, match=rf"w {TRACED}"):
        jax.grad(lambda w: jaxcsb.CSB.fromdense(w).values.sum())(w())


def test_fromdense_under_vmap_names_w():
    with pytest.raises(TypeError, match=rf"w {TRACED}"):
        jax.vmap(jaxcsb.CSB.fromdense)(np.stack([w(), w()]))


def test_fromdense_with_a_traced_mask_names_mask():
    with pytest.raises(TypeError, match=rf"mask {TRACED}.*A\.with_values"):
        jax.jit(lambda m: jaxcsb.CSB.fromdense(w(), m))(w() != 0)


def test_from_coo_with_traced_values_names_values():
    rc = np.arange(3)
    with pytest.raises(TypeError, match=rf"values {TRACED}"):
        jax.jit(lambda v: jaxcsb.CSB.from_coo(rc, rc, v, (3, 3)))(np.ones(3, F32))


def test_from_coo_with_traced_indices_names_row():
    with pytest.raises(TypeError, match=rf"row {TRACED}"):
        jax.jit(lambda r: jaxcsb.CSB.from_coo(r, r, np.ones(3, F32), (3, 3)))(np.arange(3))


def test_from_bcoo_under_jit_names_the_indices():
    m = sparse.BCOO.fromdense(jnp.asarray(w()))
    with pytest.raises(TypeError, match=rf"m\.indices {TRACED}"):
        jax.jit(jaxcsb.CSB.from_bcoo)(m)


def test_with_values_of_a_wrong_traced_length(A):
    """Shapes are static under jit: the length check still runs while tracing."""
    with pytest.raises(
        ValueError, match=rf"values must have shape \({A.nnz},\), got \({A.nnz + 1},\)"
    ):
        jax.jit(lambda v: A.with_values(v).values)(jnp.ones(A.nnz + 1, F32))


def test_with_values_under_vmap_of_a_wrong_length(A):
    with pytest.raises(
        ValueError, match=rf"values must have shape \({A.nnz},\), got \({A.nnz - 2},\)"
    ):
        jax.vmap(lambda v: A.with_values(v).values)(jnp.ones((3, A.nnz - 2), F32))


# --- non-finite values: accepted ------------------------------------------------------------------


def test_constructors_accept_nan_and_inf_as_nonzeros():
    """NaN and +-Inf are values like any other: fromdense keeps them (they are not zero), every
    constructor and with_values accepts them, and they come back exactly. Products propagate
    them with IEEE semantics (test_nonfinite.py)."""
    dense = np.zeros((5, 7), F32)
    dense[0, 1], dense[2, 3], dense[4, 6], dense[3, 0] = np.nan, np.inf, -np.inf, 1.5
    want = f64(dense)
    built = {
        "fromdense": jaxcsb.CSB.fromdense(dense),
        "from_coo": jaxcsb.CSB.from_coo(*np.nonzero(dense), dense[dense != 0], dense.shape),
        "from_scipy_sparse": jaxcsb.CSB.from_scipy_sparse(sp.csr_matrix(dense)),
        "from_bcoo": jaxcsb.CSB.from_bcoo(sparse.BCOO.fromdense(dense)),
    }
    for name, M in built.items():
        assert M.nnz == 4, name
        assert np.array_equal(f64(M.validate().todense()), want, equal_nan=True), name
    M = built["fromdense"].with_values(np.full(4, np.nan, F32))
    assert np.isnan(f64(M.values)).all()


# --- operands on different devices ----------------------------------------------------------------

TWO_DEVICES = len(jax.devices()) >= 2
needs_two = pytest.mark.skipif(
    not TWO_DEVICES, reason="needs 2 devices: test_device_cases_in_a_subprocess runs these with 2"
)


@pytest.fixture
def placed():
    """A (committed to device 0) and dense operands committed to device 1."""
    d0, d1 = jax.devices()[:2]
    A, _ = standard_csb(F32, seed_of("devices"))
    return jax.device_put(A, d0), d1


@needs_two
def test_devices_of_a_committed_dense_operand_elsewhere_sparse_left(placed):
    A, d1 = placed
    b = jax.device_put(np.ones((SHAPE[1], 2), F32), d1)
    with pytest.raises(
        ValueError, match=r"b is committed to device\(s\) \[\w+:1\] but a\.values to \[\w+:0\]"
    ):
        A @ b


@needs_two
def test_devices_of_a_committed_dense_operand_elsewhere_sparse_right(placed):
    A, d1 = placed
    x = jax.device_put(np.ones((2, SHAPE[0]), F32), d1)
    with pytest.raises(ValueError, match=r"a is committed to device\(s\) .* but b\.values"):
        x @ A


@needs_two
def test_devices_of_sddmm_operands(placed):
    A, d1 = placed
    a = jax.device_put(np.ones((SHAPE[0], 2), F32), d1)
    with pytest.raises(ValueError, match=r"a is committed to device\(s\) .* but pattern\.values"):
        jaxcsb.sddmm(a, np.ones((2, SHAPE[1]), F32), A)


@needs_two
def test_devices_under_jit_are_checked_by_jax(placed):
    """Inside jit the operands are traced: JAX's own check applies (same rule, its wording)."""
    A, d1 = placed
    b = jax.device_put(np.ones((SHAPE[1], 2), F32), d1)
    with pytest.raises(ValueError, match=r"incompatible devices"):
        jax.jit(lambda A, b: A @ b)(A, b)


@needs_two
def test_devices_of_uncommitted_operands_follow_the_committed_one(placed):
    """An uncommitted operand (no explicit device) moves to the committed one's device."""
    A, d1 = placed
    b = jnp.ones((SHAPE[1], 2), F32)
    x = jax.device_put(np.ones((SHAPE[1], 2), F32), d1)
    assert (A @ b).devices() == A.values.devices()
    A_free = jaxcsb.CSB.fromdense(np.asarray(A.todense()))  # built with device_put: uncommitted
    assert (A_free @ x).devices() == {d1}


def test_device_cases_in_a_subprocess(tmp_path):
    """Runs the device cases above where XLA has two CPU devices (the flag must be set before
    JAX starts). Every case must run: a skip fails."""
    if TWO_DEVICES:
        pytest.skip("this process has 2 devices: the device cases run here")
    proc = run_with_host_devices(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-k",
            "test_devices_",
            str(Path(__file__)),
        ],
        devices=2,
        cwd=tmp_path,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "5 passed" in out and "skipped" not in out, out


# --- native targets called directly --------------------------------------------------------------


def _spmm_with(change=None, out=None):
    args, attrs, default_out, _ = _valid_spmm()
    if change:
        change(args, attrs)
    return spmm_call(args, attrs, out or default_out)


SPMM_CASES = {
    "values_rank_2": (
        lambda a, t: a.update(values=a["values"][None]),
        None,
        r"values must have rank 1",
    ),
    "dense_rank_3": (
        lambda a, t: a.update(dense=a["dense"][None]),
        None,
        r"dense operand must have rank 2, got shape \(1, 53, 4\)",
    ),
    "output_dtype_differs": (
        None,
        ((SHAPE[0], 4), np.dtype(jnp.bfloat16)),
        r"output and values have different element types \(bfloat16 and float32\)",
    ),
    "output_rank_1": (
        None,
        ((SHAPE[0] * 4,), F32),
        r"output has shape \(148,\), expected \(37, 4\)",
    ),
    "rows_beyond_int32": (
        lambda a, t: t.update(rows=2**40),
        None,
        r"matrix shape \(1099511627776, 53\) has a dimension above 2\^31 - 1",
    ),
    "block_count_beyond_int32": (
        lambda a, t: t.update(rows=2**31 - 1, cols=2**31 - 1),
        None,
        r"the matrix has \d+ blocks; at most 2\^31 - 2 fit the int32 block_ptr",
    ),
    "negative_cols": (
        lambda a, t: t.update(cols=-3),
        None,
        r"matrix shape \(37, -3\) has a negative dimension",
    ),
}


@needs_native
@pytest.mark.parametrize("case", list(SPMM_CASES))
def test_spmm_target_rejects(case):
    change, out, match = SPMM_CASES[case]
    with pytest.raises(RuntimeErrors, match="jaxcsb: " + match):
        _spmm_with(change, out)


def _sddmm_args(A):
    return (
        np.asarray(A.block_ptr),
        np.asarray(A.local),
        np.ones((SHAPE[0], 3), F32),
        np.ones((3, SHAPE[1]), F32),
        ((A.nnz,), F32),
    )


SDDMM_CASES = {
    "output_unsupported_dtype": (
        lambda bp, loc, lhs, rhs, out: (
            bp,
            loc,
            lhs.astype(np.int32),
            rhs.astype(np.int32),
            (out[0], np.int32),
        ),  # fmt: skip
        {},
        r"output values has unsupported element type int32",
    ),
    "output_rank_2": (
        lambda bp, loc, lhs, rhs, out: (bp, loc, lhs, rhs, ((1, out[0][0]), F32)),
        {},
        r"output values must have rank 1",
    ),
    "lhs_rank_3": (
        lambda bp, loc, lhs, rhs, out: (bp, loc, lhs[None], rhs, out),
        {},
        r"lhs and rhs must have rank 2, got shapes \(1, 37, 3\) and \(3, 53\)",
    ),
    "local_int32": (
        lambda bp, loc, lhs, rhs, out: (bp, loc.astype(np.int32), lhs, rhs, out),
        {},
        r"local has element type int32, expected uint16",
    ),
    "block_ptr_uint32": (
        lambda bp, loc, lhs, rhs, out: (bp.astype(np.uint32), loc, lhs, rhs, out),
        {},
        r"block_ptr has element type uint32, expected int32",
    ),
    "negative_rows": (
        lambda *args: args,
        {"rows": -1},
        r"matrix shape \(-1, 53\) has a negative dimension",
    ),
}


@needs_native
@pytest.mark.parametrize("case", list(SDDMM_CASES))
def test_sddmm_target_rejects(A, case):
    change, attrs, match = SDDMM_CASES[case]
    with pytest.raises(RuntimeErrors, match="jaxcsb: " + match):
        sddmm_call(*change(*_sddmm_args(A)), **attrs)


def test_sddmm_impl_native_without_a_target_names_the_platform(monkeypatch, A):
    _native.native_platforms()
    monkeypatch.setattr(_native, "_registered", set())
    with pytest.raises(ValueError, match=r"impl='native' but jaxcsb has no native target for"):
        jaxcsb.sddmm(np.ones((SHAPE[0], 2), F32), np.ones((2, SHAPE[1]), F32), A, impl="native")
