"""Loading the native modules and registering their FFI targets with XLA.

The CPU module is always built; the CUDA module only when the package was built with nvcc
(JAXCSB_CUDA=AUTO finds it, ON requires it). Platforms without a native target use the
pure-JAX implementation, with a one-time warning.
"""

from __future__ import annotations

import importlib
import threading
import warnings

import jax

# Platform name in jax.lax.platform_dependent -> (module, XLA platform name).
_MODULES = {"cpu": ("jaxcsb._cpu", "cpu"), "cuda": ("jaxcsb._cuda", "CUDA")}
_registered: set[str] | None = None
_import_errors: dict[str, str] = {}
_warned: set[str] = set()
_lock = threading.Lock()

SPMM_TARGET = "jaxcsb_spmm"
SDDMM_TARGET = "jaxcsb_sddmm"


def native_platforms() -> frozenset[str]:
    """The platforms (``"cpu"``, ``"cuda"``) whose FFI targets are registered."""
    global _registered
    if _registered is None:
        with _lock:  # first calls from several threads register once
            if _registered is None:
                registered = set()
                for platform, (module_name, xla_platform) in _MODULES.items():
                    try:
                        module = importlib.import_module(module_name)
                    except ImportError as e:
                        _import_errors[platform] = str(e)
                        continue
                    for name, capsule in module.registrations().items():
                        jax.ffi.register_ffi_target(name, capsule, platform=xla_platform)
                    registered.add(platform)
                _registered = registered
    return frozenset(_registered)


def _backend_platform() -> str:
    backend = jax.default_backend()
    return "cuda" if backend == "gpu" else backend


def warn_if_no_native_target() -> None:
    """Warns once per platform when the default backend will run the pure-JAX fallback."""
    platform = _backend_platform()
    if platform in native_platforms() or platform in _warned:
        return
    _warned.add(platform)
    if platform == "cuda":
        how = (
            "jaxcsb was built without CUDA support: reinstall on a machine with nvcc, e.g. "
            "`JAXCSB_CUDA=ON pip install --no-build-isolation .`"
        )
    else:
        how = f"jaxcsb has no native kernels for platform {platform!r}"
    reason = _import_errors.get(platform, "")
    warnings.warn(
        f"{how}; using the pure-JAX implementation, which is much slower"
        + (f" (import error: {reason})" if reason else ""),
        RuntimeWarning,
        stacklevel=3,
    )
