"""jaxcsb: pruned neural-network layers in Compressed Sparse Blocks.

One stored copy of a sparse weight matrix serves the forward product (A @ B), the input
gradient (A.T @ B) and the weight gradient (SDDMM), through XLA custom calls on the CPU and
on CUDA GPUs.
"""

import importlib

from ._format import CSB
from ._native import native_platforms
from ._ops import csb_matmul, sddmm
from ._smtx import load_smtx

__all__ = ["CSB", "csb_matmul", "sddmm", "load_smtx", "native_platforms"]
__version__ = "0.1.0"

# Submodules with optional dependencies (flax, optax, orbax) load on first use.
_LAZY_SUBMODULES = ("nnx", "linen", "pruning", "checkpoint", "sharding", "bench")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
