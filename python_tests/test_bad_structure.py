"""A CSB whose arrays were built or edited inconsistently by hand: ``CSB.validate()``, every
product and the conversions raise ValueError naming the array (and, where it helps, the
expected and the actual value), before anything reaches native code.

Lengths and dtypes are checked on every call, traced or not; contents (block_ptr, local
indices) when the arrays are concrete. Under jit with the matrix as an argument
the contents are checked by the CPU handler (test_native.py calls it directly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    SHAPE,
    assert_close,
    host_coordinates,
    native_here,
    random_dense,
    reference,
    seed_of,
)

import jaxcsb

F32 = np.dtype(np.float32)
# SHAPE = (37, 53) with block size 16: a 3 x 4 grid of blocks, 12 in all. The last block-row
# is clipped to 5 rows (32..36) and the last block-column to 5 columns (48..52).
NB = 12


@pytest.fixture(scope="module")
def A():
    rng = np.random.default_rng(seed_of("bad structure"))
    w = rng.standard_normal(SHAPE).astype(F32)
    w[rng.random(SHAPE) < 0.6] = 0.0
    A = jaxcsb.CSB.fromdense(w, block_size=16)
    bp = np.asarray(A.block_ptr)
    assert bp.size == NB + 1 and np.all(np.diff(bp) > 0), "every block must hold nonzeros"
    return A


def arrays(A):
    """The matrix's arrays as numpy copies, by leaf name."""
    names = ("values", "block_ptr", "local")
    return {n: np.array(getattr(A, n)) for n in names}


def rebuilt(A, **leaves):
    return jaxcsb.CSB(
        **{**arrays(A), **leaves}, stored_shape=A.stored_shape, block_size=A.block_size
    )


