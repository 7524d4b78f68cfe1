"""numbanorm.layers: every layer against the functional op it wraps, on every backend;
gradient accumulation, modes, errors."""
import numpy as np
import pytest
from _helpers import assert_close
from _layer_cases import CASES, host, inputs, randomized

import numbanorm as nbn
from numbanorm import layers as L

TOL = 2e-5  # float32 layer on any backend vs the float64 numpy reference


def _reference(case, layer, x_inputs, dy, training):
    """The functional ops on the numpy backend, with a copy of the layer's state: ``(y, dx, grads, state)``."""
    state = layer.state_dict()
    s = {k: a.astype(np.float64) if a.dtype.kind == "f" else a for k, a in state.items()}
    y, cache = case.call(*(x_inputs or (None,)), s, training, "numpy")
    if dy is None:
        dy = np.cos(np.arange(y.size)).reshape(y.shape)
    outs = case.backward(dy, cache)
    dx, grads = (None, outs) if case.shape is None else (outs[0], outs[1:])  # wrappers have no input
    return y, dy, dx, dict(zip(case.grads, grads)), s


@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward_match_functional(name, backend):
    case = CASES[name]
    layer = randomized(case.make(backend=backend))
    x_inputs, dy = inputs(case)
    for training in (True, False):
        layer.train(training)
        layer.zero_grad()
        y_ref, dy, dx_ref, grads_ref, state_ref = _reference(case, layer, x_inputs, dy, training)
        y = layer(*x_inputs)
        dx = layer.backward(dy.astype(np.float32))
        assert_close(host(y), y_ref, TOL, "y")
        assert_close(host(dx), dx_ref, TOL, "dx")
        for key, g in layer.grads.items():
            expected = grads_ref.get(key)
            assert_close(host(g), np.zeros(g.shape) if expected is None else expected, TOL, f"grad {key}")
        after = layer.state_dict()
        assert after.keys() == state_ref.keys()
        for key, a in after.items():  # running statistics, counters and u, v updated (or not) alike
            if key in layer.buffers:
                assert_close(a, state_ref[key], TOL, key)


@pytest.mark.parametrize("name", list(CASES))
def test_grads_accumulate_until_zero_grad(name):
    case = CASES[name]
    layer = randomized(case.make())
    x_inputs, dy = inputs(case)
    y = layer(*x_inputs)
    dy = np.ones_like(y) if dy is None else dy
    layer.backward(dy)
    once = {k: g.copy() for k, g in layer.grads.items()}
    assert once.keys() == layer.params.keys()
    refs = {k: g for k, g in layer.grads.items()}
    layer.backward(dy)
    for k, g in layer.grads.items():
        assert g is refs[k], "grads are accumulated in place"
        np.testing.assert_allclose(g, 2 * once[k], rtol=1e-6, atol=1e-6)
    layer.zero_grad()
    for k, g in layer.grads.items():
        assert g is refs[k] and not g.any()


@pytest.mark.parametrize("name", list(CASES))
def test_backward_before_forward_is_an_error(name):
    case = CASES[name]
    layer = case.make()
    with pytest.raises(RuntimeError, match="needs a forward"):
        layer.backward(np.ones(case.shape or (1,), np.float32))
    assert all(not g.any() for g in layer.grads.values())


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n].shape is not None])
def test_bad_input_changes_nothing(name):
    case = CASES[name]
    layer = randomized(case.make())
    (x,), dy = inputs(case)
    layer(x)
    layer.backward(dy)
    before = layer.state_dict()
    grads = {k: g.copy() for k, g in layer.grads.items()}
    bad = np.ones(tuple(n + 1 for n in x.shape), np.float32)
    if name == "LocalResponseNorm":  # any channel count works: give it integers
        bad = bad.astype(np.int64)
    with pytest.raises((ValueError, TypeError)):
        layer(bad)
    with pytest.raises(ValueError):
        layer.backward(np.ones((1,) * x.ndim, np.float32))  # dy of the wrong shape for the last forward
    for k, a in layer.state_dict().items():
        np.testing.assert_array_equal(a, before[k])
    for k, g in layer.grads.items():
        np.testing.assert_array_equal(g, grads[k])
    np.testing.assert_array_equal(layer.backward(dy), layer.backward(dy))  # the last good forward's cache stays


