"""Timing one prepared call: warm-up excluded, median of repeats.

Three methods (docs/benchmarks.md explains the choice):

* ``loop`` (JAX, default on accelerators): one jitted function computes the product once
  (the output the correctness check reads) and then ``outer`` x ``UNROLL`` more times inside a
  ``lax.fori_loop`` whose trip count is a run-time argument, so the same compiled program
  serves the check, the estimate and every repeat. After each product one element of its
  output is fed back into element [0, 0] of the first dense operand (``x[0, 0] += eps *
  out[idx]``, ``eps = 0`` and ``idx = 0`` given at run time): XLA can neither hoist the
  product out of the loop nor merge two of them, and the extra work is two one-element ops.
  The same program without the product (cached per operand shapes, shared by the peers) runs
  interleaved with it and is subtracted: what remains is the products' time, free of dispatch
  and loop overhead. Each iteration may cycle through ``copies`` separate copies of the stored
  matrix, so that they do not stay resident in the L2 cache. The trip count is calibrated
  once per timer (``_trip_count``) and reused by every round; again, once, where the first
  repeats take far less than the calibration read.
* ``calls`` (JAX, default on CPUs): each repeat is one call followed by
  ``block_until_ready``; CPU products take milliseconds, so dispatch is noise.
* ``dispatch`` (JAX, the fallback when the loop program fails): ``inner`` calls queued back to
  back and waited for once, divided by ``inner``.
* ``events`` (torch, CUDA): CUDA events around ``inner`` back-to-back calls; ``host``
  (scipy): wall clock around single calls.
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

UNROLL = 8  # products per loop iteration: amortises the loop condition's round trip

# Trip-count calibration (_trip_count). One pair of calls is a noisy measurement, and a step
# scaled from a difference near zero would jump to --max-inner (0.3-1.7 s a call on GPUs,
# where 10 ms was asked for): no step grows the trip count more than GROWTH times, and a
# difference below NOISE x the empty program's time is only read as "too short".
GROWTH = 8
NOISE = 0.1
STEPS = 10  # pairs at most: 3 steps of GROWTH span 1 to the default cap, the rest allow doubling


@dataclass
class Timing:
    ms: float  # median time of one product
    reps: int  # timed repeats (the median is over these)
    inner: int  # products per repeat (all copies together)
    copies: int  # copies of the stored matrix cycled through (1: warm cache)
    method: str
    overhead_ms: float = 0.0  # per product, measured without the product and subtracted
    spread: float = 0.0  # (75th - 25th percentile) / median of the repeats
    fallback: str | None = None  # why a simpler method was used than the one asked for
    min_ms: float = 0.0  # the fastest repeat: the uncontended time on a shared machine


def _clamp(x, lo, hi):
    return int(min(hi, max(lo, x)))


def _spread(times) -> float:
    if len(times) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    med = statistics.median(times)
    return (q3 - q1) / med if med > 0 else math.inf


def _wall(f) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


# --- JAX: the loop program --------------------------------------------------------------------


def _pick(out, idx):
    # The barrier keeps XLA from narrowing the product to the one element read here (it
    # would otherwise rewrite a slice of a dot into a dot of slices).
    flat = jax.lax.optimization_barrier(out).reshape(-1)
    return jax.lax.dynamic_index_in_dim(flat, idx, keepdims=False).astype(jnp.float32)


def _feed(dense, s, eps, idx):
    """dense[0][0, ..., 0] += eps * s: the dependency of the next product on this one. A
    one-element scatter-add: XLA updates the loop-carried buffer in place (a dynamic slice
    read followed by a dynamic-update-slice made it copy the whole operand each product)."""
    first = dense[0]
    first = first.at[(idx,) * first.ndim].add((eps * s).astype(first.dtype))
    return (first, *dense[1:])


def _program(fn):
    """jit(weights, dense, eps, idx, outer) -> (first output or None, scalar): one product,
    then outer x UNROLL rounds over all weights, each round feeding the next."""

    def run(weights, dense, eps, idx, outer):
        dense = tuple(dense)
        first = fn(weights[0], *dense)
        dense = _feed(dense, _pick(first, idx), eps, idx)

        def body(_, d):
            for _ in range(UNROLL):
                s = sum(_pick(fn(w, *d), idx) for w in weights)
                d = _feed(d, s, eps, idx)
            return d

        dense = jax.lax.fori_loop(0, outer, body, dense)
        return (None if fn is _no_product else first), dense[0].reshape(-1)[0]

    return jax.jit(run)


def _no_product(w, *dense):
    # Not derived from the loop-carried operand: reading it here would make XLA copy it
    # before each in-place update, which the product programs do not do.
    return jnp.zeros((1,), dense[0].dtype)


@functools.cache
def _empty_program():
    return _program(_no_product)


def _copy_tree(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _trip_count(pair, outer, cap, per_round, target_s) -> tuple[int, float]:
    """The trip count whose products (``1 + outer * per_round`` a call) take about
    ``target_s`` (at least half; fewer only at ``cap`` or after STEPS pairs), and the seconds
    of one pair of calls at it, for sizing the repeats. ``pair(outer)`` runs the warm product
    and empty programs and returns their wall times.

    A reading long enough to stop at is taken again, and the shorter of the two counts: a
    stall during one call (the machine, not the product) only ever lengthens a reading, and
    one such reading at a low trip count once left every repeat timing 9 products of 40 us
    each, with the dispatch noise of a call for each of them (a ratio off by 4x)."""
    for step in range(1, STEPS + 1):
        final = outer == cap or step == STEPS
        total, bare = pair(outer)
        if total - bare >= 0.5 * target_s and not final:
            total, bare = min(
                (total, bare), pair(outer), key=lambda reading: reading[0] - reading[1]
            )
        diff = total - bare
        if diff >= 0.5 * target_s or final:
            break
        if diff > NOISE * bare:
            per_product = diff / (1 + outer * per_round)
            want = math.ceil(target_s / (per_product * per_round))
        else:
            want = 2 * outer  # lost in the noise: all it says is that the call was short
        # At least double, so that a low reading cannot stall the calibration.
        outer = _clamp(want, 2 * outer, min(GROWTH * outer, cap))
    return outer, total + bare


class _JaxLoop:
    def __init__(self, prep: Prepared, copies: int):
        self.prep = prep
        self.weights = [prep.weight] + [_copy_tree(prep.weight) for _ in range(copies - 1)]
        self.dense = prep.dense
        self.copies = copies
        self.scalars = (jnp.asarray(np.float32(0)), jnp.asarray(np.int32(0)))  # eps, idx
        self.program = _program(prep.fn)
        self._calibrated = {}  # (target_s, max_inner) -> (trip count, seconds of one pair)

    def _call(self, program, weights, outer):
        outer = jnp.asarray(np.int32(outer))
        return jax.block_until_ready(program(weights, self.dense, *self.scalars, outer))

    def once(self):
        return self._call(self.program, self.weights, 0)[0]

    def _pair(self, empty, none, outer) -> tuple[float, float]:
        total, _ = _wall(lambda: self._call(self.program, self.weights, outer))
        bare, _ = _wall(lambda: self._call(empty, none, outer))
        return total, bare

    @staticmethod
    def _repeats(pair, outer, pair_s, budget_s) -> tuple[list[float], list[float]]:
        """The differences and the empty program's times of the timed pairs at trip count
        ``outer``, as many as ``budget_s`` allows for pairs of ``pair_s`` seconds (3 to 30)."""
        diffs, empties = [], []
        for _ in range(_clamp(budget_s / max(pair_s, 1e-6), 3, 30)):
            total, bare = pair(outer)
            diffs.append(total - bare)
            empties.append(bare)
        return diffs, empties

    def measure(self, est, target_s, budget_s, max_inner) -> Timing:
        empty, none = _empty_program(), [None] * self.copies
        pair = functools.partial(self._pair, empty, none)
        # Calibrated in the first round only: the later rounds time the same programs on the
        # same operands, and recalibrating would repeat the cost (and the risk) each round.
        key = (target_s, max_inner)
        per_round = UNROLL * self.copies
        cap = max(1, max_inner // per_round)
        if key not in self._calibrated:
            # One call costs dispatch and the operand copy besides the product, so the
            # single-call estimate makes a start that is too small rather than too large.
            start = _clamp(target_s / (est * per_round), 1, cap)
            # Untimed: the first run of a loop (and the empty program's compilation, shared
            # across peers) must not be read as the products' time or as its absence.
            pair(start)
            self._calibrated[key] = _trip_count(pair, start, cap, per_round, target_s)
        outer, pair_s = self._calibrated[key]
        diffs, empties = self._repeats(pair, outer, pair_s, budget_s)
        if statistics.median(diffs) < 0.25 * target_s and outer < cap:
            # The repeats took far less than the calibration read: stalls lengthened both of
            # its readings (a 28 us product once timed 33 to a call, its repeats spread by
            # 1.5x and the fastest read 0). Calibrated again from twice the count, once.
            start = min(2 * outer, cap)
            outer, pair_s = self._calibrated[key] = _trip_count(
                pair, start, cap, per_round, target_s
            )
            diffs, empties = self._repeats(pair, outer, pair_s, budget_s)
        products = 1 + outer * per_round
        diff = statistics.median(diffs)
        if diff <= 0:
            raise RuntimeError(
                f"the loop with the products was not slower than without them "
                f"({statistics.median(empties) * 1e3:.3g} ms): below the timing noise"
            )
        return Timing(
            diff / products * 1e3,
            len(diffs),
            products,
            self.copies,
            "loop",
            statistics.median(empties) / products * 1e3,
            _spread(diffs),
            min_ms=max(min(diffs), 0.0) / products * 1e3,
        )


# --- single calls (JAX on CPUs, host peers) and torch events ------------------------------


class _Calls:
    def __init__(self, prep: Prepared):
        self.prep = prep
        self.jitted = jax.jit(prep.fn) if prep.kind == "jax" else None

    def once(self):
        p = self.prep
        if self.jitted is not None:
            return jax.block_until_ready(self.jitted(p.weight, *p.dense))
        return p.fn(p.weight, *p.dense)

    def measure(self, est, target_s, budget_s, max_inner) -> Timing:
        reps = _clamp(budget_s / est, 3, 200)
        times = [_wall(self.once)[0] for _ in range(reps)]
        method = "calls" if self.jitted is not None else "host"
        return Timing(
            statistics.median(times) * 1e3,
            reps,
            1,
            1,
            method,
            0.0,
            _spread(times),
            min_ms=min(times) * 1e3,
        )

    def measure_dispatch(self, est, target_s, budget_s, max_inner) -> Timing:
        """``inner`` calls dispatched back to back, waited for once: the device runs them
        one after the other while the host queues the next (per-call host overhead hides
        behind device time unless the product is shorter than a dispatch)."""
        p, f = self.prep, self.jitted
        inner = _clamp(target_s / est, 1, max_inner)
        reps = _clamp(budget_s / (inner * est), 3, 30)

        def run():
            out = None
            for _ in range(inner):
                out = f(p.weight, *p.dense)
            return jax.block_until_ready(out)  # one stream: the last done means all done

        run()
        times = [_wall(run)[0] / inner for _ in range(reps)]
        return Timing(
            statistics.median(times) * 1e3, reps, inner, 1, "dispatch", 0.0, _spread(times)
        )


class _TorchEvents:
    def __init__(self, prep: Prepared, copies: int):
        import torch

        self.torch, self.prep = torch, prep
        self.weights = [prep.weight] + [prep.weight.clone() for _ in range(copies - 1)]

    def once(self):
        out = self.prep.fn(self.prep.weight, *self.prep.dense)
        self.torch.cuda.synchronize()
        return out

    def measure(self, est, target_s, budget_s, max_inner) -> Timing:
        torch, fn, dense = self.torch, self.prep.fn, self.prep.dense
        copies = len(self.weights)
        inner = _clamp(target_s / (est * copies), 1, max(1, max_inner // copies))
        reps = _clamp(budget_s / (inner * copies * est), 3, 30)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for rep in range(reps + 1):
            start.record()
            for _ in range(inner):
                for w in self.weights:
                    fn(w, *dense)
            end.record()
            end.synchronize()
            if rep:  # the first repeat warms up the copies
                times.append(start.elapsed_time(end) / 1e3)
        ms = statistics.median(times) / (inner * copies) * 1e3
        return Timing(
            ms,
            reps,
            inner * copies,
            copies,
            "events",
            0.0,
            _spread(times),
            min_ms=min(times) / (inner * copies) * 1e3,
        )


class Timer:
    """Runs and times one prepared call: ``once()`` (the output, for the check; compiles),
    ``estimate()`` (seconds of one warm call, dispatch included) and ``measure()``."""

    def __init__(self, prep: Prepared, method: str = "auto", copies: int = 1):
        if method not in ("auto", "loop", "calls"):
            raise ValueError(f"timing method must be 'auto', 'loop' or 'calls', got {method!r}")
        if method == "auto":
            method = "calls" if jax.default_backend() == "cpu" else "loop"
        if prep.kind == "torch":
            self._impl = _TorchEvents(prep, copies)
        elif prep.kind == "jax" and method == "loop":
            self._impl = _JaxLoop(prep, copies)
        else:
            self._impl = _Calls(prep)

    def once(self):
        return self._impl.once()

    def estimate(self, runs: int = 2) -> float:
        return max(1e-7, min(_wall(self.once)[0] for _ in range(runs)))

    def measure(self, est, *, target_s=0.01, budget_s=0.2, max_inner=4096) -> Timing:
        """``target_s``: the length one repeat aims for; ``budget_s``: roughly the time all
        repeats together may take (at least 3 run).

        If the loop program fails where the single call worked (e.g. a custom call that cannot
        be captured into a CUDA graph, which XLA does with loop bodies), back-to-back
        dispatches are timed instead and ``Timing.fallback`` says why."""
        try:
            return self._impl.measure(est, target_s, budget_s, max_inner)
        except Exception as e:
            if not isinstance(self._impl, _JaxLoop):
                raise
            calls = _Calls(self._impl.prep)
            calls.once()
            t = calls.measure_dispatch(est, target_s, budget_s, max_inner)
            t.fallback = f"loop timing failed ({type(e).__name__}: {str(e)[:300]})"
            return t


def copies_for(cold_bytes: int, bytes_per_call: int, limit: int = 8) -> int:
    """How many copies of the stored matrix to cycle through so that one pass over them
    moves at least ``cold_bytes`` (0: one copy, warm cache)."""
    if cold_bytes <= 0:
        return 1
    return _clamp(math.ceil(cold_bytes / max(1, bytes_per_call)), 1, limit)
