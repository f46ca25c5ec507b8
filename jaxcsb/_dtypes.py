"""The value dtypes jaxcsb supports and the checks that enforce them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# The 16-bit value types, whose default block size on a GPU is at most 64 (_build.py).
HALF_DTYPES = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
SUPPORTED_DTYPES = (np.dtype(jnp.float32), *HALF_DTYPES)
_NAMES = "float32, bfloat16 or float16"


def check_value_dtype(dtype, name: str) -> np.dtype:
    """Returns ``dtype`` as a numpy dtype, or raises TypeError naming ``name``."""
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        hint = " (convert first, e.g. with dtype=np.float32)" if dtype.kind in "fiub" else ""
        raise TypeError(f"{name} must have dtype {_NAMES}, got {dtype}{hint}")
    return dtype
