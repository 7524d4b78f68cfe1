"""weight_norm (w = g * v / ||v||) on every backend (cuda in the simulator in CI)."""
import os

import numpy as np
import pytest

import numbanorm as nbn

HOST_BACKENDS = ["numpy", "cpu"]


def _simulated():
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
CONFIGS = [  # shape of v, axis, shape of g, log_scale, eps
    ((6, 3, 2, 2), 0, (6,), False, 0.0),
    ((6, 3, 2, 2), 0, (6, 1, 1, 1), True, 0.0),
    ((5, 7), 1, (7,), False, 1e-3),
    ((4, 5, 3), None, (), True, 0.5),
    ((4, 5, 3), -1, (1, 1, 3), False, 0.0),
    ((300, 129), 0, (300,), False, 0.0),  # large enough for the parallel kernels
]
IDS = [f"{'x'.join(map(str, c[0]))}-axis{c[1]}-log{int(c[3])}-eps{c[4]}" for c in CONFIGS]


def _data(shape, gshape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape).astype(dtype), rng.standard_normal(gshape).astype(dtype),
            rng.standard_normal(shape).astype(dtype))


def _run(v, g, dw, axis, log_scale, eps, backend):
    w, cache = nbn.weight_norm_forward(v, g, axis=axis, log_scale=log_scale, eps=eps, backend=backend)
    return (w, *nbn.weight_norm_backward(dw, cache)), cache


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backend_matches_reference(backend, config, dtype):
    shape, axis, gshape, log_scale, eps = config
    if backend == "cuda" and np.prod(shape) > 4096 and _simulated():
        shape, gshape = (37, 21), (37,)  # the simulator runs a few thousand threads a second
    v, g, dw = _data(shape, gshape, dtype)
    got, _ = _run(v, g, dw, axis, log_scale, eps, backend)
    want, _ = _run(v, g, dw, axis, log_scale, eps, "numpy")
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def test_float16_computes_in_float32(backend):
    v, g, dw = _data((8, 16), (8,), np.float16)
    (w, dv, dg), _ = _run(v, g, dw, 0, False, 0.0, backend)
    assert w.dtype == dv.dtype == dg.dtype == np.float16
    (w64, dv64, dg64), _ = _run(v.astype(np.float64), g.astype(np.float64), dw.astype(np.float64), 0, False,
                                0.0, "numpy")
    for a, b in ((w, w64), (dv, dv64), (dg, dg64)):
        np.testing.assert_allclose(a.astype(np.float64), b, rtol=2e-3, atol=2e-3 * float(np.abs(b).max()))


@pytest.mark.parametrize("config", CONFIGS[:5], ids=IDS[:5])
def test_each_slice_has_norm_g(backend, config):
    shape, axis, gshape, log_scale, _ = config
    v, g, _ = _data(shape, gshape)
    w = nbn.weight_norm(v, g, axis=axis, log_scale=log_scale, backend=backend)
    magnitude = np.exp(g) if log_scale else np.abs(g)
    if axis is None:
        np.testing.assert_allclose(np.linalg.norm(w), magnitude, rtol=1e-12)
        return
    slices = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    np.testing.assert_allclose(np.linalg.norm(slices, axis=1), magnitude.reshape(-1), rtol=1e-12)


@pytest.mark.parametrize("config", CONFIGS[:5], ids=IDS[:5])
def test_reference_gradients_match_finite_differences(config):
    shape, axis, gshape, log_scale, eps = config
    v, g, _ = _data(shape, gshape, seed=3)
    r = np.random.default_rng(4).standard_normal(shape)

    def loss(v_, g_):
        return float((nbn.weight_norm(v_, g_, axis=axis, log_scale=log_scale, eps=eps, backend="numpy") * r).sum())

    _, cache = nbn.weight_norm_forward(v, g, axis=axis, log_scale=log_scale, eps=eps, backend="numpy")
    dv, dg = nbn.weight_norm_backward(r, cache)
    h = 1e-6
    for array, grad, name in ((v, dv, "v"), (g, dg, "g")):
        numeric = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            up, down = array.copy(), array.copy()
            up[i] += h
            down[i] -= h
            args_up = (up, g) if name == "v" else (v, up)
            args_down = (down, g) if name == "v" else (v, down)
            numeric[i] = (loss(*args_up) - loss(*args_down)) / (2 * h)
        err = np.abs(numeric - grad).max() / max(np.abs(numeric).max(), 1e-12)
        assert err < 1e-6, f"d{name}: relative error {err:.2e}"


def test_eps_keeps_a_zero_slice_finite(backend):
    v, g, dw = _data((4, 6), (4,))
    v[2] = 0.0
    (w, dv, dg), _ = _run(v, g, dw, 0, False, 1e-12, backend)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(dv)) and np.all(np.isfinite(dg))
    assert np.all(w[2] == 0.0)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_matches_torch_weight_norm(backend):
    torch = pytest.importorskip("torch")
    v, g, dw = _data((6, 3, 2, 2), (6, 1, 1, 1))
    (w, dv, dg), _ = _run(v, g, dw, 0, False, 0.0, backend)
    vt = torch.tensor(v, requires_grad=True)
    gt = torch.tensor(g, requires_grad=True)
    wt = torch._weight_norm(vt, gt, 0)
    wt.backward(torch.tensor(dw))
    np.testing.assert_allclose(w, wt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dv, vt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("call, error, match", [
    (lambda b: nbn.weight_norm(np.ones((4, 3)), np.ones(3), backend=b), ValueError, "g has shape"),
    (lambda b: nbn.weight_norm(np.ones((4, 3)), np.ones(4), eps=-1.0, backend=b), ValueError, "eps"),
    (lambda b: nbn.weight_norm(np.ones((4, 3), np.int64), np.ones(4), backend=b), TypeError, "int64"),
    (lambda b: nbn.weight_norm(np.ones((4, 3)), np.ones(4), axis=2, backend=b), ValueError, "out of range"),
    (lambda b: nbn.weight_norm(np.ones((4, 3)), np.ones((2, 2)), axis=None, backend=b), ValueError, "g has shape"),
])
def test_bad_input(backend, call, error, match):
    with pytest.raises(error, match=match):
        call(backend)


@pytest.mark.cuda
def test_device_arrays_in_and_out():
    if "cuda" not in nbn.available_backends():
        pytest.skip("no cuda backend (neither a GPU nor the simulator)")
    from numba import cuda
    v, g, dw = _data((6, 5), (6,))
    w_d, cache = nbn.weight_norm_forward(cuda.to_device(v), cuda.to_device(g))
    dv_d, dg_d = nbn.weight_norm_backward(cuda.to_device(dw), cache)
    assert cache.backend == "cuda" and all(hasattr(a, "copy_to_host") for a in (w_d, dv_d, dg_d))
    (w, dv, dg), _ = _run(v, g, dw, 0, False, 0.0, "numpy")
    for a, b in ((w_d, w), (dv_d, dv), (dg_d, dg)):
        np.testing.assert_allclose(a.copy_to_host(), b, rtol=1e-10, atol=1e-12)
