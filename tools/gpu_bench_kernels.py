"""Short side-by-side benchmark of the CUDA kernels for tools/gpu_check.sh.

jaxcsb (through JAX and the FFI targets) beside cuSPARSE (torch.sparse CSR) and dense cuBLAS
(torch, float32 without and with TF32), one random matrix, one process. Correctness is checked
against torch's float32 dense product before anything is timed, and every jaxcsb product is run
three times and compared bitwise.

JAX products are timed inside one jitted fori_loop whose iterations feed an element of the
output back into the dense operand (so XLA can neither hoist nor merge them); the same loop
without the product is timed and subtracted. torch products are timed with CUDA events around
back-to-back calls. Reported: median milliseconds, useful TFLOP/s = 2 nnz N / t.

    python tools/gpu_bench_kernels.py [--rows 4096 --cols 1024 --sparsity 0.9 --n 4096 --beta 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def jax_loop_ms(product, x, iters=50, rounds=7):
    """Median ms of product(x) per iteration of a jitted loop, loop overhead subtracted."""

    def make(with_product):
        def body(_, carry):
            x, eps = carry
            if with_product:
                y = product(x)
                x = x.at[0, 0].add(eps * y.reshape(-1)[0].astype(x.dtype))
            else:
                x = x.at[0, 0].add(eps * x[0, 1])
            return x, eps

        return jax.jit(lambda x, eps: jax.lax.fori_loop(0, iters, body, (x, eps))[0])

    results = []
    for with_product in (True, False):
        f = make(with_product)
        eps = jnp.zeros((), x.dtype)
        jax.block_until_ready(f(x, eps))
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, eps))
            times.append((time.perf_counter() - t0) * 1e3 / iters)
        results.append(statistics.median(times))
    return results[0] - results[1]


def torch_ms(fn, reps=20, rounds=7):
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return statistics.median(times)


def rel_err(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--beta", type=int, default=None)
    args = ap.parse_args()

    import torch

    import jaxcsb

    assert "cuda" in jaxcsb.native_platforms(), "jaxcsb was built without its CUDA module"
    rng = np.random.default_rng(0)
    m, k, n = args.rows, args.cols, args.n
    mask = rng.random((m, k)) >= args.sparsity
    w = np.where(mask, rng.standard_normal((m, k)), 0).astype(np.float32)
    a = jaxcsb.CSB.fromdense(w, block_size=args.beta)
    nnz = int(a.nnz)
    flop = 2.0 * nnz * n
    b = rng.standard_normal((k, n)).astype(np.float32)  # A @ b
    bt = rng.standard_normal((m, n)).astype(np.float32)  # A.T @ bt
    xf = rng.standard_normal((n, m)).astype(np.float32)  # x @ A  (batch-leading, transposed)
    xb = rng.standard_normal((n, k)).astype(np.float32)  # x @ A.T (batch-leading, forward)
    print(
        f"{m}x{k} sparsity {args.sparsity} nnz={nnz} N={n} beta={a.block_size} float32 "
        f"on {jax.devices()[0].device_kind}"
    )

    dev = torch.device("cuda")
    tw = torch.from_numpy(w).to(dev)
    t_csr = tw.to_sparse_csr()
    t_csr_t = tw.t().contiguous().to_sparse_csr()
    tb, tbt = torch.from_numpy(b).to(dev), torch.from_numpy(bt).to(dev)
    torch.backends.cuda.matmul.allow_tf32 = False
    ref_fwd = (tw @ tb).cpu().numpy()
    ref_tr = (tw.t() @ tbt).cpu().numpy()

    ok = True
    rows = []
    products = {
        "A @ B      (forward, feature-major)": (lambda x: a @ x, b, ref_fwd),
        "A.T @ B    (transposed, feature-major)": (lambda x: a.T @ x, bt, ref_tr),
        "x @ A.T    (forward, batch-leading)": (lambda x: x @ a.T, xb, None),
        "x @ A      (transposed, batch-leading)": (lambda x: x @ a, xf, None),
    }
    for name, (fn, x, ref) in products.items():
        xd = jnp.asarray(x)
        f = jax.jit(fn)
        outs = [np.asarray(f(xd)) for _ in range(3)]
        same = all(np.array_equal(outs[0], o) for o in outs[1:])
        if ref is None:
            ref = x.astype(np.float64) @ (w.T if "A.T" in name else w).astype(np.float64)
        err = rel_err(outs[0], ref)
        good = err < 1e-5 and same
        ok &= good
        ms = jax_loop_ms(fn, xd)
        rows.append((f"jaxcsb {name}", ms, err, same))

    # SDDMM: weight gradient of y = A @ b, dA = dy @ b.T at A's nonzeros.
    dy = rng.standard_normal((m, n)).astype(np.float32)
    dyd, bd = jnp.asarray(dy), jnp.asarray(b.T.copy())
    sd = jax.jit(lambda lhs, rhs: jaxcsb.sddmm(lhs, rhs, a).values)
    outs = [np.asarray(sd(dyd, bd)) for _ in range(3)]
    same = all(np.array_equal(outs[0], o) for o in outs[1:])
    # The CSB value order differs from row-major: compare as dense matrices.
    got = np.asarray(a.with_values(jnp.asarray(outs[0])).todense(), np.float64)
    ref = np.where(np.asarray(a.todense()) != 0, dy.astype(np.float64) @ b.astype(np.float64).T, 0)
    err = rel_err(got, ref)
    ok &= err < 1e-5 and same
    sddmm_ms = jax_loop_ms(lambda lhs: sd(lhs, bd), dyd)
    rows.append(("jaxcsb SDDMM (dy @ B.T at A's nonzeros)", sddmm_ms, err, same))

    peers = [
        ("cuSPARSE CSR A @ B (torch)", lambda: t_csr @ tb),
        ("cuSPARSE CSR A.T @ B (torch, A.t())", lambda: t_csr.t() @ tbt),
        ("cuSPARSE CSR A.T @ B (torch, 2nd copy)", lambda: t_csr_t @ tbt),
        ("dense fp32 A @ B (torch)", lambda: tw @ tb),
        ("dense fp32 A.T @ B (torch)", lambda: tw.t() @ tbt),
    ]
    for name, fn in peers:
        rows.append((name, torch_ms(fn), None, None))
    torch.backends.cuda.matmul.allow_tf32 = True
    rows.append(("dense tf32 A @ B (torch)", torch_ms(lambda: tw @ tb), None, None))
    torch.backends.cuda.matmul.allow_tf32 = False

    print(f"{'product':55s} {'ms':>9s} {'TFLOP/s':>8s}  {'rel.err':>8s} det")
    for name, ms, err, same in rows:
        e = "" if err is None else f"{err:8.1e}"
        d = "" if same is None else ("yes" if same else "NO")
        print(f"{name:55s} {ms:9.4f} {flop / ms / 1e9:8.2f}  {e:>8s} {d}")
    t = {r[0]: r[1] for r in rows}
    fwd = t["jaxcsb A @ B      (forward, feature-major)"]
    tr = t["jaxcsb A.T @ B    (transposed, feature-major)"]
    cus = t["cuSPARSE CSR A @ B (torch)"]
    print(f"transpose parity (A.T@B / A@B): {tr / fwd:.3f}")
    print(f"cuSPARSE / jaxcsb, forward: {cus / fwd:.2f}x")
    print("bench:", "PASS" if ok else "FAIL (correctness or determinism)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
