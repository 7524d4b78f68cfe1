"""local_response_norm (PyTorch's definition) on every backend (cuda in the simulator in CI)."""
import os

import numpy as np
import pytest

import numbanorm as nbn

HOST_BACKENDS = ["numpy", "cpu"]
CONFIGS = [  # shape, size, axis
    ((2, 7, 3, 4), 5, 1),
    ((2, 7, 3, 4), 4, 1),   # even size: one more channel before than after
    ((3, 5, 6), 2, -1),     # channels-last
    ((2, 3, 4, 2, 3), 7, 1),  # window wider than the channels, 5-D
    ((4, 16, 30, 30), 5, 1),  # parallel kernels
    ((2, 37, 3, 5), 6, 1),    # many more channels than the window: the CPU backward's ring turns over
    ((1, 23, 24, 24), 11, 1),  # rows split between CPU work items; a window sum of three passes
]
IDS = [f"{'x'.join(map(str, c[0]))}-size{c[1]}-axis{c[2]}" for c in CONFIGS]
KW = dict(alpha=0.1, beta=0.75, k=2.0)


def _run(x, dy, size, axis, backend):
    y, cache = nbn.local_response_norm_forward(x, size, axis=axis, backend=backend, **KW)
    return y, nbn.local_response_norm_backward(dy, cache)[0]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backend_matches_reference(backend, config, dtype):
    shape, size, axis = config
    if backend == "cuda" and np.prod(shape) > 4096 and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        shape = (3, 9, 5, 7)  # the simulator runs a few thousand threads a second
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(_run(x, dy, size, axis, backend), _run(x, dy, size, axis, "numpy")):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6, 2.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_beta_matches_reference(backend, beta, dtype):
    """The CPU kernel takes square roots for beta 0.75, 0.5 and 1, a power otherwise."""
    rng = np.random.default_rng(2)
    shape = (2, 6, 3, 5)
    x, dy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    kw = dict(KW, beta=beta)
    got, want = ([nbn.local_response_norm_forward(x, 3, backend=be, **kw)] for be in (backend, "numpy"))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for (y, cache), (y_ref, cache_ref) in zip(got, want):
        np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(nbn.local_response_norm_backward(dy, cache)[0],
                                   nbn.local_response_norm_backward(dy, cache_ref)[0], rtol=tol, atol=tol)


def test_size_1_is_the_pointwise_formula(backend):
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    y = nbn.local_response_norm(x, 1, backend=backend, **KW)
    np.testing.assert_allclose(y, x / (KW["k"] + KW["alpha"] * x * x) ** KW["beta"], rtol=1e-13)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_matches_torch(backend, size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(size)
    x, dy = rng.standard_normal((2, 7, 3, 4)), rng.standard_normal((2, 7, 3, 4))
    y, dx = _run(x, dy, size, 1, backend)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, **KW)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("size", [3, 4])
def test_reference_gradient_matches_finite_differences(size):
    rng = np.random.default_rng(9)
    x, r = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 3))
    _, dx = _run(x, r, size, 1, "numpy")
    numeric = np.zeros_like(x)
    h = 1e-6
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        f = lambda a: float((nbn.local_response_norm(a, size, backend="numpy", **KW) * r).sum())  # noqa: E731
        numeric[i] = (f(up) - f(down)) / (2 * h)
    assert np.abs(numeric - dx).max() / np.abs(numeric).max() < 1e-6


@pytest.mark.parametrize("call, error, match", [
    (lambda b: nbn.local_response_norm(np.ones((2, 3, 4)), 0, backend=b), ValueError, "size"),
    (lambda b: nbn.local_response_norm(np.ones((2, 3)), 2, backend=b), ValueError, "at least 3"),
    (lambda b: nbn.local_response_norm(np.ones((2, 3, 4)), 2, axis=0, backend=b), ValueError, "batch axis"),
    (lambda b: nbn.local_response_norm(np.ones((2, 3, 4), np.int32), 2, backend=b), TypeError, "int32"),
    (lambda b: nbn.local_response_norm(np.ones((2, 3, 4)), 2, alpha="x", backend=b), TypeError, "alpha"),
])
def test_bad_input(backend, call, error, match):
    with pytest.raises(error, match=match):
        call(backend)
