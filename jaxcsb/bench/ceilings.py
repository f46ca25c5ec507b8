"""The machine's ceilings, measured in the same run and harness as the products: device copy
bandwidth and dense GEMM throughput (float32 at precision="highest", float32 at the default
precision (TF32 on recent NVIDIA GPUs), bfloat16)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from . import timing
from .peers import Prepared

# (copy elements, GEMM side) per backend: big enough to leave caches and reach peak, small
# enough to take well under a second each.
SIZES = {"cpu": (16 * 2**20, 1024), "gpu": (256 * 2**20, 8192)}


def _prepared(fn, weight, dense) -> Prepared:
    return Prepared("jax", fn, weight, dense, None, 0, "float32")


def _measure(prep, method, budget_s):
    timer = timing.Timer(prep, method)
    timer.once()
    return timer.measure(timer.estimate(), target_s=0.05, budget_s=budget_s)


def _copy_program():
    """x <- x * c, carried through a loop: every element is read and written each iteration
    (a loop-carried value cannot be narrowed to the element the result reads)."""

    def run(x, c, outer):
        x = jax.lax.fori_loop(0, outer, lambda _, x: x * c, x)
        return x[0]

    return jax.jit(run)


def _copy_gbps(x, budget_s):
    run, c = _copy_program(), jnp.float32(1.0)
    jax.block_until_ready(run(x, c, 1))  # compile
    times = {}
    for outer in (1, 11):  # the difference removes dispatch and the loop's start
        samples = []
        for _ in range(max(3, int(budget_s / 0.02))):
            t0 = time.perf_counter()
            jax.block_until_ready(run(x, c, outer))
            samples.append(time.perf_counter() - t0)
        times[outer] = statistics.median(samples)
    seconds = max(times[11] - times[1], 1e-9) / 10
    return seconds


def measure_ceilings(method="auto", budget_s=0.3) -> dict:
    """Returns {"copy_gbps", "gemm_<variant>_tflops", ...} with the sizes used."""
    n_copy, side = SIZES.get(jax.default_backend(), SIZES["gpu"])
    key = jax.random.key(0)
    x = jax.random.normal(key, (n_copy,), jnp.float32)
    seconds = _copy_gbps(x, budget_s)
    out = {
        "copy_bytes": 4 * n_copy,
        "copy_ms": seconds * 1e3,
        "copy_gbps": 2 * 4 * n_copy / seconds / 1e9,  # read + write
        "gemm_side": side,
    }
    del x
    a = jax.random.normal(key, (side, side), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (side, side), jnp.float32)
    variants = {
        "fp32_highest": (jnp.float32, "highest"),
        "fp32_default": (jnp.float32, None),
        "bf16": (jnp.bfloat16, None),
    }
    for name, (dtype, precision) in variants.items():
        prep = _prepared(
            lambda w, x, precision=precision: jnp.matmul(x, w, precision=precision),
            b.astype(dtype),
            (a.astype(dtype),),
        )
        t = _measure(prep, method, budget_s)
        out[f"gemm_{name}_ms"] = t.ms
        out[f"gemm_{name}_tflops"] = 2 * side**3 / (t.ms * 1e-3) / 1e12
    return out
