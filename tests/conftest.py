"""Shared fixtures: the ``backend`` fixture and the Hypothesis profiles.

Every backend-parametrized test runs on "numpy" (the reference) and "cpu" (the
Numba kernels) always, and on "cuda" only when ``numbanorm.available_backends()``
lists it. A missing "cpu" backend is a failure, never a skip: the fixture does
not ask whether it is importable, the tests simply call it.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import numbanorm as nbn

# ----------------------------------------------------------------------------- hypothesis

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, **_common)
settings.register_profile("ci", max_examples=15, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# ----------------------------------------------------------------------------- backends

def _cuda_available():
    try:
        return "cuda" in nbn.available_backends()
    except Exception:  # a broken optional backend must not break collection
        return False


BACKEND_PARAMS = [pytest.param("numpy", id="numpy"), pytest.param("cpu", id="cpu")]
if _cuda_available():
    BACKEND_PARAMS.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def backend(request):
    """The backend name under test; every test using it compares against "numpy" or by hand."""
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _clean_dispatch_state():
    """Run the suite with no backend forced from outside (env var or set_backend)."""
    saved = os.environ.pop("NUMBANORM_BACKEND", None)
    nbn.set_backend(None)
    try:
        yield
    finally:
        nbn.set_backend(None)
        if saved is not None:
            os.environ["NUMBANORM_BACKEND"] = saved
