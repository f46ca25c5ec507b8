"""The native FFI targets: their own validation of what they receive (called directly, past the
Python checks), bitwise determinism, the layout of x @ A in the compiled program (no transpose
of the activations), and the one-time warning when the pure-JAX fallback runs instead."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    LAYOUTS,
    N_FLAT,
    SHAPE,
    apply,
    assert_close,
    dense_operand_shape,
    random_dense,
    random_mask,
    reference,
    seed_of,
    standard_csb,
)

import jaxcsb
from jaxcsb import _native

NO_NATIVE = f"jaxcsb has no native target for backend {jax.default_backend()!r}"
needs_native = pytest.mark.skipif(
    ("cuda" if jax.default_backend() == "gpu" else jax.default_backend())
    not in jaxcsb.native_platforms(),
    reason=NO_NATIVE,
)
# The CPU handlers also read the index arrays (O(nnz)) before trusting them; the CUDA handlers
# check sizes and attributes only, since reading device memory on the host would need a
# synchronisation on every call.
cpu_only = pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason="index contents are validated by the CPU handlers only (see test_native.py)",
)

F32 = np.dtype(np.float32)
# XLA reports a handler's error as JaxRuntimeError, or as ValueError when it surfaces through
# the CPU handler's asynchronous completion.
RuntimeErrors = (jax.errors.JaxRuntimeError, ValueError)

# --- direct FFI calls ---------------------------------------------------------------------------


def _valid_spmm():
    """The arguments of a valid jaxcsb_spmm call (A @ x) and its expected result."""
    A, w = standard_csb(F32, seed_of("ffi"))
    x = random_dense((SHAPE[1], 4), F32, seed_of("ffi x"))
    args = dict(
        block_ptr=np.asarray(A.block_ptr),
        local=np.asarray(A.local),
        values=np.asarray(A.values),
        dense=x,
    )
    attrs = dict(rows=SHAPE[0], cols=SHAPE[1], block_size=16, transpose=False, batch_leading=False)
    return args, attrs, ((SHAPE[0], 4), F32), reference("A@B", w, x)


def spmm_call(args, attrs, out):
    call = jax.ffi.ffi_call(_native.SPMM_TARGET, jax.ShapeDtypeStruct(*out))
    result = call(
        *(jnp.asarray(args[k]) for k in ("block_ptr", "local", "values", "dense")),
        rows=np.int64(attrs["rows"]),
        cols=np.int64(attrs["cols"]),
        block_size=np.int64(attrs["block_size"]),
        transpose=bool(attrs["transpose"]),
        batch_leading=bool(attrs["batch_leading"]),
    )
    return jax.block_until_ready(result)


def sddmm_call(block_ptr, local, lhs, rhs, out, **attrs):
    call = jax.ffi.ffi_call(_native.SDDMM_TARGET, jax.ShapeDtypeStruct(*out))
    result = call(
        *(jnp.asarray(a) for a in (block_ptr, local, lhs, rhs)),
        rows=np.int64(attrs.get("rows", SHAPE[0])),
        cols=np.int64(attrs.get("cols", SHAPE[1])),
        block_size=np.int64(attrs.get("block_size", 16)),
        lhs_transposed=False,
        rhs_transposed=False,
    )
    return jax.block_until_ready(result)


@needs_native
def test_direct_spmm_call_is_valid_as_built():
    """The baseline the failure cases below modify one piece of."""
    args, attrs, out, (want, scale) = _valid_spmm()
    assert_close(spmm_call(args, attrs, out), want, scale, F32, "direct call")


def _broken(change):
    args, attrs, out, _ = _valid_spmm()
    change(args, attrs)
    return args, attrs, out


SIZE_CASES = {
    "block_ptr_too_short": (
        lambda a, t: a.update(block_ptr=a["block_ptr"][:-1]),
        r"block_ptr has shape \(12,\), expected \(13,\)",
    ),
    "block_ptr_wrong_type": (
        lambda a, t: a.update(block_ptr=a["block_ptr"].astype(np.uint32)),
        r"block_ptr has element type uint32, expected int32",
    ),
    "local_shorter_than_values": (
        lambda a, t: a.update(local=a["local"][:-1]),
        r"local has shape .* expected",
    ),
    "local_wrong_type": (
        lambda a, t: a.update(local=a["local"].astype(np.int32)),
        r"local has element type int32, expected uint16",
    ),
    "dense_wrong_rows": (
        lambda a, t: a.update(dense=a["dense"][:-1]),
        r"dense operand has shape \(52, 4\), expected \(53, 4\)",
    ),
    "dense_wrong_dtype": (
        lambda a, t: a.update(dense=a["dense"].astype(jnp.bfloat16)),
        r"dense operand and values have different element types \(bfloat16 and float32\)",
    ),
    "values_unsupported_dtype": (
        lambda a, t: a.update(
            values=a["values"].astype(np.int32), dense=a["dense"].astype(np.int32)
        ),
        r"values has unsupported element type int32: expected float32",
    ),
    "block_size_not_power_of_two": (
        lambda a, t: t.update(block_size=24),
        r"block_size must be a power of two in 16\.\.256, got 24",
    ),
    "block_size_too_large": (
        lambda a, t: t.update(block_size=512),
        r"block_size must be a power of two in 16\.\.256, got 512",
    ),
    "rows_attribute_disagrees": (
        lambda a, t: t.update(rows=70),
        r"block_ptr has shape \(13,\), expected \(21,\)",
    ),
    "negative_rows": (
        lambda a, t: t.update(rows=-1),
        r"matrix shape \(-1, 53\) has a negative dimension",
    ),
}


@needs_native
@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_spmm_target_rejects_bad_sizes_and_attributes(case):
    change, match = SIZE_CASES[case]
    args, attrs, out = _broken(change)
    if case == "values_unsupported_dtype":
        out = (out[0], np.int32)
    with pytest.raises(RuntimeErrors, match="jaxcsb: " + match):
        spmm_call(args, attrs, out)


@needs_native
def test_spmm_target_rejects_wrong_output_shape():
    args, attrs, out, _ = _valid_spmm()
    with pytest.raises(RuntimeErrors, match=r"jaxcsb: output has shape \(36, 4\), expected"):
        spmm_call(args, attrs, ((SHAPE[0] - 1, 4), F32))


def _bump(array, index, value):
    array = array.copy()
    array[index] = value
    return array


CONTENT_CASES = {
    "block_ptr_not_monotone": (
        lambda a, t: a.update(block_ptr=_bump(a["block_ptr"], 3, a["block_ptr"][2] - 1)),
        r"block_ptr must not decrease",
    ),
    # A pointer past nnz that comes back down later must be caught before local is read.
    "block_ptr_overshoots_nnz": (
        lambda a, t: a.update(block_ptr=_bump(a["block_ptr"], 1, 10**6)),
        r"block_ptr must not decrease and stay within 0\.\.nnz",
    ),
    "block_ptr_not_ending_at_nnz": (
        lambda a, t: a.update(block_ptr=_bump(a["block_ptr"], -1, a["block_ptr"][-1] - 1)),
        r"block_ptr must start at 0 and end at nnz",
    ),
    "block_ptr_not_starting_at_0": (
        lambda a, t: a.update(block_ptr=_bump(a["block_ptr"], 0, 1)),
        r"block_ptr must start at 0",
    ),
    # The last block of a row of blocks is clipped to 53 - 48 = 5 columns.
    "local_column_outside_clipped_block": (
        lambda a, t: a.update(local=_bump(a["local"], a["block_ptr"][4] - 1, (0 << 8) | 9)),
        r"local index of nonzero \d+ is \(0, 9\), outside its 16 x 5 block",
    ),
    "local_row_outside_block": (
        lambda a, t: a.update(local=_bump(a["local"], 0, (16 << 8) | 0)),
        r"local index of nonzero 0 is \(16, 0\), outside its 16 x 16 block",
    ),
}


@needs_native
@cpu_only
@pytest.mark.parametrize("case", list(CONTENT_CASES))
def test_spmm_target_rejects_bad_index_contents(case):
    change, match = CONTENT_CASES[case]
    args, attrs, out = _broken(change)
    with pytest.raises(RuntimeErrors, match="jaxcsb: " + match):
        spmm_call(args, attrs, out)


@needs_native
def test_sddmm_target_rejects_bad_sizes():
    A, _ = standard_csb(F32, seed_of("ffi sddmm"))
    bp, local = np.asarray(A.block_ptr), np.asarray(A.local)
    lhs, rhs = np.ones((SHAPE[0], 3), F32), np.ones((3, SHAPE[1]), F32)
    out = ((A.nnz,), F32)
    np.testing.assert_allclose(sddmm_call(bp, local, lhs, rhs, out), np.full(A.nnz, 3.0))
    with pytest.raises(RuntimeErrors, match=r"jaxcsb: lhs has shape \(36, 3\), expected"):
        sddmm_call(bp, local, lhs[:-1], rhs, out)
    with pytest.raises(RuntimeErrors, match=r"jaxcsb: rhs has shape \(3, 52\), expected"):
        sddmm_call(bp, local, lhs, rhs[:, :-1], out)
    with pytest.raises(RuntimeErrors, match=r"jaxcsb: block_size must be a power of two"):
        sddmm_call(bp, local, lhs, rhs, out, block_size=48)
    with pytest.raises(RuntimeErrors, match=r"jaxcsb: local has shape"):
        sddmm_call(bp, local, lhs, rhs, ((A.nnz + 1,), F32))
    with pytest.raises(RuntimeErrors, match=r"must share one element type, got float16, float32"):
        sddmm_call(bp, local, lhs.astype(jnp.float16), rhs, out)


@needs_native
@cpu_only
def test_sddmm_target_rejects_bad_index_contents():
    A, _ = standard_csb(F32, seed_of("ffi sddmm contents"))
    bp, local = np.asarray(A.block_ptr), np.asarray(A.local)
    lhs, rhs = np.ones((SHAPE[0], 3), F32), np.ones((3, SHAPE[1]), F32)
    out = ((A.nnz,), F32)
    with pytest.raises(RuntimeErrors, match=r"jaxcsb: block_ptr must not decrease"):
        sddmm_call(_bump(bp, 2, 10**6), local, lhs, rhs, out)
    with pytest.raises(RuntimeErrors, match=r"jaxcsb: local index of nonzero 0"):
        sddmm_call(bp, _bump(local, 0, 0xFFFF), lhs, rhs, out)


# --- determinism ----------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_native_results_are_bitwise_reproducible(dtype):
    """Three runs of each product give the same bits (large enough to use several threads)."""
    dtype = np.dtype(dtype)
    seed = seed_of("determinism", dtype)
    shape, n = (300, 260), 96
    A = jaxcsb.CSB.fromdense(
        random_dense(shape, dtype, seed),
        random_mask(shape, 0.1, seed, dense_rows=3),
        block_size=32,
    )
    runs = {}
    for layout in LAYOUTS:
        x = jax.device_put(random_dense(dense_operand_shape(layout, shape, n), dtype, seed + 1))
        runs[layout] = [np.asarray(apply(layout, A, x, "native")) for _ in range(3)]
    a = jax.device_put(random_dense((shape[0], n), dtype, seed + 2))
    b = jax.device_put(random_dense((n, shape[1]), dtype, seed + 3))
    runs["sddmm"] = [np.asarray(jaxcsb.sddmm(a, b, A, impl="native").values) for _ in range(3)]
    for name, (first, *rest) in runs.items():
        for other in rest:
            assert np.array_equal(first.view(np.uint16), other.view(np.uint16)), name


# --- the compiled program of x @ A ----------------------------------------------------------------

TRANSPOSE_OP = re.compile(r"\btranspose\(")
COPY_OP = re.compile(r"\bcopy\(")


@needs_native
@pytest.mark.parametrize("layout", ["X@A", "X@AT"])
def test_batch_leading_product_does_not_transpose_activations(layout):
    """x @ A lowers to the custom call reading x in its own layout: the lowered module has no
    stablehlo.transpose at all (the pure-JAX branch is not lowered on a native platform, and
    reshaping (2, 3, 2, m) to (12, m) is free), and the compiled module has no transpose and
    no copy (a layout-changing copy would be a transpose in disguise)."""
    A, _ = standard_csb(F32, seed_of("hlo", layout))
    x = jnp.ones(dense_operand_shape(layout, SHAPE, N_FLAT, (2, 3, 2)), F32)
    lowered = jax.jit(lambda x: apply(layout, A, x)).lower(x)
    text = lowered.as_text()
    assert "jaxcsb_spmm" in text
    assert "stablehlo.transpose" not in text
    compiled = lowered.compile().as_text()
    assert "jaxcsb_spmm" in compiled
    assert not TRANSPOSE_OP.search(compiled), compiled
    assert not COPY_OP.search(compiled), compiled


@needs_native
def test_gradients_of_batch_leading_product_do_not_transpose():
    """The backward pass of x @ A (A.T-product for dx, SDDMM for d values) also reads x and
    the cotangent in their own layouts."""
    A, _ = standard_csb(F32, seed_of("hlo grad"))
    x = jnp.ones((2, 6, SHAPE[0]), F32)

    def loss(values, x):
        return jnp.sum(jnp.sin(x @ A.with_values(values)))

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(A.values, x).as_text()
    assert text.count("jaxcsb_spmm") >= 2 and "jaxcsb_sddmm" in text
    assert "stablehlo.transpose" not in text


# --- the pure-JAX fallback warning ----------------------------------------------------------------


def _fallback_product(seed):
    A, w = standard_csb(F32, seed)
    x = jax.device_put(random_dense((SHAPE[1], 5), F32, seed + 1))
    return A, w, x


def test_fallback_warns_once_when_backend_has_no_native_target(monkeypatch):
    """Simulated: the registry claims no platform has a native target. The first product
    warns (a RuntimeWarning naming the platform), runs the pure-JAX implementation correctly,
    and later products stay silent."""
    native_platforms = _native.native_platforms()  # register first, then hide everything
    assert isinstance(native_platforms, frozenset)
    monkeypatch.setattr(_native, "_registered", set())
    monkeypatch.setattr(_native, "_warned", set())
    monkeypatch.setattr(_native, "_import_errors", {})
    assert jaxcsb.native_platforms() == frozenset()
    A, w, x = _fallback_product(seed_of("fallback"))
    # The message names the platform, or on a GPU says how to build the CUDA module.
    platform = _native._backend_platform()
    expected = "built without CUDA support" if platform == "cuda" else f"platform '{platform}'"
    with pytest.warns(RuntimeWarning, match=rf"{expected}.*using the pure-JAX implementation"):
        out = A @ x
    want, scale = reference("A@B", w, x)
    assert_close(out, want, scale, F32, "fallback")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        A @ x
        jaxcsb.sddmm(jnp.ones((SHAPE[0], 2)), jnp.ones((2, SHAPE[1])), A)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_fallback_warning_on_gpu_without_cuda_module_says_how_to_build(monkeypatch):
    """Simulated: the backend reports the CUDA platform, and only the CPU module loaded."""
    monkeypatch.setattr(_native, "_registered", {"cpu"})
    monkeypatch.setattr(_native, "_warned", set())
    monkeypatch.setattr(_native, "_import_errors", {"cuda": "No module named 'jaxcsb._cuda'"})
    monkeypatch.setattr(_native, "_backend_platform", lambda: "cuda")
    with pytest.warns(RuntimeWarning, match=r"built without CUDA support.*JAXCSB_CUDA=ON"):
        _native.warn_if_no_native_target()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _native.warn_if_no_native_target()
    assert not caught


def test_impl_native_without_a_target_names_the_platform(monkeypatch):
    """impl="native" where the backend has no target is a clear ValueError, not an XLA
    lowering error about an unknown custom call."""
    _native.native_platforms()
    monkeypatch.setattr(_native, "_registered", set())
    A, _, x = _fallback_product(seed_of("native missing"))
    with pytest.raises(ValueError, match=r"impl='native' but jaxcsb has no native target"):
        jaxcsb.csb_matmul(A, x, impl="native")
