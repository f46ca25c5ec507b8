"""Resources: many jitted calls, eager calls and rebuilds of a matrix leave host memory flat
(and device memory, where the backend reports it). Tiny matrices keep this fast: what is
measured is what each call or build leaves behind, not the size of its arrays."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest
from helpers import SHAPE, random_dense, random_mask, seed_of, standard_csb

import jaxcsb
from jaxcsb import _validate

F32 = np.dtype(np.float32)
# Growth allowed after warm-up: a leak of 5 KB per jitted call (or 50 KB per rebuild) would
# exceed it; allocator noise and caches that fill once stay far below.
GROWTH_MB = 50


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def grow(loop, warmup, count) -> float:
    """MB of resident memory that ``count`` more iterations add after ``warmup`` of them."""
    loop(warmup)
    before = rss_mb()
    loop(count)
    return rss_mb() - before


def product_and_grads(A, x):
    def loss(values, x):
        return jnp.sum(jnp.sin(A.with_values(values) @ x) * 1.5)

    return jax.value_and_grad(loss, argnums=(0, 1))(A.values, x)


def test_10000_jitted_calls_leave_host_memory_flat():
    """Forward product, its transposed product and SDDMM (through the gradient) per call."""
    A, _ = standard_csb(F32, seed_of("resources jit"))
    x = jax.device_put(random_dense((SHAPE[1], 8), F32, seed_of("resources x")))
    f = jax.jit(product_and_grads)

    def loop(count):
        for _ in range(count):
            out = f(A, x)
        jax.block_until_ready(out)

    growth = grow(loop, 500, 10_000)
    assert growth < GROWTH_MB, f"{growth:.1f} MB after 10,000 jitted calls"


def test_1000_rebuilds_and_eager_products_leave_host_memory_flat():
    """Each iteration builds a new matrix (new values, pattern and arrays), validates it on its
    first product and multiplies eagerly: nothing may accumulate, including the record of
    validated arrays (it is bounded)."""
    mask = random_mask(SHAPE, 0.3, seed_of("resources mask"))
    x = jax.device_put(random_dense((SHAPE[1], 4), F32, seed_of("resources rebuild x")))
    rng = np.random.default_rng(seed_of("resources rebuild"))

    def loop(count):
        for _ in range(count):
            w = rng.standard_normal(SHAPE).astype(F32)
            A = jaxcsb.CSB.fromdense(w, mask, block_size=16)
            out = A @ x
        jax.block_until_ready(out)

    growth = grow(loop, 100, 1_000)
    assert growth < GROWTH_MB, f"{growth:.1f} MB after 1,000 rebuilds"
    assert len(_validate._checked._entries) <= _validate._checked._capacity


def _device_bytes():
    stats = jax.devices()[0].memory_stats()
    if not stats or "bytes_in_use" not in stats:
        return None
    return stats["bytes_in_use"]


@pytest.mark.skipif(
    _device_bytes() is None,
    reason=f"backend {jax.default_backend()!r} reports no memory statistics (memory_stats() "
    "is None on the CPU); host memory is measured above",
)
def test_device_memory_is_flat_over_calls_and_rebuilds():
    A, _ = standard_csb(F32, seed_of("resources device"))
    x = jax.device_put(random_dense((SHAPE[1], 8), F32, seed_of("resources device x")))
    f = jax.jit(product_and_grads)
    mask = random_mask(SHAPE, 0.3, seed_of("resources device mask"))
    jax.block_until_ready(f(A, x))
    jax.block_until_ready(jaxcsb.CSB.fromdense(np.ones(SHAPE, F32), mask) @ x)
    before = _device_bytes()
    for i in range(2_000):
        out = f(A, x)
        if i % 10 == 0:
            B = jaxcsb.CSB.fromdense(np.full(SHAPE, i, F32), mask, block_size=16)
            out = (out, B @ x)
    jax.block_until_ready(out)
    del out, B
    gc.collect()
    growth = _device_bytes() - before
    assert growth < 1 << 20, f"{growth} bytes of device memory left after 2,000 calls"
