"""Shared fixtures: the ``backend`` fixture and the Hypothesis profiles.

Every backend-parametrized test runs on "numpy" (the reference) and "cpu" (the
Numba kernels) always, and on "cuda" only when ``numbanorm.available_backends()``
lists it (a GPU, or the CUDA simulator with ``NUMBA_ENABLE_CUDASIM=1``). A
missing "cpu" backend is a failure, never a skip: the fixture does not ask
whether it is importable, the tests simply call it. Tests marked ``gpu`` run
only on a real GPU: they are skipped in the simulator and without one.
"""
from __future__ import annotations

import os
import sys

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

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    # The CUDA simulator runs every GPU thread as a Python thread, and threads wait for
    # one another at each barrier: a short GIL switch interval makes them hand over
    # about three times faster.
    sys.setswitchinterval(2e-4)
    if os.environ.get("NUMBANORM_RECORD_KERNELS"):  # tests/test_cuda_ptx.py: which kernels ran, on what
        import ptx_check
        ptx_check.record(os.environ["NUMBANORM_RECORD_KERNELS"])


def _cuda_available():
    try:
        return "cuda" in nbn.available_backends()
    except Exception:  # a broken optional backend must not break collection
        return False


BACKEND_PARAMS = [pytest.param("numpy", id="numpy"), pytest.param("cpu", id="cpu")]
if _cuda_available():
    BACKEND_PARAMS.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))


def _real_gpu():
    try:
        from numba import config, cuda
        return bool(cuda.is_available()) and not config.ENABLE_CUDASIM
    except Exception:  # numba-cuda absent or broken: no GPU as far as the tests go
        return False


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _real_gpu():
        skip = pytest.mark.skip(reason="needs a real GPU (not the CUDA simulator)")
        for item in gpu_items:
            item.add_marker(skip)


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
