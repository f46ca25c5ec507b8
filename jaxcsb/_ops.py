"""csb_matmul and sddmm: validation, dispatch to the native kernels, and gradients.

Gradients (S stored, out = op(S) @ D, g = d loss / d out):
  d D      = op(S)^T @ g                 the same kernel with op flipped, from the same copy
  d values = SDDMM: for out = S @ D,  dS = g @ D^T at S's nonzeros; for out = S^T @ D,
             dS = D @ g^T at S's nonzeros (and the same with rows and columns swapped for the
             batch-leading layout). Index arrays get no gradient.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _native, _reference, _validate
from ._dtypes import check_value_dtype
from ._format import CSB, CSB_ARRAYS
from ._problem import Sddmm, Spmm

IMPLS = ("auto", "native", "jax")


def _check_impl(impl):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _vma(x):
    """The mesh axes over which x varies inside shard_map (empty outside, or unchecked)."""
    if not hasattr(jax.lax, "pcast"):  # a jax without varying-axis types
        return frozenset()
    t = jax.typeof(x)
    mat = getattr(t, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(t, "vma", ()))


def _ffi(call, *args, **attrs):
    """An FFI call typed like a primitive under shard_map's vma check: inputs cast to vary
    over the union of their axes, the output declared to vary over it too."""
    vma = frozenset().union(*(_vma(a) for a in args))
    if not vma:
        return call(*args, **attrs)
    args = [jax.lax.pcast(a, tuple(vma - _vma(a)), to="varying") for a in args]
    return jax.lax.pcast(call(*args, **attrs), tuple(vma), to="varying")


def _sum_to(cotangent, primal):
    """A cotangent summed over the axes its primal does not vary over (the transpose of the
    implicit broadcast of an unvarying operand)."""
    extra = tuple(_vma(cotangent) - _vma(primal))
    return jax.lax.psum(cotangent, extra) if extra else cotangent


# --- dispatch --------------------------------------------------------------------------------


def _dispatch(impl, reference, native):
    """Runs ``native`` on platforms with a registered target and ``reference`` elsewhere."""
    if impl == "jax":
        return reference()
    if impl == "native":
        platform = _native._backend_platform()
        if platform not in _native.native_platforms():
            raise ValueError(
                f"impl='native' but jaxcsb has no native target for platform {platform!r} "
                f"(native targets: {sorted(_native.native_platforms())}); use impl='auto' or "
                f"impl='jax'"
            )
        return native()
    _native.warn_if_no_native_target()
    branches = {platform: native for platform in _native.native_platforms()}
    return jax.lax.platform_dependent(default=reference, **branches)


def _spmm_forward(p: Spmm, values, dense, block_ptr, local):
    n = dense.shape[0] if p.batch_leading else dense.shape[1]
    out_shape = p.out_shape(n)
    if values.shape[0] == 0 or dense.size == 0 or math.prod(out_shape) == 0:
        return jnp.zeros(out_shape, values.dtype)

    def native():
        call = jax.ffi.ffi_call(
            _native.SPMM_TARGET,
            jax.ShapeDtypeStruct(out_shape, values.dtype),
            vmap_method="sequential",
        )
        return _ffi(
            call,
            block_ptr,
            local,
            values,
            dense,
            rows=np.int64(p.stored_shape[0]),
            cols=np.int64(p.stored_shape[1]),
            block_size=np.int64(p.block_size),
            transpose=bool(p.transpose),
            batch_leading=bool(p.batch_leading),
        )

    def reference():
        return _reference.spmm(p, values, dense, block_ptr, local)

    return _dispatch(p.impl, reference, native)


def _sddmm_forward(p: Sddmm, lhs, rhs, block_ptr, local):
    nnz = local.shape[0]
    n = lhs.shape[0] if p.lhs_transposed else lhs.shape[1]
    if nnz == 0 or n == 0:
        return jnp.zeros((nnz,), lhs.dtype)

    def native():
        call = jax.ffi.ffi_call(
            _native.SDDMM_TARGET,
            jax.ShapeDtypeStruct((nnz,), lhs.dtype),
            vmap_method="sequential",
        )
        return _ffi(
            call,
            block_ptr,
            local,
            lhs,
            rhs,
            rows=np.int64(p.stored_shape[0]),
            cols=np.int64(p.stored_shape[1]),
            block_size=np.int64(p.block_size),
            lhs_transposed=bool(p.lhs_transposed),
            rhs_transposed=bool(p.rhs_transposed),
        )

    def reference():
        return _reference.sddmm(p, lhs, rhs, block_ptr, local)

    return _dispatch(p.impl, reference, native)


# --- SpMM with its gradient ------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _spmm(p: Spmm, values, dense, block_ptr, local):
    return _spmm_forward(p, values, dense, block_ptr, local)


def _spmm_fwd(p, values, dense, block_ptr, local):
    out = _spmm(p, values, dense, block_ptr, local)
    return out, (values, dense, block_ptr, local)


def _spmm_bwd(p: Spmm, residuals, g):
    values, dense, block_ptr, local = residuals
    g = g.astype(values.dtype)
    d_dense = _spmm(p.flipped(), values, g, block_ptr, local)
    # dS[i, j] = sum_n L[i, n] R[n, j]: which of g and D plays L depends on the direction,
    # and the layout says whether each is stored with n leading.
    lhs, rhs = (dense, g) if p.transpose else (g, dense)
    q = Sddmm(p.stored_shape, p.block_size, p.batch_leading, not p.batch_leading, p.impl)
    d_values = _sddmm(q, lhs, rhs, block_ptr, local)
    return _sum_to(d_values, values), _sum_to(d_dense, dense), None, None


_spmm.defvjp(_spmm_fwd, _spmm_bwd)


# --- SDDMM with its gradient -----------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sddmm(q: Sddmm, lhs, rhs, block_ptr, local):
    return _sddmm_forward(q, lhs, rhs, block_ptr, local)


def _sddmm_fwd(q, lhs, rhs, block_ptr, local):
    out = _sddmm(q, lhs, rhs, block_ptr, local)
    return out, (lhs, rhs, block_ptr, local)


def _sddmm_bwd(q: Sddmm, residuals, g):
    # out_e = sum_n L[i_e, n] R[n, j_e], so with G the sparse matrix of the cotangents on S's
    # pattern, dL = G @ R^T and dR = L^T @ G: two SpMMs from the same structure. Each SpMM
    # reads its dense operand in the layout it has and the result is transposed (if needed)
    # to its operand's layout.
    lhs, rhs, block_ptr, local = residuals
    g = g.astype(lhs.dtype)
    structure = (block_ptr, local)
    # dL[i, n] = sum_j G[i, j] R[n, j]; R is (cols, n) when rhs_transposed, else (n, cols).
    p = Spmm(q.stored_shape, q.block_size, False, not q.rhs_transposed, q.impl)
    d_lhs = _spmm(p, g, rhs, *structure)
    if p.batch_leading != q.lhs_transposed:
        d_lhs = d_lhs.T
    # dR[n, j] = sum_i G[i, j] L[i, n]; L is (n, rows) when lhs_transposed, else (rows, n).
    p = Spmm(q.stored_shape, q.block_size, True, q.lhs_transposed, q.impl)
    d_rhs = _spmm(p, g, lhs, *structure)
    if p.batch_leading == q.rhs_transposed:
        d_rhs = d_rhs.T
    return _sum_to(d_lhs, lhs), _sum_to(d_rhs, rhs), None, None


_sddmm.defvjp(_sddmm_fwd, _sddmm_bwd)


# --- public API ------------------------------------------------------------------------------


def _dense_operand(x, name):
    if isinstance(x, CSB):
        raise ValueError(f"{name} must be a dense array: exactly one operand may be a CSB matrix")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{name} must be an array (or something jnp.asarray accepts), got "
                f"{type(x).__name__}: {e}"
            ) from None
    return x


def _check_matrix(A: CSB, name):
    """The CSB operand's arrays are consistent: lengths always, contents when concrete."""
    if len(getattr(A.values, "shape", ())) != 1:
        shape = getattr(A.values, "shape", None)
        raise ValueError(f"{name}.values must be 1-D (nnz,), got shape {shape}")
    try:
        _validate.check(A)
    except ValueError as e:
        raise ValueError(f"{name} has {e}") from None


