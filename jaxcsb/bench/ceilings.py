"""The machine's ceilings, measured in the same run and harness as the products: device copy
bandwidth and dense GEMM throughput (float32 at precision="highest", float32 at the default
precision (TF32 on recent NVIDIA GPUs), bfloat16)."""

from __future__ import annotations

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
    est = timing.estimate(prep)
    return timing.measure(prep, est, method=method, target_s=0.05, budget_s=budget_s)


def measure_ceilings(method="auto", budget_s=0.3) -> dict:
    """Returns {"copy_gbps", "gemm_<variant>_tflops", ...} with the sizes used."""
    n_copy, side = SIZES.get(jax.default_backend(), SIZES["gpu"])
    key = jax.random.key(0)
    x = jax.random.normal(key, (n_copy,), jnp.float32)
    copy = _prepared(lambda w, x: x * 1.5, None, (x,))
    t = _measure(copy, method, budget_s)
    out = {
        "copy_bytes": 4 * n_copy,
        "copy_ms": t.ms,
        "copy_gbps": 2 * 4 * n_copy / (t.ms * 1e-3) / 1e9,  # read + write
        "gemm_side": side,
    }
    del x, copy
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
