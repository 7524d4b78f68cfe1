"""numbanorm.layers in training: running statistics in train and eval, BatchRenorm's schedule,
folding batch norm into the layer before it, and a small model that learns."""
import numpy as np
import pytest
from _layer_cases import host
from numpy.lib.stride_tricks import sliding_window_view

import numbanorm as nbn
from numbanorm import layers as L

EPS = 1e-5


def _x(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 3).astype(np.float32)


def test_train_updates_running_stats_and_eval_uses_them(backend):
    bn = L.BatchNorm1d(3, backend=backend)
    bn.load_state_dict({"weight": [1.0, 2.0, 0.5], "bias": [0.0, 1.0, -1.0], "running_mean": [0.5, 0.0, -0.5],
                        "running_var": [1.0, 2.0, 0.5], "num_batches_tracked": np.array(0)})
    x = _x((8, 3))
    y = host(bn(x))
    mean, var = x.astype(np.float64).mean(0), x.astype(np.float64).var(0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + EPS) * [1, 2, 0.5] + [0, 1, -1], rtol=1e-4, atol=1e-5)
    state = bn.state_dict()
    np.testing.assert_allclose(state["running_mean"], 0.9 * np.array([0.5, 0.0, -0.5]) + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(state["running_var"], 0.9 * np.array([1.0, 2.0, 0.5]) + 0.1 * var * 8 / 7, rtol=1e-5)
    assert int(state["num_batches_tracked"]) == 1

    bn.eval()
    y = host(bn(x))
    expected = (x - state["running_mean"]) / np.sqrt(state["running_var"] + EPS) * [1, 2, 0.5] + [0, 1, -1]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    for key, value in bn.state_dict().items():  # eval writes nothing
        np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_momentum_none_is_the_cumulative_average():
    bn = L.BatchNorm2d(2, momentum=None)
    batches = [_x((3, 2, 2, 2), seed) for seed in range(4)]
    for x in batches:
        bn(x)
    means = [x.astype(np.float64).mean(axis=(0, 2, 3)) for x in batches]
    np.testing.assert_allclose(bn.buffers["running_mean"], np.mean(means, axis=0), rtol=1e-5)
    assert int(bn.buffers["num_batches_tracked"]) == 4


def test_without_running_stats_batch_statistics_are_used_in_eval():
    for layer in (L.BatchNorm1d(3, track_running_stats=False), L.InstanceNorm1d(3)):
        layer.eval()
        y = layer(_x((4, 3, 5)))
        axes = (0, 2) if isinstance(layer, L.BatchNorm) else (2,)
        np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
        assert layer.buffers == {}


def test_instance_norm_running_stats_in_eval():
    inorm = L.InstanceNorm1d(3, track_running_stats=True, momentum=1.0)
    x = _x((4, 3, 5))
    inorm(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(inorm.buffers["running_mean"], x64.mean(axis=2).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(inorm.buffers["running_var"], x64.var(axis=2, ddof=1).mean(axis=0), rtol=1e-5)
    inorm.eval()
    rm, rv = inorm.buffers["running_mean"].copy(), inorm.buffers["running_var"].copy()
    x2 = _x((2, 3, 5), seed=1)
    expected = (x2 - rm[:, None]) / np.sqrt(rv[:, None] + EPS)
    np.testing.assert_allclose(inorm(x2), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(inorm.buffers["running_mean"], rm)


# ----------------------------------------------------------------------------- BatchRenorm

def test_batch_renorm_schedule():
    brn = L.BatchRenorm1d(3)
    assert (brn.rmax, brn.dmax, brn.rmax_steps, brn.dmax_steps) == (3.0, 5.0, (5000, 40000), (5000, 25000))
    for step, rmax, dmax in [(0, 1.0, 0.0), (5000, 1.0, 0.0), (22500, 2.0, 4.375), (25000, 2 + 1 / 7, 5.0),
                             (40000, 3.0, 5.0), (10 ** 6, 3.0, 5.0)]:
        brn.buffers["step"][...] = step
        assert brn.current_rmax == pytest.approx(rmax) and brn.current_dmax == pytest.approx(dmax), step


def test_batch_renorm_step_advances_per_training_forward():
    brn = L.BatchRenorm1d(3, rmax=2.0, dmax=1.0, rmax_steps=(1, 3), dmax_steps=(0, 2))
    x = _x((6, 3))
    seen = []
    for _ in range(4):
        seen.append((brn.current_rmax, brn.current_dmax))
        brn(x)
    assert seen == [(1.0, 0.0), (1.0, 0.5), (1.5, 1.0), (2.0, 1.0)]
    assert int(brn.state_dict()["step"]) == 4 and int(brn.buffers["num_batches_tracked"]) == 4
    brn.eval()
    brn(x)
    assert int(brn.buffers["step"]) == 4, "eval forwards do not count"
    fresh = L.BatchRenorm1d(3)
    fresh.load_state_dict(brn.state_dict())
    assert int(fresh.buffers["step"]) == 4


def test_batch_renorm_starts_as_batch_norm(backend):
    x = _x((6, 3, 2))
    brn, bn = L.BatchRenorm1d(3, backend=backend), L.BatchNorm1d(3, backend=backend)
    state = bn.state_dict()
    state["running_mean"][...] = [5.0, -5.0, 0.0]  # far from the batch: r, d would clip if allowed
    brn.load_state_dict({**state, "step": np.array(0)}), bn.load_state_dict(state)
    np.testing.assert_allclose(host(brn(x)), host(bn(x)), rtol=1e-6, atol=1e-6)
    dy = _x((6, 3, 2), seed=3)
    np.testing.assert_allclose(host(brn.backward(dy)), host(bn.backward(dy)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(brn.state_dict()["running_mean"], bn.state_dict()["running_mean"], rtol=1e-6)


# ----------------------------------------------------------------------------- folding

def _conv2d(x, w, b):
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))  # (N, C, H', W', kh, kw)
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def _eval_bn(cls, channels, seed=0, **kw):
    rng = np.random.default_rng(seed)
    bn = cls(channels, dtype=np.float64, **kw)
    bn.load_state_dict({"weight": rng.uniform(0.5, 2, channels), "bias": rng.standard_normal(channels),
                        "running_mean": rng.standard_normal(channels), "running_var": rng.uniform(0.1, 3, channels),
                        "num_batches_tracked": np.array(10)}, strict=False)  # BatchRenorm keeps its step
    return bn.eval()


def test_fold_into_linear():
    rng = np.random.default_rng(1)
    w, b, x = rng.standard_normal((4, 5)), rng.standard_normal(4), rng.standard_normal((7, 5))
    bn = _eval_bn(L.BatchNorm1d, 4)
    fw, fb = L.fold_batch_norm(w, b, bn)
    np.testing.assert_allclose(x @ fw.T + fb, bn(x @ w.T + b), rtol=1e-12, atol=1e-12)
    fw, fb = L.fold_batch_norm(w.T, None, bn, axis=1)  # weight laid out (in, out); no bias
    np.testing.assert_allclose(x @ fw + fb, bn(x @ w.T), rtol=1e-12, atol=1e-12)


def test_fold_into_conv2d():
    rng = np.random.default_rng(2)
    w, b, x = rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4), rng.standard_normal((2, 3, 5, 4))
    for bn, layout in [(_eval_bn(L.BatchNorm2d, 4), (0, 1, 2, 3)), (_eval_bn(L.BatchNorm2d, 4, axis=-1), (0, 2, 3, 1)),
                       (_eval_bn(L.BatchRenorm2d, 4), (0, 1, 2, 3))]:
        fw, fb = L.fold_batch_norm(w.astype(np.float32), b.astype(np.float32), bn)
        assert fw.dtype == np.float32 and fb.dtype == np.float32 and fw.shape == w.shape
        expected = bn(_conv2d(x, w, b).transpose(layout)).transpose(np.argsort(layout))
        np.testing.assert_allclose(_conv2d(x, fw.astype(np.float64), fb.astype(np.float64)), expected,
                                   rtol=1e-5, atol=1e-5)
        fw, fb = L.fold_batch_norm(w, b, bn)
        np.testing.assert_allclose(_conv2d(x, fw, fb), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args, error, match", [
    (lambda bn: (np.ones((4, 5)), None, bn.train()), ValueError, "training mode"),
    (lambda bn: (np.ones((4, 5)), None, L.BatchNorm1d(4, track_running_stats=False).eval()), ValueError,
     "no running statistics"),
    (lambda bn: (np.ones((3, 5)), None, bn), ValueError, "3 outputs along axis 0, but bn has 4 features"),
    (lambda bn: (np.ones((4, 5)), np.ones(3), bn), ValueError, r"bias has shape \(3,\)"),
    (lambda bn: (np.ones((4, 5), np.int64), None, bn), TypeError, "int64"),
    (lambda bn: (np.ones((4, 5)), None, L.LayerNorm(4)), TypeError, "must be a BatchNorm layer"),
])
def test_fold_errors(args, error, match):
    bn = _eval_bn(L.BatchNorm1d, 4)
    with pytest.raises(error, match=match):
        L.fold_batch_norm(*args(bn))


# ----------------------------------------------------------------------------- learning

def test_small_model_learns(backend):
    """Linear -> BatchNorm1d -> softmax cross-entropy, plain SGD: the loss falls."""
    rng = np.random.default_rng(0)
    classes, features, n = 3, 4, 48
    centers = rng.standard_normal((classes, features)) * 2
    labels = rng.integers(0, classes, n)
    x = (centers[labels] + rng.standard_normal((n, features))).astype(np.float32)
    w = (0.1 * rng.standard_normal((classes, features))).astype(np.float32)
    bn = L.BatchNorm1d(classes, backend=backend)

    def loss_and_grad(z):
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(n), labels]).mean()
        p[np.arange(n), labels] -= 1
        return loss, (p / n).astype(np.float32)

    losses = []
    for _ in range(30):
        bn.zero_grad()
        loss, dz = loss_and_grad(host(bn(x @ w.T)))
        losses.append(loss)
        dh = host(bn.backward(dz))
        w -= 0.5 * dh.T @ x
        bn.load_state_dict({k: host(p) - 0.5 * host(bn.grads[k]) for k, p in bn.params.items()}, strict=False)
    assert losses[-1] < losses[10] < 0.5 * losses[0], losses
    bn.eval()
    accuracy = np.mean(host(bn(x @ w.T)).argmax(axis=1) == labels)
    assert accuracy > 0.8  # eval mode, with the running statistics (chance: 1/3)


@pytest.mark.cuda
def test_fold_device_arrays():
    if "cuda" not in nbn.available_backends():
        pytest.skip("the cuda backend is not available")
    from numba import cuda
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    bn = _eval_bn(L.BatchNorm1d, 4)
    expected = L.fold_batch_norm(w, b, bn)
    fw, fb = L.fold_batch_norm(cuda.to_device(w), cuda.to_device(b), bn.to("cuda"))
    assert not isinstance(fw, np.ndarray) and not isinstance(fb, np.ndarray)
    np.testing.assert_array_equal(fw.copy_to_host(), expected[0])
    np.testing.assert_array_equal(fb.copy_to_host(), expected[1])
