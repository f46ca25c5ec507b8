"""The benchmark's correctness gate: a wrong result is reported as a failure and not timed."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcsb.bench import matrices, peers, products, runner


def _problem(product="spmm", dtype="float32"):
    m = matrices.synthetic("uniform", (40, 24), 0.8, seed=1)
    p = products.make_problem(m, 7, products.DTYPES[dtype], product, seed=2)
    products.attach_reference(p)
    return p


class _WrongPeer(peers.Peer):
    """XLA dense with the result scaled by 1 + 1e-2: far outside the float32 tolerance."""

    name, short, label = "wrong", "wrong", "a deliberately wrong peer"

    def prepare(self, p, memo):
        prep = peers.PEERS["xla_dense_highest"].prepare(p, memo)
        fn = prep.fn
        prep.fn = lambda w, *d: fn(w, *d) * 1.01
        return prep


@pytest.mark.parametrize("product", products.PRODUCTS)
def test_reference_matches_float64_dense(product):
    p = _problem(product)
    m = p.matrix
    w = m.dense(np.float64, p.values.astype(np.float64))
    ops = [o.astype(np.float64) for o in p.operands]
    expected = {
        "spmm": lambda: w @ ops[0],
        "spmm_t": lambda: w.T @ ops[0],
        "xw_t": lambda: ops[0] @ w.T,
        "xw": lambda: ops[0] @ w,
        "sddmm": lambda: (ops[0] @ ops[1])[m.row, m.col],
    }[product]()
    np.testing.assert_allclose(p.reference, expected, rtol=1e-12, atol=1e-12)


def test_failed_check_is_reported_and_not_timed():
    rec = runner.run_peer(_WrongPeer(), _problem(), {}, runner.Settings(progress=False), 0)
    assert rec["status"] == "fail"
    assert rec["rel_err"] == pytest.approx(1e-2, rel=1e-3)
    assert "ms" not in rec and "relative error" in rec["reason"]


def test_correct_peer_is_checked_then_timed():
    settings = runner.Settings(progress=False, budget_s=0.001)
    rec = runner.run_peer(peers.PEERS["jaxcsb"], _problem(), {}, settings, 0)
    assert rec["status"] == "ok" and rec["rel_err"] <= 1e-4
    assert rec["ms"] > 0 and rec["reps"] >= 3


def test_missing_product_is_not_applicable():
    rec = runner.run_peer(peers.PEERS["bcsr"], _problem("spmm_t"), {}, runner.Settings(), 0)
    assert rec["status"] == "n/a" and "transpose" in rec["reason"]


def test_relative_error_rejects_wrong_shape_and_nan():
    ref = np.ones((3, 2))
    assert products.relative_error(np.ones((2, 3)), ref) == float("inf")
    assert products.relative_error(np.full((3, 2), np.nan), ref) == float("inf")
    assert products.relative_error(ref * 1.5, ref) == pytest.approx(0.5)


class _RecordingTimer:
    """Stands in for timing.Timer: each measure() returns a fixed time and logs its peer."""

    def __init__(self, name, ms, log):
        self.name, self.ms, self.log = name, ms, log

    def estimate(self):
        return 1e-3

    def measure(self, est, *, target_s, budget_s, max_inner):
        self.log.append(self.name)
        self.ms.rotate(-1)
        from jaxcsb.bench.timing import Timing

        return Timing(self.ms[0], 3, 1, 1, "calls", min_ms=self.ms[0] / 2)


def test_peers_are_timed_in_rounds_that_take_turns():
    from collections import deque

    problem, log, settings = _problem(), [], runner.Settings(progress=False, rounds=3)
    prep = peers.PEERS["jaxcsb"].prepare(problem, {})
    checked = {
        "a": ({}, (_RecordingTimer("a", deque([1.0, 2.0, 9.0]), log), prep)),
        "b": ({}, (_RecordingTimer("b", deque([4.0, 4.0, 4.0]), log), prep)),
    }
    runner.time_peers(checked, problem, settings)
    assert log == ["a", "b", "a", "b", "a", "b"]
    a, b = checked["a"][0], checked["b"][0]
    # Rounds gave a 2, 9, 1 (rotated): the median of the rounds' medians, the fastest repeat.
    assert a["status"] == "ok" and a["ms"] == 2.0 and a["min_ms"] == 0.5
    assert a["rounds"] == 3 and a["reps"] == 9
    assert b["ms"] == 4.0
