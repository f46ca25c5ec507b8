"""The jaxcsb benchmark harness: ``python -m jaxcsb.bench`` (or ``jaxcsb-bench``).

Sweeps sparse matrices (synthetic and the DLMC sample), N, dtypes and the five products
(A @ B, A.T @ B, X @ A.T, X @ A, SDDMM), checks every implementation against a reference
before timing it, and compares jaxcsb with its peers (XLA dense, jax.experimental.sparse,
cuSPARSE through torch, scipy.sparse) in the same process. See docs/benchmarks.md.

Modules: ``matrices`` (the matrices), ``products`` (operands, references, useful work),
``peers`` (each implementation), ``timing``, ``ceilings`` (copy and GEMM ceilings),
``presets`` and ``targets`` (what a preset runs and judges), ``runner`` (the sweep),
``report`` (table, JSON, plot), ``__main__`` (the command line).
"""

from .runner import Settings, run_sweep

__all__ = ["Settings", "run_sweep", "main"]


def main(argv=None) -> int:
    from .__main__ import main as _main

    return _main(argv)
