"""Concurrency and determinism: products called from several Python threads at once give
bitwise the results of single-threaded calls, and CPU results do not depend on the number of
threads XLA's pool has (one slice of work per thread)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import apply, dense_operand_shape, random_dense, random_mask, seed_of

import jaxcsb

# (shape, density, block_size, dtype, layout, n): each thread gets a different problem; the
# layouts cover every product.
PROBLEMS = [
    ((37, 53), 0.3, 16, np.float32, "A@B", 7),
    ((120, 70), 0.1, 32, np.float32, "AT@B", 33),
    ((64, 200), 0.05, 64, jnp.bfloat16, "X@A", 12),
    ((200, 90), 0.2, 16, np.float16, "X@AT", 5),
    ((300, 260), 0.02, 128, np.float32, "A@B", 300),
    ((90, 90), 1.0, 16, jnp.bfloat16, "AT@B", 4),
    ((17, 500), 0.3, 256, np.float32, "X@A", 64),
    ((257, 31), 0.5, 32, np.float16, "X@AT", 9),
]
THREADS, CALLS = 8, 50


def problem(i):
    """A jitted function of problem i (product, gradients and SDDMM) and its arguments."""
    shape, density, beta, dtype, layout, n = PROBLEMS[i]
    seed = seed_of("concurrency", i)
    A = jaxcsb.CSB.fromdense(
        random_dense(shape, dtype, seed),
        random_mask(shape, density, seed + 1, dense_rows=2),
        block_size=beta,
    )
    x = jax.device_put(random_dense(dense_operand_shape(layout, shape, n), dtype, seed + 2))

    def f(A, x):
        out, vjp = jax.vjp(lambda v, x: apply(layout, A.with_values(v), x), A.values, x)
        return (out, *vjp(out))

    return jax.jit(f), (A, x)


def as_bits(results):
    return [np.asarray(r).view(np.uint8) for r in jax.tree.leaves(results)]


@pytest.mark.parametrize("i", range(len(PROBLEMS)))
def test_every_product_and_gradient_is_bitwise_reproducible_over_5_runs(i):
    """Each problem's product, input gradient (the other direction) and values gradient
    (SDDMM), run five times in a row: bitwise the same every time."""
    f, args = problem(i)
    first = as_bits(f(*args))
    for run in range(1, 5):
        again = as_bits(f(*args))
        for k, (a, b) in enumerate(zip(first, again, strict=True)):
            assert np.array_equal(a, b), f"run {run}, output {k} differs from run 0"


def run_threads(target, count):
    """Runs target(i) on ``count`` threads started together; returns their exceptions."""
    start = threading.Barrier(count)
    errors = []

    def body(i):
        try:
            start.wait()
            target(i)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_jitted_calls_from_8_threads_match_single_threaded_bitwise():
    """8 threads x 50 calls, each thread its own problem (shapes, dtypes, layouts, block
    sizes), every result compared bitwise with the same call made alone."""
    problems = [problem(i) for i in range(len(PROBLEMS))]
    alone = [as_bits(f(*args)) for f, args in problems]

    def target(i):
        f, args = problems[i % len(problems)]
        for call in range(CALLS):
            got = as_bits(f(*args))
            for k, (a, b) in enumerate(zip(got, alone[i % len(problems)], strict=True)):
                if not np.array_equal(a, b):
                    raise AssertionError(f"call {call}, output {k} differs")

    errors = run_threads(target, THREADS)
    assert not errors, "\n".join(errors)


def test_eager_builds_and_products_from_4_threads_match_single_threaded_bitwise():
    """Eager use from several threads: each builds new matrices (their validation is recorded
    in a shared, locked table) and multiplies them without jit."""
    shape, n = (45, 70), 6
    mask = random_mask(shape, 0.2, seed_of("eager threads"))
    x = random_dense((shape[1], n), np.float32, seed_of("eager threads x"))

    def compute(i, j):
        w = random_dense(shape, np.float32, seed_of("eager", i, j))
        A = jaxcsb.CSB.fromdense(w, mask, block_size=16)
        return np.asarray(A @ x)

    alone = {(i, j): compute(i, j) for i in range(4) for j in range(20)}

    def target(i):
        for j in range(20):
            got = compute(i, j)
            if not np.array_equal(got.view(np.uint8), alone[i, j].view(np.uint8)):
                raise AssertionError(f"build {j} differs")

    errors = run_threads(target, 4)
    assert not errors, "\n".join(errors)


# --- CPU results do not depend on the thread count ------------------------------------------------

SCRIPT = """
import os, sys
cpus = sys.argv[2]
if cpus != "all":
    os.sched_setaffinity(0, set(range(int(cpus))))  # XLA sizes its pool from the affinity
import numpy as np
sys.path.insert(0, sys.argv[3])
import test_concurrency as t
out = {}
for i in range(len(t.PROBLEMS)):
    f, args = t.problem(i)
    for k, leaf in enumerate(t.as_bits(f(*args))):
        out[f"{i}_{k}"] = leaf
np.savez(sys.argv[1], **out)
"""


def test_cpu_results_do_not_depend_on_the_number_of_threads(tmp_path):
    """The problems above on one CPU (one slice of work) and on every CPU of the machine (one
    slice per thread): the same bits. Run in subprocesses on the CPU backend (the thread pool
    is sized when JAX starts)."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs CPU affinity control and at least 2 CPUs")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    results = {}
    for cpus in ("1", "all"):
        path = tmp_path / f"{cpus}.npz"
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(path), cpus, str(Path(__file__).parent)],
            cwd=tmp_path,  # outside the repository: the installed package is imported
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results[cpus] = dict(np.load(path))
    assert results["1"].keys() == results["all"].keys() and len(results["1"]) == 3 * 8
    for key, bits in results["1"].items():
        assert np.array_equal(bits, results["all"][key]), f"problem/output {key} differs"
