"""The performance targets of each preset, evaluated on a sweep's records."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """One target: ``metric`` over the records that match ``where``, reduced by ``reduce``,
    compared with ``threshold`` by ``op``.

    ``where`` maps record fields to the value they must have; a tuple value means any of its
    items (``{"product": ("spmm", "spmm_t")}``). Two keys are special: ``n_min`` keeps the
    records with N at least that, and ``sparsity`` matches within 0.005 (a drawn matrix's
    sparsity is close to, not exactly, the one asked for)."""

    name: str
    where: dict = field(default_factory=dict)
    metric: str = "speedup:bcsr"  # speedup:<peer> | t_over_fwd | tflops | gbps | copy_fraction
    reduce: str = "min"  # min | max | geomean | median
    op: str = ">="  # ">=", "<=" or "info" (reported, not judged)
    threshold: float | None = None


def _matches(rec, where) -> bool:
    for key, want in where.items():
        if key == "n_min":
            if rec["n"] < want:
                return False
            continue
        options = want if isinstance(want, tuple) else (want,)
        if key == "sparsity":
            if not any(abs(rec["sparsity"] - w) <= 0.005 for w in options):
                return False
        elif rec.get(key) not in options:
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
_SWEEP = {"group": "sparsity"}
_HEAD = {"group": "headline"}
_SMALL_N = {"group": "small-n"}

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
    # The project's targets on one H100 (float32 unless said). Names say what is measured;
    # the summary prints the threshold next to it.
    "gpu-targets": (
        # DLMC, float32, N >= 1024: >= 4x cuSPARSE (geometric mean). The issue states the 4x
        # for SpMM (A @ B); the transposed product A.T @ B is held to the same factor, against
        # both ways cuSPARSE offers it (the A.t() view and a second, prebuilt copy of A.T).
        Target(
            "DLMC f32 N>=1024: A @ B speedup over cuSPARSE, geomean",
            {**_DLMC, "product": "spmm"},
            "speedup:torch_csr",
            "geomean",
            ">=",
            4.0,
        ),
        Target(
            "DLMC f32 N>=1024: A @ B speedup over cuSPARSE, worst matrix",
            {**_DLMC, "product": "spmm"},
            "speedup:torch_csr",
            "min",
            "info",
        ),
        Target(
            "DLMC f32 N>=1024: A.T @ B speedup over cuSPARSE A.t() view, geomean",
            {**_DLMC, "product": "spmm_t"},
            "speedup:torch_csr",
            "geomean",
            ">=",
            4.0,
        ),
        Target(
            "DLMC f32 N>=1024: A.T @ B speedup over cuSPARSE prebuilt A.T, geomean",
            {**_DLMC, "product": "spmm_t"},
            "speedup:torch_csr_tprebuilt",
            "geomean",
            ">=",
            4.0,
        ),
        # Transpose parity: the transposed product's time over the forward one's, on the same
        # matrix and N (feature-major: A.T @ B / A @ B; batch-leading: X @ A / X @ A.T).
        Target(
            "DLMC f32 N>=1024: time A.T @ B / A @ B, median",
            {**_DLMC, "product": "spmm_t"},
            "t_over_fwd",
            "median",
            "<=",
            1.15,
        ),
        Target(
            "DLMC f32 N>=1024: time A.T @ B / A @ B, worst matrix",
            {**_DLMC, "product": "spmm_t"},
            "t_over_fwd",
            "max",
            "<=",
            1.3,
        ),
        Target(
            "DLMC f32 N>=1024: time X @ A / X @ A.T, median",
            {**_DLMC, "product": "xw"},
            "t_over_fwd",
            "median",
            "<=",
            1.15,
        ),
        Target(
            "DLMC f32 N>=1024: time X @ A / X @ A.T, worst matrix",
            {**_DLMC, "product": "xw"},
            "t_over_fwd",
            "max",
            "<=",
            1.3,
        ),
        # Uniform 4096x1024 and 1024x4096, N=4096, every sparsity 70%..98%.
        Target(
            "70-98% 4096x1024/1024x4096 N=4096: A @ B speedup over cuSPARSE, worst case",
            {**_SWEEP, "product": "spmm"},
            "speedup:torch_csr",
            "min",
            ">=",
            3.0,
        ),
        Target(
            "70-98% 4096x1024/1024x4096 N=4096: A.T @ B speedup over cuSPARSE prebuilt A.T, "
            "worst case",
            {**_SWEEP, "product": "spmm_t"},
            "speedup:torch_csr_tprebuilt",
            "min",
            ">=",
            3.0,
        ),
        # Faster than true float32 dense (precision="highest") at every sparsity from 70% up:
        # judged on both shapes of the sweep.
        Target(
            "70-98% 4096x1024/1024x4096 N=4096: A @ B speedup over dense f32 highest, worst case",
            {**_SWEEP, "product": "spmm"},
            "speedup:xla_dense_highest",
            "min",
            ">=",
            1.0,
        ),
        # The headline case: 4096x1024 at 90%, N=4096.
        Target(
            "4096x1024 90% N=4096: A @ B useful TFLOP/s",
            {**_HEAD, "product": "spmm"},
            "tflops",
            "min",
            ">=",
            15.0,
        ),
        # Against the tensor-core dense products the target is to report the crossover, not
        # to win: reported, not judged.
        Target(
            "4096x1024 90% N=4096: A @ B speedup over dense TF32 (default precision)",
            {**_HEAD, "product": "spmm"},
            "speedup:xla_dense",
            "min",
            "info",
        ),
        Target(
            "4096x1024 90% N=4096: A @ B speedup over dense bf16",
            {**_HEAD, "product": "spmm"},
            "speedup:xla_dense_bf16",
            "min",
            "info",
        ),
        # bfloat16, N in {1, 16, 64}, 4096x4096 and 11008x4096 (A @ B and X @ A.T).
        Target(
            "bf16 N<=64 80%: A @ B, X @ A.T speedup over cuBLAS bf16 dense, worst case",
            {**_SMALL_N, "sparsity": 0.8},
            "speedup:xla_dense",
            "min",
            ">=",
            2.0,
        ),
        Target(
            "bf16 N<=64 90%: A @ B, X @ A.T speedup over cuBLAS bf16 dense, worst case",
            {**_SMALL_N, "sparsity": 0.9},
            "speedup:xla_dense",
            "min",
            ">=",
            3.0,
        ),
        Target(
            "bf16 N<=64 80/90%: effective bandwidth / copy bandwidth, median",
            _SMALL_N,
            "copy_fraction",
            "median",
            ">=",
            0.7,
        ),
        # SDDMM at 90% on the 4096x1024 pattern, N=4096, against the dense product L @ R it
        # samples: float32 against true float32 (highest), bfloat16 against dense bfloat16.
        Target(
            "SDDMM f32 90% 4096x1024 N=4096: speedup over dense f32 highest",
            {"group": "sddmm", "dtype": "float32"},
            "speedup:xla_dense_highest",
            "min",
            ">=",
            3.0,
        ),
        Target(
            "SDDMM bf16 90% 4096x1024 N=4096: speedup over dense bf16",
            {"group": "sddmm", "dtype": "bfloat16"},
            "speedup:xla_dense",
            "min",
            ">=",
            3.0,
        ),
        # jax.experimental.sparse at 90%, all three products.
        Target(
            "4096x1024 90% N=4096: A @ B speedup over jax.experimental.sparse BCSR",
            {**_HEAD, "product": "spmm"},
            "speedup:bcsr",
            "min",
            ">=",
            20.0,
        ),
        Target(
            "4096x1024 90% N=4096: A @ B, A.T @ B speedup over jax.experimental.sparse BCOO, "
            "worst case",
            {**_HEAD, "product": ("spmm", "spmm_t")},
            "speedup:bcoo",
            "min",
            ">=",
            20.0,
        ),
        Target(
            "SDDMM f32, bf16 90% 4096x1024 N=4096: speedup over jax.experimental.sparse BCOO, "
            "worst case",
            {"group": "sddmm"},
            "speedup:bcoo",
            "min",
            ">=",
            20.0,
        ),
    ),
}
