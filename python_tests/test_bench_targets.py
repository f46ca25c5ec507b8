"""The benchmark's targets: which records a target selects, what it measures on them, the
verdict; and that every preset's targets can select cases its groups run."""

from __future__ import annotations

import math

import pytest

from jaxcsb.bench import report, runner
from jaxcsb.bench.presets import PRESETS
from jaxcsb.bench.products import TRANSPOSED_OF
from jaxcsb.bench.targets import TARGETS, Target, evaluate


def _rec(product="spmm", *, group="g", matrix="m", sparsity=0.9, n=2048, dtype="float32", **ms):
    """One record whose peers ran in ``ms`` milliseconds (a value None: the peer was n/a);
    jaxcsb is ``ms["jaxcsb"]`` (default 1.0)."""
    ms = {"jaxcsb": 1.0, **ms}
    peers = {}
    for name, t in ms.items():
        if t is None:
            peers[name] = {"status": "n/a", "reason": "no such product"}
        else:
            peers[name] = {"status": "ok", "ms": t, "tflops": 10.0 / t, "gbps": 1000.0 / t}
    rec = {
        "group": group,
        "matrix": matrix,
        "sparsity": sparsity,
        "n": n,
        "dtype": dtype,
        "product": product,
        "peers": peers,
    }
    runner._speedups(rec)
    return rec


def _one(target, records, ceilings=None):
    (entry,) = evaluate([target], records, ceilings)
    return entry


def test_sparsity_filter_matches_the_drawn_sparsity_within_tolerance():
    # A drawn matrix's sparsity is near the one asked for; the two sparsities are judged apart.
    records = [
        _rec(sparsity=0.7996, xla_dense=2.5),
        _rec(sparsity=0.8031, xla_dense=2.1),
        _rec(sparsity=0.9002, xla_dense=3.5),
        _rec(sparsity=0.8990, xla_dense=3.2),
    ]
    at80 = _one(Target("80%", {"sparsity": 0.8}, "speedup:xla_dense", "min", ">=", 2.0), records)
    at90 = _one(Target("90%", {"sparsity": 0.9}, "speedup:xla_dense", "min", ">=", 3.0), records)
    assert at80["cases"] == 2 and at80["value"] == pytest.approx(2.1)
    assert at90["cases"] == 2 and at90["value"] == pytest.approx(3.2)
    assert at80["verdict"] == at90["verdict"] == "pass"
    # The same records fail the stricter threshold at 80%: the filter, not the threshold,
    # kept the 90% cases out.
    strict = _one(Target("80%", {"sparsity": 0.8}, "speedup:xla_dense", "min", ">=", 3.0), records)
    assert strict["verdict"] == "fail"
    both = _one(
        Target("both", {"sparsity": (0.8, 0.9)}, "speedup:xla_dense", "min", "info"), records
    )
    assert both["cases"] == 4
    assert (
        _one(Target("none", {"sparsity": 0.95}, "speedup:xla_dense", "min", "info"), records)[
            "cases"
        ]
        == 0
    )


def test_tuple_value_matches_any_of_its_items_and_n_min_keeps_large_n():
    records = [
        _rec("spmm", bcoo=30.0),
        _rec("spmm_t", bcoo=25.0),
        _rec("xw_t", bcoo=5.0),
        _rec("spmm", n=32, bcoo=1.0),
    ]
    where = {"product": ("spmm", "spmm_t"), "n_min": 1024}
    entry = _one(Target("A @ B, A.T @ B", where, "speedup:bcoo", "min", ">=", 20.0), records)
    assert entry["cases"] == 2 and entry["value"] == pytest.approx(25.0)
    assert entry["verdict"] == "pass"
    # Without the filters the batch-leading case and the small N fail it.
    assert _one(Target("all", {}, "speedup:bcoo", "min", ">=", 20.0), records)["verdict"] == "fail"
    # A plain value is matched by equality.
    assert (
        _one(Target("g", {"group": "other"}, "speedup:bcoo", "min", "info"), records)["verdict"]
        == "no data"
    )


def test_cases_without_a_result_are_left_out():
    records = [
        _rec(torch_csr=4.0),
        _rec(torch_csr=None),  # the peer has no such product: n/a
        _rec(jaxcsb=None, torch_csr=2.0),  # jaxcsb itself did not run
    ]
    entry = _one(Target("t", {}, "speedup:torch_csr", "min", ">=", 4.0), records)
    assert entry["cases"] == 1 and entry["value"] == pytest.approx(4.0)
    assert entry["verdict"] == "pass"


@pytest.mark.parametrize(
    ("reduce", "expected"),
    [("min", 1.0), ("max", 16.0), ("median", 4.0), ("geomean", 4.0)],
)
def test_reductions(reduce, expected):
    records = [_rec(matrix=str(i), torch_csr=t) for i, t in enumerate((1.0, 4.0, 16.0))]
    entry = _one(Target("t", {}, "speedup:torch_csr", reduce, "info"), records)
    assert entry["value"] == pytest.approx(expected)
    assert entry["verdict"] == "info" and entry["threshold"] is None


