"""The loop timing's trip-count calibration, on a fake loop whose calls cost known times on a
fake clock: no device and no compilation, so the numbers are exact and the tests fast."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

from jaxcsb.bench import runner, timing

PRODUCT_S = 100e-6  # one product: a DLMC layer on an H100
TARGET_S = 0.01  # the GPU default --target
CAP = 4096 // timing.UNROLL  # the trip count at the default --max-inner, one copy


class _Clock:
    """Stands in for the time module in timing: only the fake loop's calls advance it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(timing, "time", c)
    return c


class _FakeLoop(timing._JaxLoop):
    """A loop whose calls advance the clock by ``dispatch_s`` plus ``slot_s`` per product slot
    (both programs: the loop's own cost) plus ``product_s`` per product (the product program
    only). ``first_loop_s`` {product program?: seconds} is added to a program's first call
    that runs the loop body (a first-run cost, e.g. loading the body's kernels on their
    first launch); ``extra`` adds seconds to the first calls, in call order (noise)."""

    def __init__(
        self, clock, product_s=PRODUCT_S, extra=(), first_loop_s=(), slot_s=4.6e-6, dispatch_s=50e-6
    ):
        self.clock, self.product_s, self.extra = clock, product_s, list(extra)
        self.first_loop_s = dict(first_loop_s)
        self.slot_s, self.dispatch_s = slot_s, dispatch_s
        self.copies, self.weights, self.program = 1, ["w"], "product"
        self._calibrated = {}
        self.calls = []  # (the product program?, outer), in call order

    def _call(self, program, weights, outer):
        with_product = program is self.program
        per_slot = self.slot_s + (self.product_s if with_product else 0.0)
        self.clock.now += self.dispatch_s + (1 + outer * timing.UNROLL) * per_slot
        self.clock.now += self.extra.pop(0) if self.extra else 0.0
        if outer > 0:
            self.clock.now += self.first_loop_s.pop(with_product, 0.0)
        self.calls.append((with_product, outer))
        return None, None

    def trip_count(self, start):
        return timing._trip_count(
            functools.partial(self._pair, "empty", [None]), start, CAP, timing.UNROLL, TARGET_S
        )

    def product_outers(self):
        return [outer for with_product, outer in self.calls if with_product]


def _products(outer):
    return 1 + outer * timing.UNROLL


def test_difference_lost_in_noise_doubles_instead_of_jumping_to_the_cap(clock):
    # The first reading's empty program is slowed by exactly the products' time: the
    # difference is zero, which the old rule scaled from and sent to the cap.
    loop = _FakeLoop(clock, extra=[0.0, _products(1) * PRODUCT_S])
    outer, _ = loop.trip_count(1)
    # Doubled, then scaled from a clean reading, which is taken again before it is kept.
    assert loop.product_outers() == [1, 2, 13, 13]
    assert 0.5 * TARGET_S <= _products(outer) * PRODUCT_S <= 2 * TARGET_S


def test_low_reading_grows_the_trip_count_at_most_eightfold(clock):
    # A positive but far too low first difference (5% of the products' time) says one
    # product takes 5 us: scaling from it alone would ask for 250 rounds, 20x the target.
    loop = _FakeLoop(clock, extra=[-0.95 * _products(1) * PRODUCT_S])
    outer, pair_s = loop.trip_count(1)
    assert loop.product_outers() == [1, timing.GROWTH, timing.GROWTH]
    assert outer == timing.GROWTH and _products(outer) * PRODUCT_S >= 0.5 * TARGET_S
    assert pair_s == pytest.approx(2 * 50e-6 + _products(outer) * (2 * 4.6e-6 + PRODUCT_S))


def test_stall_in_one_reading_does_not_stop_the_calibration(clock):
    # The first call with the products stalls for 20 ms (the machine, not the product): read
    # once, it looked long enough, and every repeat then timed 9 products.
    loop = _FakeLoop(clock, extra=[0.02])
    outer, _ = loop.trip_count(1)
    assert loop.product_outers() == [1, 1, 8, 8]  # taken again, then scaled as usual
    assert _products(outer) * PRODUCT_S >= 0.5 * TARGET_S


