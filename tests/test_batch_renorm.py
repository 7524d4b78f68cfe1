"""batch_renorm (Ioffe 2017) on every backend (cuda in the simulator in CI)."""
import os

import numpy as np
import pytest

import numbanorm as nbn

CONFIGS = [  # shape, axis, training, rmax, dmax
    ((6, 4, 3, 3), 1, True, 3.0, 5.0),
    ((6, 4, 3, 3), 1, True, 1.1, 0.05),   # clipping active
    ((8, 3, 5), -1, True, 1.2, 0.1),      # channels-last
    ((6, 4), 1, False, 3.0, 5.0),         # eval: batch norm with running statistics
    ((16, 8, 30, 30), 1, True, 1.5, 0.5),  # parallel kernels
]
IDS = [f"{'x'.join(map(str, c[0]))}-axis{c[1]}-{'train' if c[2] else 'eval'}-r{c[3]}-d{c[4]}" for c in CONFIGS]


def _inputs(shape, axis, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    x = (2.0 * rng.standard_normal(shape) + 1.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = dict(weight=rng.standard_normal(channels).astype(dtype), bias=rng.standard_normal(channels).astype(dtype))
    running = dict(running_mean=(0.5 * rng.standard_normal(channels)).astype(dtype),
                   running_var=rng.uniform(0.5, 2.0, channels).astype(dtype))
    return x, dy, params, running


def _run(op, x, dy, params, running, backend, **kw):
    running = {k: v.copy() for k, v in running.items()}
    y, cache = getattr(nbn, op + "_forward")(x, backend=backend, **params, **running, **kw)
    grads = getattr(nbn, op + "_backward")(dy, cache)
    return (y, *grads, running["running_mean"], running["running_var"])


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backend_matches_reference(backend, config, dtype):
    shape, axis, training, rmax, dmax = config
    if backend == "cuda" and np.prod(shape) > 4096 and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        shape = (5, 8, 3, 7)  # the simulator runs a few thousand threads a second
    x, dy, params, running = _inputs(shape, axis, dtype)
    kw = dict(axis=axis, training=training, rmax=rmax, dmax=dmax)
    got = _run("batch_renorm", x, dy, params, running, backend, **kw)
    want = _run("batch_renorm", x, dy, params, running, "numpy", **kw)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("training", [True, False])
def test_rmax_1_dmax_0_is_exactly_batch_norm(backend, training):
    x, dy, params, running = _inputs((6, 4, 3, 3), 1)
    renorm = _run("batch_renorm", x, dy, params, running, backend, training=training, rmax=1.0, dmax=0.0)
    plain = _run("batch_norm", x, dy, params, running, backend, training=training)
    for a, b in zip(renorm, plain):
        a, b = (np.asarray(t.copy_to_host() if hasattr(t, "copy_to_host") else t) for t in (a, b))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_differs_from_batch_norm_once_clipping_is_active(backend):
    x, dy, params, running = _inputs((6, 4, 3, 3), 1)
    renorm = _run("batch_renorm", x, dy, params, running, backend, training=True, rmax=3.0, dmax=5.0)
    plain = _run("batch_norm", x, dy, params, running, backend, training=True)
    assert not np.allclose(renorm[0], plain[0])
    # running statistics are updated exactly as batch norm updates them
    np.testing.assert_allclose(renorm[-2], plain[-2], rtol=1e-12)
    np.testing.assert_allclose(renorm[-1], plain[-1], rtol=1e-12)


def test_reference_gradients_match_finite_differences_with_r_and_d_constant():
    """Perturbing x moves r and d too; hold them at the values of the unperturbed batch
    by moving the running statistics so that r and d stay put (they are 'stop-gradient')."""
    x, _, params, running = _inputs((5, 3, 2), 1, seed=4)
    r_grad = np.random.default_rng(5).standard_normal(x.shape)
    kw = dict(training=True, rmax=10.0, dmax=10.0)  # no clipping: r and d analytic
    _, cache = nbn.batch_renorm_forward(x, backend="numpy", **params,
                                        **{k: v.copy() for k, v in running.items()}, **kw)
    dx, dweight, dbias = nbn.batch_renorm_backward(r_grad, cache)
    r, d = cache.saved["r"], cache.saved["d"]

    def loss(x_, weight):
        axes = (0, 2)
        mean, var = x_.mean(axis=axes, keepdims=True), x_.var(axis=axes, keepdims=True)
        xhat = (x_ - mean) / np.sqrt(var + 1e-5)
        y = weight.reshape(1, -1, 1) * (xhat * r.reshape(1, -1, 1) + d.reshape(1, -1, 1)) \
            + params["bias"].reshape(1, -1, 1)
        return float((y * r_grad).sum())

    h = 1e-6
    for array, grad, name in ((x, dx, "x"), (params["weight"], dweight, "weight")):
        numeric = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            up, down = array.copy(), array.copy()
            up[i] += h
            down[i] -= h
            args = ((up, params["weight"]), (down, params["weight"])) if name == "x" else ((x, up), (x, down))
            numeric[i] = (loss(*args[0]) - loss(*args[1])) / (2 * h)
        assert np.abs(numeric - grad).max() / np.abs(numeric).max() < 1e-6, name
    np.testing.assert_allclose(dbias, r_grad.sum(axis=(0, 2)), rtol=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(rmax=0.5), "rmax"),
    (dict(dmax=-1.0), "dmax"),
    (dict(running_mean=None), "running_mean and running_var"),
    (dict(running_var=np.ones(3)), "running_var has shape"),
    (dict(eps=0.0), "eps"),
])
def test_bad_input_changes_nothing(backend, kw, match):
    x, _, params, running = _inputs((6, 4, 3), 1)
    args = {**params, **running, "training": True, **kw}
    before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    with pytest.raises(ValueError, match=match):
        nbn.batch_renorm(x, backend=backend, **args)
    for k, v in before.items():
        np.testing.assert_array_equal(args[k], v)
