"""Timing one prepared call: warm-up excluded, median of repeats.

Three methods (docs/benchmarks.md explains the choice):

* ``loop`` (JAX, default on accelerators): ``inner`` products run inside one jitted
  ``lax.fori_loop``. Each iteration feeds one element of its output back into element [0, 0]
  of the first dense operand (``x[0, 0] += eps * out[idx]`` with ``eps = 0`` and ``idx = 0``
  passed at run time), so XLA can neither hoist the product out of the loop nor merge the
  iterations, and the extra work is two one-element ops. The same loop without the product
  is timed too and subtracted: the result is the time of the product alone, free of dispatch
  and loop overhead. Optionally each iteration runs the product on ``copies`` separate copies
  of the stored matrix, so that the matrices do not stay resident in the L2 cache.
* ``calls`` (JAX, default on CPUs, and the host peers): each repeat is one dispatched call
  followed by ``block_until_ready``; CPU products take milliseconds, so dispatch is noise.
* ``events`` (torch): CUDA events around ``inner`` back-to-back calls.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .peers import Prepared


@dataclass
class Timing:
    ms: float  # median time of one product
    reps: int  # timed repeats (the median is over these)
    inner: int  # products per repeat (loop iterations or back-to-back calls), per copy
    copies: int  # copies of the stored matrix rotated through (1: warm cache)
    method: str
    overhead_ms: float = 0.0  # per product, measured without the product and subtracted
    spread: float = 0.0  # (75th - 25th percentile) / median of the repeats


def _torch():
    import torch

    return torch


def _jitted(prep: Prepared):
    if getattr(prep, "_jit", None) is None:
        prep._jit = jax.jit(prep.fn)
    return prep._jit


def run_once(prep: Prepared):
    """One call, finished (for jax and torch, waited for on the device)."""
    if prep.kind == "jax":
        return jax.block_until_ready(_jitted(prep)(prep.weight, *prep.dense))
    out = prep.fn(prep.weight, *prep.dense)
    if prep.kind == "torch":
        _torch().cuda.synchronize()
    return out


def estimate(prep: Prepared, runs: int = 2) -> float:
    """Seconds of one warm call including dispatch (the fastest of ``runs``); also warms up."""
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        run_once(prep)
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-7)


def _spread(times) -> float:
    if len(times) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / statistics.median(times)


def _clamp(x, lo, hi):
    return int(min(hi, max(lo, x)))


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


# --- JAX ------------------------------------------------------------------------------------


def _copy_tree(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _loop(fn, inner):
    """A jitted function running ``inner`` iterations of ``fn`` on each weight, chained."""

    def run(weights, dense, eps, idx):
        def body(_, d):
            s = jnp.zeros((), jnp.float32)
            for w in weights:
                flat = fn(w, *d).reshape(-1)
                s = s + jax.lax.dynamic_index_in_dim(flat, idx, keepdims=False).astype(s.dtype)
            first = d[0]
            start = (idx,) * first.ndim
            cur = jax.lax.dynamic_slice(first, start, (1,) * first.ndim)
            first = jax.lax.dynamic_update_slice(first, cur + (eps * s).astype(cur.dtype), start)
            return (first, *d[1:])

        out = jax.lax.fori_loop(0, inner, body, tuple(dense))
        return out[0].reshape(-1)[0]

    return jax.jit(run)


def _no_product(w, *dense):
    return dense[0]


@functools.lru_cache(maxsize=64)
def _empty_loop(inner):
    return _loop(_no_product, inner)


def _median_time(f, args, reps):
    jax.block_until_ready(f(*args))  # compile and warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _time_loop(prep, est, target_s, budget_s, max_inner, copies) -> Timing:
    inner = _pow2_floor(_clamp(target_s / (est * copies), 1, max_inner))
    reps = _clamp(budget_s / (inner * copies * est), 3, 30)
    weights = [prep.weight] + [_copy_tree(prep.weight) for _ in range(copies - 1)]
    scalars = (jnp.asarray(np.float32(0)), jnp.asarray(np.int32(0)))  # eps, idx
    total, times = _median_time(_loop(prep.fn, inner), (weights, prep.dense, *scalars), reps)
    empty, _ = _median_time(_empty_loop(inner), ([None] * copies, prep.dense, *scalars), reps)
    per = inner * copies
    ms = max(total - empty, 1e-9) / per * 1e3
    return Timing(ms, reps, inner, copies, "loop", empty / per * 1e3, _spread(times))


def _time_calls(prep, est, budget_s) -> Timing:
    reps = _clamp(budget_s / est, 3, 200)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run_once(prep)
        times.append(time.perf_counter() - t0)
    method = "calls" if prep.kind == "jax" else "host"
    return Timing(statistics.median(times) * 1e3, reps, 1, 1, method, 0.0, _spread(times))


# --- torch ----------------------------------------------------------------------------------


def _time_events(prep, est, target_s, budget_s, max_inner, copies) -> Timing:
    torch = _torch()
    inner = _clamp(target_s / (est * copies), 1, max_inner)
    reps = _clamp(budget_s / (inner * copies * est), 3, 30)
    weights = [prep.weight] + [prep.weight.clone() for _ in range(copies - 1)]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for rep in range(reps + 1):
        start.record()
        for _ in range(inner):
            for w in weights:
                prep.fn(w, *prep.dense)
        end.record()
        end.synchronize()
        if rep:  # the first repeat warms up the copies
            times.append(start.elapsed_time(end) / 1e3)
    ms = statistics.median(times) / (inner * copies) * 1e3
    return Timing(ms, reps, inner, copies, "events", 0.0, _spread(times))


def measure(
    prep: Prepared,
    est: float,
    *,
    method: str = "auto",
    target_s: float = 0.01,
    budget_s: float = 0.2,
    max_inner: int = 256,
    copies: int = 1,
) -> Timing:
    """Times ``prep`` (already checked and warmed up; ``est`` from :func:`estimate`).

    ``target_s``: the length one loop or event-timed repeat aims for; ``budget_s``: roughly
    the time all repeats together may take (at least 3 repeats run)."""
    if prep.kind == "torch":
        return _time_events(prep, est, target_s, budget_s, max_inner, copies)
    if prep.kind == "host":
        return _time_calls(prep, est, budget_s)
    if method == "auto":
        method = "calls" if jax.default_backend() == "cpu" else "loop"
    if method == "loop":
        return _time_loop(prep, est, target_s, budget_s, max_inner, copies)
    if method == "calls":
        return _time_calls(prep, est, budget_s)
    raise ValueError(f"timing method must be 'auto', 'loop' or 'calls', got {method!r}")


def copies_for(cold_bytes: int, bytes_per_call: int, limit: int = 8) -> int:
    """How many copies of the stored matrix to rotate through so that one pass over them
    moves at least ``cold_bytes`` (0: one copy, warm cache)."""
    if cold_bytes <= 0:
        return 1
    return _clamp(math.ceil(cold_bytes / max(1, bytes_per_call)), 1, limit)