def test_stalls_in_both_readings_are_caught_by_the_repeats(clock):
    # The warm-up pair runs clean; then both readings of the calibration's first count stall
    # for 20 ms, so it stops at 9 products a call, which the repeats time in 0.9 ms: far below
    # what the calibration read. It calibrates again from twice the count, and times again.
    loop = _FakeLoop(clock, extra=[0.0, 0.0, 0.02, 0.0, 0.02])
    t = loop.measure(0.01, TARGET_S, 0.1, 4096)  # a start of 1
    outers = loop.product_outers()
    assert outers[:3] == [1, 1, 1]  # warm-up, the stalled reading, taken again
    assert 2 in outers and max(outers) == 13  # calibrated again from 2, scaled to the target
    assert t.inner == _products(13) and _products(13) * PRODUCT_S >= 0.5 * TARGET_S
    assert t.ms == pytest.approx(PRODUCT_S * 1e3)


def test_product_too_fast_for_the_target_stops_at_the_cap(clock):
    # 1 ns a product: every difference is below the noise floor, so the trip count doubles
    # up to the cap (and no further) within the step limit.
    loop = _FakeLoop(clock, product_s=1e-9)
    outer, _ = loop.trip_count(25)
    assert loop.product_outers() == [25, 50, 100, 200, 400, CAP]
    assert outer == CAP


def test_slow_first_run_is_warm_up_not_a_reading(clock):
    # The empty program's first loop takes 50 ms longer: read as the overhead, it made the
    # difference negative and the old rule jumped to the cap.
    loop = _FakeLoop(clock, first_loop_s={False: 0.05})
    est = loop.dispatch_s + PRODUCT_S  # one call at trip count 0
    t = loop.measure(est, TARGET_S, 0.1, 4096)
    assert t.inner == _products(8)  # the start (10 ms / 150 us / 8) already fills the target
    assert t.ms == pytest.approx(PRODUCT_S * 1e3)
    assert t.overhead_ms == pytest.approx((50e-6 / t.inner + 4.6e-6) * 1e3)
    assert t.method == "loop" and t.reps >= 3


def test_zero_difference_still_refuses_to_report(clock):
    # A product that costs nothing measurable is not timed by subtraction (Timer falls back
    # to back-to-back dispatch), and the calibration stops at the cap rather than beyond it.
    loop = _FakeLoop(clock, product_s=0.0)
    with pytest.raises(RuntimeError, match="not slower"):
        loop.measure(1e-4, TARGET_S, 0.1, 4096)
    assert max(loop.product_outers()) == CAP


def test_rounds_reuse_the_calibration(clock):
    # Through the runner, as a sweep times a case: three rounds, one calibration.
    loop = _FakeLoop(clock, first_loop_s={False: 0.05})  # as in the warm-up test
    timer = timing.Timer.__new__(timing.Timer)
    timer._impl = loop
    rec, prep = {}, SimpleNamespace(bytes=1)
    settings = runner.Settings(progress=False, rounds=3, target_s=TARGET_S, budget_s=0.1)
    runner.time_peers({"jaxcsb": (rec, (timer, prep))}, SimpleNamespace(useful_flops=1), settings)
    assert rec["status"] == "ok" and rec["rounds"] == 3
    # The estimate (2 calls at 0) gives a start of 8; the warm-up pair and the calibration
    # pairs run in the first round only, every repeat after them at the calibrated count.
    outers = loop.product_outers()
    calibration = outers[2:5]  # the warm-up pair, then a reading that is taken twice
    assert outers[:2] == [0, 0] and calibration == [8, 8, 8]
    assert set(outers[5:]) == {8} and len(outers[5:]) == rec["reps"]
    assert rec["inner"] == _products(8) and rec["ms"] == pytest.approx(PRODUCT_S * 1e3)
