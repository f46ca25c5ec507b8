"""The performance targets of each preset, evaluated on a sweep's records."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    name: str
    where: dict = field(default_factory=dict)  # record fields that must match (n_min: N >=)
    metric: str = "speedup:bcsr"  # speedup:<peer> | t_over_fwd | tflops | gbps | copy_fraction
    reduce: str = "min"  # min | max | geomean | median
    op: str = ">="  # ">=", "<=" or "info" (reported, not judged)
    threshold: float | None = None


def _matches(rec, where) -> bool:
    for key, want in where.items():
        if key == "n_min":
            if rec["n"] < want:
                return False
        elif key == "sparsity":
            if abs(rec["sparsity"] - want) > 0.005:
                return False
        elif rec.get(key) != want:
            return False
    return True


def _metric(rec, metric, ceilings):
    mine = rec["peers"].get("jaxcsb", {})
    if mine.get("status") != "ok":
        return None
    if metric.startswith("speedup:"):
        return rec["peers"].get(metric.split(":", 1)[1], {}).get("speedup")
    if metric == "copy_fraction":
        copy = (ceilings or {}).get("copy_gbps")
        return mine["gbps"] / copy if copy else None
    return mine.get(metric)


def _reduce(values, how):
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    if how == "geomean":
        return math.exp(sum(math.log(v) for v in values) / len(values))
    if how == "median":
        return sorted(values)[len(values) // 2]
    raise ValueError(f"reduce must be min, max, geomean or median, got {how!r}")


def evaluate(targets, records, ceilings=None) -> list[dict]:
    """One dict per target: name, measured value, threshold, verdict (pass/fail/info/no data)."""
    out = []
    for t in targets:
        values = [
            v
            for rec in records
            if _matches(rec, t.where)
            for v in [_metric(rec, t.metric, ceilings)]
            if v is not None and v > 0
        ]
        entry = {"target": t.name, "metric": t.metric, "reduce": t.reduce, "cases": len(values)}
        if not values:
            entry.update(value=None, verdict="no data")
        else:
            value = _reduce(values, t.reduce)
            if t.op == "info":
                verdict = "info"
            elif t.op == ">=":
                verdict = "pass" if value >= t.threshold else "fail"
            else:
                verdict = "pass" if value <= t.threshold else "fail"
            entry.update(value=value, verdict=verdict)
        entry.update(op=t.op, threshold=t.threshold)
        out.append(entry)
    return out


_CHECK = {"group": "cpu-check"}
_DLMC = {"group": "dlmc", "n_min": 1024}
_HEAD = {"group": "headline"}

TARGETS: dict[str, tuple[Target, ...]] = {
    "tiny": (
        Target(
            "A @ B vs BCSR (tiny; smoke test)", {"product": "spmm"}, "speedup:bcsr", "min", "info"
        ),
    ),
    "cpu-small": (
        Target(
            "2048x512 90% N=256 f32 A @ B vs BCSR",
            {**_CHECK, "product": "spmm"},
            "speedup:bcsr",
            "min",
            ">=",
            2.0,
        ),
        Target(
            "2048x512 90% N=256 f32 A.T @ B / A @ B time",
            {**_CHECK, "product": "spmm_t"},
            "t_over_fwd",
            "max",
            "<=",
            1.3,
        ),
        Target(
            "2048x512 90% N=256 f32 X @ A / X @ A.T time",
            {**_CHECK, "product": "xw"},
            "t_over_fwd",
            "max",
            "<=",
            1.3,
        ),
        Target(
            "2048x512 90% N=256 f32 A @ B vs scipy",
            {**_CHECK, "product": "spmm"},
            "speedup:scipy",
            "min",
            "info",
        ),
        Target(
            "2048x512 90% N=256 f32 A @ B vs dense",
            {**_CHECK, "product": "spmm"},
            "speedup:xla_dense",
            "min",
            "info",
        ),
    ),
    "gpu-targets": (
        Target(
            "DLMC f32 N>=1024 A @ B vs cuSPARSE (geomean)",
            {**_DLMC, "product": "spmm"},
            "speedup:torch_csr",
            "geomean",
            ">=",
            1.0,
        ),
        Target(
            "DLMC f32 N>=1024 A @ B vs cuSPARSE (worst)",
            {**_DLMC, "product": "spmm"},
            "speedup:torch_csr",
            "min",
            "info",
        ),
        Target(
            "DLMC f32 N>=1024 A.T @ B vs cuSPARSE A.t() view (geomean)",
            {**_DLMC, "product": "spmm_t"},
            "speedup:torch_csr",
            "geomean",
            ">=",
            1.0,
        ),
        Target(
            "DLMC f32 N>=1024 A.T @ B vs cuSPARSE prebuilt A.T (geomean)",
            {**_DLMC, "product": "spmm_t"},
            "speedup:torch_csr_tprebuilt",
            "geomean",
            ">=",
            1.0,
        ),
        Target(
            "DLMC transpose parity: worst A.T @ B / A @ B time",
            {**_DLMC, "product": "spmm_t"},
            "t_over_fwd",
            "max",
            "<=",
            1.3,
        ),
        Target(
            "70-98% 4096x1024/1024x4096 N=4096 A @ B vs cuSPARSE (worst)",
            {"group": "sparsity", "product": "spmm"},
            "speedup:torch_csr",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "70-98% 4096x1024/1024x4096 N=4096 A.T @ B vs cuSPARSE prebuilt (worst)",
            {"group": "sparsity", "product": "spmm_t"},
            "speedup:torch_csr_tprebuilt",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "4096x1024 90% N=4096 f32 A @ B TFLOP/s",
            {**_HEAD, "product": "spmm"},
            "tflops",
            "min",
            "info",
        ),
        Target(
            "4096x1024 90% N=4096 f32 A @ B vs dense f32 highest",
            {**_HEAD, "product": "spmm"},
            "speedup:xla_dense_highest",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "4096x1024 90% N=4096 f32 A @ B vs dense default (TF32)",
            {**_HEAD, "product": "spmm"},
            "speedup:xla_dense",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "4096x1024 90% N=4096 f32 A @ B vs dense bf16",
            {**_HEAD, "product": "spmm"},
            "speedup:xla_dense_bf16",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "bf16 N<=64 80/90% A @ B, X @ A.T vs cuBLAS bf16 (worst)",
            {"group": "small-n"},
            "speedup:xla_dense",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "bf16 N<=64 80/90% effective bandwidth / copy bandwidth (median)",
            {"group": "small-n"},
            "copy_fraction",
            "median",
            "info",
        ),
        Target(
            "SDDMM f32 90% 4096x1024 N=4096 vs the dense product",
            {"group": "sddmm", "dtype": "float32"},
            "speedup:xla_dense",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "SDDMM bf16 90% 4096x1024 N=4096 vs the dense product",
            {"group": "sddmm", "dtype": "bfloat16"},
            "speedup:xla_dense",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "90% A @ B vs jax.experimental.sparse BCSR",
            {**_HEAD, "product": "spmm"},
            "speedup:bcsr",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "90% A @ B, A.T @ B vs jax.experimental.sparse BCOO",
            _HEAD,
            "speedup:bcoo",
            "min",
            ">=",
            1.0,
        ),
        Target(
            "90% SDDMM vs jax.experimental.sparse BCOO",
            {"group": "sddmm"},
            "speedup:bcoo",
            "min",
            ">=",
            1.0,
        ),
    ),
}