def _devices(x):
    """The devices of a concrete array committed to them, else None (free to move)."""
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return None
    if not getattr(x, "committed", False):
        return None
    return frozenset(x.sharding.device_set)


def _check_devices(**operands):
    """Committed operands must share their devices, as JAX requires of one computation; the
    error names the operands (JAX's own names the custom call's positional arguments)."""
    placed = [(name, d) for name, x in operands.items() if (d := _devices(x)) is not None]
    for name, devices in placed[1:]:
        first, first_devices = placed[0]
        if devices != first_devices:

            def show(ds):
                return "[" + ", ".join(str(d) for d in sorted(ds, key=lambda d: d.id)) + "]"

            raise ValueError(
                f"{name} is committed to device(s) {show(devices)} but {first} to "
                f"{show(first_devices)}: operands of one product must live on the same "
                f"devices; move one with jax.device_put"
            )


def _csb_leaves(A: CSB, name):
    return {f"{name}.{leaf}": getattr(A, leaf) for leaf in CSB_ARRAYS}


def _check_same_dtype(a: CSB, x, name):
    check_value_dtype(x.dtype, name)
    if x.dtype != a.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the CSB values have dtype {a.dtype}: "
            f"convert one of them (A.astype(...) or x.astype(...))"
        )


def csb_matmul(a, b, *, impl: str = "auto"):
    """Matrix product with exactly one operand a :class:`CSB` matrix.

    * ``A @ B``: A (m, k) sparse (``A`` or a view ``A.T``), B (k, n) dense -> (m, n).
    * ``X @ A``: X (..., m) dense with any leading batch dimensions, A (m, k) -> (..., k).
      X is read in its own layout (no transpose of the activations).

    Values and the dense operand share one dtype (float32, bfloat16 or float16); accumulation
    is float32 and the result has the input dtype. Differentiable in the values and the dense
    operand (``jax.custom_vjp``: the transposed product and SDDMM, from the same stored copy).

    In the native GPU kernels, float32 matrices of block size 64 or less that hold at least
    1/8 of their positions (the default block size on a GPU is 64 from there up) multiply more
    than one column or row of the dense operand on tensor cores in three TF32 products per
    multiply-add (each product within about 2**-20 of its float32 value, where a float32
    multiply-add rounds at 2**-24); other matrices, a single vector, ``impl="jax"`` and the
    CPU multiply-add in float32.

    ``impl``: ``"auto"`` (native kernels where registered, pure JAX elsewhere), ``"native"``
    or ``"jax"`` (the pure-JAX reference).
    """
    _check_impl(impl)
    if isinstance(a, CSB) == isinstance(b, CSB):
        raise ValueError(
            f"csb_matmul needs exactly one CSB operand, got a: {type(a).__name__} and "
            f"b: {type(b).__name__}"
        )
    sparse_left = isinstance(a, CSB)
    A = a if sparse_left else b
    x = _dense_operand(b if sparse_left else a, "b" if sparse_left else "a")
    name = "b" if sparse_left else "a"
    _check_same_dtype(A, x, name)
    sparse_name = "a" if sparse_left else "b"
    _check_matrix(A, sparse_name)
    _check_devices(**_csb_leaves(A, sparse_name), **{name: x})
    m, k = A.shape
    if sparse_left:
        if x.ndim != 2:
            raise ValueError(f"b must be a 2-D array (k, n) for A @ b, got shape {x.shape}")
        if x.shape[0] != k:
            raise ValueError(
                f"inner dimensions differ: A has shape {A.shape}, so b needs {k} rows, "
                f"got b.shape={x.shape}"
            )
        dense = x
    else:
        if x.ndim < 2:
            raise ValueError(
                f"a must have rank 2 or more (..., {m}) for a @ A, got shape {x.shape}"
            )
        if x.shape[-1] != m:
            raise ValueError(
                f"inner dimensions differ: A has shape {A.shape}, so a needs a last "
                f"dimension of {m}, got a.shape={x.shape}"
            )
        # Not reshape(-1, m): that is ambiguous when m == 0.
        dense = x.reshape(math.prod(x.shape[:-1]), m)
    p = Spmm(
        stored_shape=A.stored_shape,
        block_size=A.block_size,
        transpose=A.transposed != (not sparse_left),
        batch_leading=not sparse_left,
        impl=impl,
    )
    out = _spmm(p, A.values, dense, A.block_ptr, A.local)
    if not sparse_left:
        out = out.reshape(*x.shape[:-1], k)
    return out