def _set(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def _local_in_block(a, block, position):
    """local with its first nonzero of ``block`` moved to ``position`` (row, col)."""
    e = int(a["block_ptr"][block])
    return _set(a["local"], e, (position[0] << 8) | position[1]), e


# name: (change of the arrays, message regex); `a` is the dict of numpy arrays.
CASES = {
    "block_ptr_decreasing": (
        lambda a: {"block_ptr": _set(a["block_ptr"], 3, a["block_ptr"][4] + 1)},
        r"block_ptr must not decrease, got block_ptr\[3\] = \d+ > \d+",
    ),
    "block_ptr_not_starting_at_0": (
        lambda a: {"block_ptr": _set(a["block_ptr"], 0, 1)},
        r"block_ptr must start at 0, got block_ptr\[0\] = 1",
    ),
    "block_ptr_not_ending_at_nnz": (
        lambda a: {"block_ptr": _set(a["block_ptr"], -1, a["block_ptr"][-1] + 1)},
        r"block_ptr must end at nnz = (\d+) \(the length of local\), got \d+",
    ),
    "block_ptr_too_short": (
        lambda a: {"block_ptr": a["block_ptr"][:-1]},
        rf"block_ptr must have {NB + 1} entries, got {NB} \(the number of blocks \+ 1\)",
    ),
    "block_ptr_int64": (
        lambda a: {"block_ptr": a["block_ptr"].astype(np.int64)},
        r"block_ptr must have dtype int32, got int64",
    ),
    "block_ptr_2d": (
        lambda a: {"block_ptr": a["block_ptr"][None]},
        rf"block_ptr must be 1-D, got shape \(1, {NB + 1}\)",
    ),
    "local_shorter_than_values": (
        lambda a: {"local": a["local"][:-1]},
        r"local must have (\d+) entries, got \d+ \(one per nonzero: the length of values\)",
    ),
    "values_longer_than_local": (
        lambda a: {"values": np.append(a["values"], np.float32(1.0))},
        r"local must have (\d+) entries, got \d+ \(one per nonzero: the length of values\)",
    ),
    "local_int32": (
        lambda a: {"local": a["local"].astype(np.int32)},
        r"local must have dtype uint16, got int32",
    ),
    "local_row_beyond_block_size": (
        lambda a: {"local": _local_in_block(a, 0, (16, 0))[0]},
        r"local\[0\] = 4096 is position \(16, 0\) \(row << 8 \| col\), outside its block 0 of "
        r"16 x 16 entries",
    ),
    "local_column_outside_clipped_edge_block": (
        lambda a: {"local": _local_in_block(a, 3, (0, 9))[0]},
        r"local\[\d+\] = 9 is position \(0, 9\) .* outside its block 3 of 16 x 5 entries",
    ),
    "local_row_outside_clipped_edge_block": (
        lambda a: {"local": _local_in_block(a, 8, (7, 0))[0]},
        r"local\[\d+\] = 1792 is position \(7, 0\) .* outside its block 8 of 5 x 16 entries "
        r".*clipped at the matrix edge",
    ),
    "local_missing": (
        lambda a: {"local": None},
        r"local is None",
    ),
}


def _entry_points(A, x_right, x_left):
    """name -> (call, prefix of the message)."""
    return {
        "validate": (A.validate, ""),
        "A @ b": (lambda: A @ x_right, "a has "),
        "A.T @ b": (lambda: A.T @ x_left, "a has "),
        "x @ A": (lambda: x_left.T @ A, "b has "),
        "sddmm": (lambda: jaxcsb.sddmm(x_left, x_right.T, A), "pattern has "),
        "todense": (A.todense, ""),
        "to_scipy_sparse": (A.to_scipy_sparse, ""),
    }


ENTRY_POINTS = ["validate", "A @ b", "A.T @ b", "x @ A", "sddmm", "todense", "to_scipy_sparse"]


PAIRS = [(case, entry) for case in CASES for entry in ENTRY_POINTS]


@pytest.mark.parametrize("case, entry", PAIRS)
def test_inconsistent_arrays_are_rejected(A, case, entry):
    change, match = CASES[case]
    bad = rebuilt(A, **change(arrays(A)))
    x_right = np.ones((SHAPE[1], 2), F32)
    x_left = np.ones((SHAPE[0], 2), F32)
    call, prefix = _entry_points(bad, x_right, x_left)[entry]
    with pytest.raises(ValueError, match=f"{prefix}inconsistent CSB arrays: {match}"):
        call()


def test_rebuilt_matrix_is_valid_as_built(A):
    """The baseline the cases above change one array of."""
    B = rebuilt(A)
    assert B.validate() is B
    np.testing.assert_array_equal(np.asarray(B.todense()), np.asarray(A.todense()))


def test_values_of_rank_2_in_a_product(A):
    bad = rebuilt(A, values=np.ones((2, A.nnz), F32))
    with pytest.raises(
        ValueError, match=rf"a\.values must be 1-D \(nnz,\), got shape \(2, {A.nnz}\)"
    ):
        bad @ np.ones((SHAPE[1], 2), F32)


def test_numpy_arrays_edited_after_a_check_are_checked_again(A):
    """jax arrays are immutable, so a passed check is remembered for them; numpy arrays can
    change in place and are checked on every call."""
    a = arrays(A)
    B = rebuilt(A, **a)
    B.validate()
    a["block_ptr"][0] = 1  # the very array B holds
    with pytest.raises(ValueError, match=r"block_ptr must start at 0"):
        B.validate()


def test_length_checks_apply_under_jit(A):
    """Shapes are static: a wrong length is found while tracing, with the matrix traced."""
    bad = rebuilt(A, local=np.asarray(A.local)[:-1])

    @jax.jit
    def f(B, x):
        return B @ x

    with pytest.raises(ValueError, match=r"a has inconsistent CSB arrays: local must have"):
        f(bad, np.ones((SHAPE[1], 2), F32))


def test_contents_of_a_matrix_closed_over_by_jit_are_checked_while_tracing(A):
    a = arrays(A)
    bad = rebuilt(A, block_ptr=jnp.asarray(_set(a["block_ptr"], 0, 1)))
    with pytest.raises(ValueError, match=r"a has inconsistent CSB arrays: block_ptr must start"):
        jax.jit(lambda x: bad @ x)(np.ones((SHAPE[1], 2), F32))


@pytest.mark.skipif(
    jax.default_backend() != "cpu" or not native_here(),
    reason="traced contents are checked by the CPU handler only (the CUDA handlers trust them)",
)
def test_contents_of_a_traced_matrix_are_checked_by_the_cpu_handler(A):
    a = arrays(A)
    bad = rebuilt(A, local=_local_in_block(a, 3, (0, 9))[0])
    f = jax.jit(lambda B, x: B @ x)
    with pytest.raises(
        (jax.errors.JaxRuntimeError, ValueError), match=r"jaxcsb: local index of nonzero \d+"
    ):
        jax.block_until_ready(f(bad, np.ones((SHAPE[1], 2), F32)))


@pytest.mark.parametrize("layout", ["A@B", "AT@B", "X@A"])
def test_repeated_positions_are_summed_by_the_products(A, layout):
    """A position may repeat inside a block (the sharding padding repeats one holding zeros):
    the products treat the repeats as a sum, on every implementation."""
    a = arrays(A)
    bp, local, values = a["block_ptr"], a["local"], a["values"]
    # Repeat the first nonzero of block 5 twice, with values 0.5 and -2 (exact sums).
    e = int(bp[5])
    local = np.insert(local, e, [local[e], local[e]])
    values = np.insert(values, e, np.array([0.5, -2.0], F32))
    bp = bp + np.where(np.arange(bp.size) > 5, 2, 0).astype(np.int32)
    B = jaxcsb.CSB(values, bp, local, stored_shape=A.stored_shape, block_size=16).validate()
    w = np.asarray(A.todense()).astype(np.float64)
    r, c = host_coordinates(B)
    w[r[e], c[e]] += 0.5 - 2.0
    seed = seed_of("repeats", layout)
    x = random_dense({"A@B": (SHAPE[1], 3), "AT@B": (SHAPE[0], 3), "X@A": (3, SHAPE[0])}[layout],
                     F32, seed)  # fmt: skip
    want, scale = reference(layout, w, x)
    for impl in ("auto", "jax"):
        operands = {"A@B": (B, x), "AT@B": (B.T, x), "X@A": (x, B)}[layout]
        out = jaxcsb.csb_matmul(*operands, impl=impl)
        assert_close(out, want, scale, F32, f"{layout} {impl}")
