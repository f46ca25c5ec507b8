"""pytest configuration shared by the suite.

The platform is whatever the environment selects (JAX_PLATFORMS=cpu in CI, JAX_PLATFORMS=cuda
on the GPU machine); nothing here forces one. Shared helpers live in ``helpers.py``.
"""

from __future__ import annotations

import jax
import pytest

import jaxcsb


def pytest_report_header(config):
    return (
        f"jax {jax.__version__}, backend {jax.default_backend()}, jaxcsb native targets: "
        f"{sorted(jaxcsb.native_platforms()) or 'none'}"
    )


@pytest.fixture(params=["auto", "native", "jax"])
def impl(request):
    """Each implementation choice; "native" is skipped where the backend has no target."""
    from helpers import native_here

    if request.param == "native" and not native_here():
        pytest.skip(f"jaxcsb has no native target for backend {jax.default_backend()!r}")
    return request.param