def sddmm(a, b, pattern: CSB, *, impl: str = "auto") -> CSB:
    """Sampled dense-dense product: the values of ``a @ b`` at ``pattern``'s nonzeros.

    ``a`` is (m, n) and ``b`` is (n, k) for a pattern of shape (m, k); returns a CSB with the
    pattern's structure (and orientation) holding those values. Differentiable in ``a`` and
    ``b``.

    Sums accumulate in float32. In the native GPU kernels, float32 patterns that hold at least
    1/8 of their positions run on tensor cores in three TF32 products per multiply-add (each
    product within about 2**-20 of its float32 value, where a float32 multiply-add rounds
    at 2**-24); sparser ones, ``impl="jax"`` and the CPU multiply-add in float32.
    """
    _check_impl(impl)
    if not isinstance(pattern, CSB):
        raise ValueError(f"pattern must be a CSB matrix, got {type(pattern).__name__}")
    a = _dense_operand(a, "a")
    b = _dense_operand(b, "b")
    _check_same_dtype(pattern, a, "a")
    _check_same_dtype(pattern, b, "b")
    _check_matrix(pattern, "pattern")
    _check_devices(**_csb_leaves(pattern, "pattern"), a=a, b=b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-D, got a.shape={a.shape}, b.shape={b.shape}")
    m, k = pattern.shape
    if a.shape[0] != m or b.shape[1] != k or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"a @ b must have the pattern's shape {pattern.shape} with matching inner "
            f"dimensions, got a.shape={a.shape}, b.shape={b.shape}"
        )
    if pattern.transposed:
        # The pattern is S^T: (a @ b)[j, i] at S's (i, j) is sum_n b^T[i, n] a^T[n, j].
        lhs, rhs, lhs_t, rhs_t = b, a, True, True
    else:
        lhs, rhs, lhs_t, rhs_t = a, b, False, False
    q = Sddmm(pattern.stored_shape, pattern.block_size, lhs_t, rhs_t, impl)
    values = _sddmm(q, lhs, rhs, pattern.block_ptr, pattern.local)
    return pattern.with_values(values)
