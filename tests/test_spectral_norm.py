"""spectral_norm (w / sigma, sigma by power iteration) on every backend (cuda in the
simulator in CI)."""
import os

import numpy as np
import pytest

import numbanorm as nbn

CONFIGS = [  # shape of w, axis, training, n_power_iterations
    ((6, 3, 2, 2), 0, True, 1),
    ((5, 7), 1, True, 3),
    ((8, 4), 0, False, 1),
    ((64, 700), 0, True, 2),  # large enough for the parallel kernels
    ((301, 230), 0, False, 1),  # W^T u in three blocks of rows, the last one short
]
IDS = [f"{'x'.join(map(str, c[0]))}-axis{c[1]}-{'train' if c[2] else 'eval'}-n{c[3]}" for c in CONFIGS]


def _run(w, u, dy, axis, training, n, backend):
    y, cache = nbn.spectral_norm_forward(w, u, axis=axis, training=training, n_power_iterations=n, backend=backend)
    (dw,) = nbn.spectral_norm_backward(dy, cache)
    return y, dw, cache


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backend_matches_reference(backend, config, dtype):
    shape, axis, training, n = config
    if backend == "cuda" and np.prod(shape) > 4096 and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        shape = (9, 37)  # the simulator runs a few thousand threads a second
    rng = np.random.default_rng(0)
    w, dy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    u0 = rng.standard_normal(shape[axis]).astype(dtype)
    results = {}
    for name in (backend, "numpy"):
        u = u0.copy()
        y, dw, cache = _run(w, u, dy, axis, training, n, name)
        results[name] = (y, dw, u, cache.sigma)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(results[backend], results["numpy"]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(b)))))
    assert results[backend][0].dtype == dtype


def test_sigma_converges_to_the_largest_singular_value(backend):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 4, 3))
    u = rng.standard_normal(16)
    y, cache = nbn.spectral_norm_forward(w, u, n_power_iterations=300, backend=backend)
    top = np.linalg.svd(w.reshape(16, -1), compute_uv=False)[0]
    np.testing.assert_allclose(cache.sigma, top, rtol=1e-10)
    np.testing.assert_allclose(np.linalg.svd(y.reshape(16, -1), compute_uv=False)[0], 1.0, rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-12)


def test_eval_writes_nothing_and_training_updates_u(backend):
    rng = np.random.default_rng(2)
    w, u = rng.standard_normal((5, 6)), rng.standard_normal(5)
    before = u.copy()
    nbn.spectral_norm(w, u, training=False, backend=backend)
    np.testing.assert_array_equal(u, before)
    nbn.spectral_norm(w, u, training=True, backend=backend)
    assert not np.array_equal(u, before)


def test_reference_gradient_matches_finite_differences_at_convergence():
    """With u, v the singular vectors, d sigma / dW = u v^T exactly, so holding them constant
    (as the backward does) is the true gradient there."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 5))
    u = rng.standard_normal(4)
    nbn.spectral_norm(w, u, n_power_iterations=500, backend="numpy")  # converge u
    r = rng.standard_normal(w.shape)
    _, cache = nbn.spectral_norm_forward(w, u, training=False, backend="numpy")
    (dw,) = nbn.spectral_norm_backward(r, cache)
    numeric = np.zeros_like(w)
    h = 1e-6
    for i in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[i] += h
        down[i] -= h
        f = lambda a: float((a / np.linalg.svd(a, compute_uv=False)[0] * r).sum())  # noqa: E731
        numeric[i] = (f(up) - f(down)) / (2 * h)
    assert np.abs(numeric - dw).max() / np.abs(numeric).max() < 1e-6


def test_zero_weight_gives_zeros_not_nan(backend):
    w = np.zeros((3, 4))
    u = np.ones(3)
    y, dw, cache = _run(w, u, np.ones((3, 4)), 0, True, 1, backend)
    assert np.all(y == 0.0) and np.all(np.isfinite(dw)) and np.all(np.isfinite(u))


@pytest.mark.parametrize("kwargs, u, error, match", [
    (dict(), np.ones(3), ValueError, "u has shape"),
    (dict(n_power_iterations=0), np.ones(4), ValueError, "n_power_iterations"),
    (dict(eps=0.0), np.ones(4), ValueError, "eps"),
    (dict(axis=2), np.ones(4), ValueError, "out of range"),
    (dict(), np.ones(4, np.int64), TypeError, "int64"),
])
def test_bad_input_leaves_u_untouched(backend, kwargs, u, error, match):
    before = u.copy()
    with pytest.raises(error, match=match):
        nbn.spectral_norm(np.ones((4, 5)), u, backend=backend, **kwargs)
    np.testing.assert_array_equal(u, before)


def test_read_only_u_is_refused_when_training(backend):
    u = np.ones(4)
    u.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nbn.spectral_norm(np.ones((4, 5)), u, backend=backend)
    nbn.spectral_norm(np.ones((4, 5)), u, training=False, backend=backend)  # eval writes nothing: fine


@pytest.mark.cuda
def test_device_u_is_updated_in_place_on_the_device():
    if "cuda" not in nbn.available_backends():
        pytest.skip("no cuda backend (neither a GPU nor the simulator)")
    from numba import cuda
    rng = np.random.default_rng(6)
    w, u = rng.standard_normal((5, 4)), rng.standard_normal(5)
    u_device = cuda.to_device(u)
    y_device = nbn.spectral_norm(cuda.to_device(w), u_device)
    u_host = u.copy()
    y = nbn.spectral_norm(w, u_host, backend="numpy")
    np.testing.assert_allclose(u_device.copy_to_host(), u_host, rtol=1e-12)
    np.testing.assert_allclose(y_device.copy_to_host(), y, rtol=1e-12)