def test_upper_bound_verdicts():
    records = [_rec("spmm_t", matrix=str(i)) for i in range(3)]
    for rec, ratio in zip(records, (1.0, 1.1, 1.4), strict=True):
        rec["peers"]["jaxcsb"]["t_over_fwd"] = ratio
    median = _one(Target("median", {}, "t_over_fwd", "median", "<=", 1.15), records)
    worst = _one(Target("worst", {}, "t_over_fwd", "max", "<=", 1.3), records)
    assert median["value"] == pytest.approx(1.1) and median["verdict"] == "pass"
    assert worst["value"] == pytest.approx(1.4) and worst["verdict"] == "fail"


def test_copy_fraction_needs_the_measured_copy_bandwidth():
    records = [_rec(jaxcsb=t, matrix=str(t)) for t in (1.0, 2.0, 4.0)]  # 1000, 500, 250 GB/s
    t = Target("bandwidth", {}, "copy_fraction", "median", ">=", 0.7)
    entry = _one(t, records, {"copy_gbps": 1000.0})
    assert entry["value"] == pytest.approx(0.5) and entry["verdict"] == "fail"
    assert _one(t, records, {"copy_gbps": 600.0})["verdict"] == "pass"
    assert _one(t, records, None)["verdict"] == "no data"


def test_batch_leading_transpose_ratio_is_x_at_a_over_x_at_a_transposed():
    records = [
        _rec("spmm", jaxcsb=2.0, torch_csr=4.0),
        _rec("spmm_t", jaxcsb=2.4, torch_csr=8.0, torch_csr_tprebuilt=5.0),
        _rec("xw_t", jaxcsb=3.0, torch_csr=None, torch_csr_tprebuilt=None),
        _rec("xw", jaxcsb=3.3, torch_csr=None, torch_csr_tprebuilt=None),
    ]
    runner._transpose_ratios(records)
    spmm_t, xw = records[1], records[3]
    assert spmm_t["t_over_fwd"] == pytest.approx(1.2)
    assert xw["t_over_fwd"] == pytest.approx(1.1)  # X @ A over X @ A.T, not over A @ B
    # The prebuilt transposed copy divides by the forward CSR time; n/a peers get no ratio.
    assert spmm_t["peers"]["torch_csr_tprebuilt"]["t_over_fwd"] == pytest.approx(1.25)
    assert "t_over_fwd" not in xw["peers"]["torch_csr"]
    entry = _one(
        Target("X @ A / X @ A.T", {"product": "xw"}, "t_over_fwd", "max", "<=", 1.3), records
    )
    assert entry["cases"] == 1 and entry["verdict"] == "pass"
    # The forward rows carry no ratio, so a target on them has no data.
    assert (
        _one(Target("fwd", {"product": "xw_t"}, "t_over_fwd", "max", "info"), records)["verdict"]
        == "no data"
    )


def test_targets_text_shows_threshold_verdict_and_missing_values():
    records = [_rec(torch_csr=3.0)]
    results = evaluate(
        [
            Target("judged", {}, "speedup:torch_csr", "min", ">=", 4.0),
            Target("reported", {}, "speedup:torch_csr", "min", "info"),
            Target("absent", {}, "speedup:bcsr", "min", ">=", 20.0),
        ],
        records,
    )
    lines = report.targets_text(results).splitlines()
    assert lines[0] == "targets:"
    assert ">= 4" in lines[1] and lines[1].rstrip().endswith("FAIL  (min of 1)")
    assert "INFO" in lines[2] and ">=" not in lines[2]
    assert "NO DATA" in lines[3] and " - " in lines[3]


def _options(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _selectable(target: Target, group) -> bool:
    """Whether ``group`` runs a case that ``target`` selects and measures."""
    where = target.where
    products = [p for p in _options(where.get("product", group.products)) if p in group.products]
    if target.metric == "t_over_fwd":
        products = [p for p in products if TRANSPOSED_OF.get(p) in group.products]
    if not products:
        return False
    if "dtype" in where and not set(_options(where["dtype"])) & set(group.dtypes):
        return False
    if "sparsity" in where and group.dlmc is None:
        wanted = _options(where["sparsity"])
        if not any(abs(s - w) <= 0.005 for s in group.sparsities for w in wanted):
            return False
    if target.metric.startswith("speedup:"):
        return target.metric.split(":", 1)[1] in group.peers
    return True


@pytest.mark.parametrize("preset", sorted(TARGETS))
def test_every_target_selects_cases_its_preset_runs(preset):
    groups = {g.name: g for g in PRESETS[preset]}
    for t in TARGETS[preset]:
        assert t.reduce in ("min", "max", "geomean", "median"), t.name
        assert t.op in (">=", "<=", "info"), t.name
        assert (t.threshold is None) == (t.op == "info"), t.name
        assert t.threshold is None or (t.threshold > 0 and math.isfinite(t.threshold))
        names = _options(t.where["group"]) if "group" in t.where else tuple(groups)
        assert all(n in groups for n in names), (t.name, names)
        assert any(_selectable(t, groups[n]) for n in names), t.name