def test_input_rank_and_channel_checks():
    with pytest.raises(ValueError, match=r"BatchNorm2d expects 4-D input \(N, C, H, W\), got shape \(2, 3\)"):
        L.BatchNorm2d(3)(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d expects 2-D or 3-D input"):
        L.BatchNorm1d(3)(np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"InstanceNorm1d expects 3-D input"):
        L.InstanceNorm1d(3)(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"expects 3 channels along axis -1"):
        L.BatchNorm2d(3, axis=-1, affine=False, track_running_stats=False)(np.ones((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"normalized_shape=\(4,\)"):
        L.LayerNorm(4)(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"normalized_shape=\(2, 3\)"):
        L.RMSNorm((2, 3), elementwise_affine=False)(np.ones((3,), np.float32))
    with pytest.raises(ValueError, match="expects 4 channels"):
        L.GroupNorm(2, 4, affine=False)(np.ones((2, 6, 3), np.float32))
    with pytest.raises(TypeError, match="int64"):
        L.LayerNorm(3)(np.ones((2, 3), np.int64))


@pytest.mark.parametrize("make, error, match", [
    (lambda: L.BatchNorm1d(0), ValueError, "num_features must be a positive integer"),
    (lambda: L.BatchNorm1d(3.0), ValueError, "num_features"),
    (lambda: L.BatchNorm1d(3, eps=0), ValueError, "eps must be a positive number"),
    (lambda: L.BatchNorm1d(3, momentum=1.5), ValueError, r"momentum must be a number in \[0, 1\]"),
    (lambda: L.BatchNorm1d(3, axis=1.0), TypeError, "axis must be an integer"),
    (lambda: L.BatchNorm1d(3, dtype=np.int32), TypeError, "dtype int32 is not supported"),
    (lambda: L.BatchNorm1d(3, backend="tpu"), ValueError, "unknown backend 'tpu'"),
    (lambda: L.BatchRenorm1d(3, rmax=0.5), ValueError, "rmax must be a number >= 1"),
    (lambda: L.BatchRenorm1d(3, dmax_steps=(10, 5)), ValueError, "0 <= first <= last"),
    (lambda: L.GroupNorm(3, 4), ValueError, r"num_channels \(4\) must be divisible by num_groups \(3\)"),
    (lambda: L.LayerNorm(()), ValueError, "at least one dimension"),
    (lambda: L.LayerNorm("a"), TypeError, "normalized_shape must be an int or a tuple"),
    (lambda: L.LocalResponseNorm(0), ValueError, "size must be a positive integer"),
    (lambda: L.GroupNorm(2, 4, axis="1"), TypeError, "axis must be an integer"),
    (lambda: L.LayerNorm((2, 3), axis=1), ValueError, "names 1 axes; normalized_shape has 2"),
    (lambda: L.RMSNorm(3, axis=1.5), TypeError, "axis must be None, an int or a tuple of ints"),
    (lambda: L.WeightNorm(np.ones((2, 3)), dim=2), ValueError, "dim=2 is out of range"),
    (lambda: L.WeightNorm(np.ones((2, 3), np.int64)), TypeError, "int64"),
    (lambda: L.SpectralNorm(np.ones((2, 3)), n_power_iterations=0), ValueError, "n_power_iterations"),
    (lambda: L.SpectralNorm(np.ones((2, 3)), dim=None), TypeError, "dim must be an integer"),
])
def test_constructor_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_modes_and_repr():
    bn = L.BatchNorm2d(4)
    assert bn.training
    assert bn.eval() is bn and not bn.training
    assert bn.train() is bn and bn.training
    assert bn.train(False) is bn and not bn.training
    assert repr(bn) == ("BatchNorm2d(num_features=4, eps=1e-05, momentum=0.1, affine=True, "
                        "track_running_stats=True, axis=1)")
    assert repr(L.GroupNorm(2, 4)) == "GroupNorm(num_groups=2, num_channels=4, eps=1e-05, affine=True, axis=1)"


def test_defaults_follow_pytorch():
    bn = L.BatchNorm1d(5)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.axis) == (1e-5, 0.1, True, True, 1)
    assert bn.params["weight"].dtype == np.float32 and bn.buffers["num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(bn.params["weight"], 1)
    np.testing.assert_array_equal(bn.params["bias"], 0)
    np.testing.assert_array_equal(bn.buffers["running_mean"], 0)
    np.testing.assert_array_equal(bn.buffers["running_var"], 1)
    inorm = L.InstanceNorm2d(5)
    assert not inorm.affine and not inorm.track_running_stats and inorm.params == {} and inorm.buffers == {}
    assert L.RMSNorm(3).eps is None
    assert L.LayerNorm(3, dtype=np.float64).params["bias"].dtype == np.float64
    assert isinstance(bn, L.Module) and isinstance(L.BatchRenorm2d(3), L.BatchNorm)
    assert nbn.BatchNorm2d is L.BatchNorm2d and nbn.layers is L


def test_weight_wrappers_start_from_the_weight():
    w = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    for wn in (L.WeightNorm(w), L.WeightNorm(w, dim=1), L.WeightNorm(w, dim=None), L.WeightNorm(w, log_scale=True)):
        np.testing.assert_allclose(wn(), w, rtol=1e-5, atol=1e-6)
        assert wn.dtype == np.float32
    sn = L.SpectralNorm(w.astype(np.float64), rng=0, n_power_iterations=50)
    np.testing.assert_allclose(np.linalg.svd(sn().reshape(4, -1), compute_uv=False)[0], 1.0, rtol=1e-6)
    sn.eval()
    u = sn.buffers["weight_u"].copy()
    sn()
    np.testing.assert_array_equal(sn.buffers["weight_u"], u)  # no power iteration in eval
    assert L.WeightNorm(w, name="kernel").params.keys() == {"kernel_g", "kernel_v"}


def test_layers_import_no_cuda():
    import subprocess
    import sys
    code = "import sys, numbanorm; numbanorm.layers.BatchNorm1d(3); print('numba.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
