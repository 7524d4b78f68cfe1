"""Property-based tests (Hypothesis) of what normalization means, on every backend.

Inputs are 3-D (N, C, L) or channels-last (N, L, C), float32 or float64, drawn
as ``loc + scale * randn`` with a seed from Hypothesis, so every normalization
group has a variance far above eps and the properties hold to rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from _helpers import backward, forward, group_rows

TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}


@st.composite
def inputs(draw, min_spatial=2, scale_range=(0.5, 10.0)):
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 3, 4, 6]))
    spatial = draw(st.integers(min_spatial, 6))
    channels_last = draw(st.booleans())
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    seed = draw(st.integers(0, 2**32 - 1))
    loc = draw(st.floats(-10.0, 10.0))
    scale = draw(st.floats(*scale_range))
    rng = np.random.default_rng(seed)
    shape = (n, spatial, c) if channels_last else (n, c, spatial)
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    return x, (-1 if channels_last else 1), rng


def _check_normalized(op, x, y, kw, center=True):
    """Each group of y has mean 0 and variance v/(v + eps) (mean square for RMS norm)."""
    tol = TOL[x.dtype]
    xr, _ = group_rows(op, x.astype(np.float64), kw)
    yr, _ = group_rows(op, y.astype(np.float64), kw)
    eps = kw["eps"]
    if center:
        v = xr.var(axis=1)
        assume(v.min() > 1e-2)
        np.testing.assert_allclose(yr.mean(axis=1), 0.0, atol=tol * 10)
        np.testing.assert_allclose(yr.var(axis=1), v / (v + eps), rtol=tol * 10, atol=0)
    else:
        ms = np.mean(xr * xr, axis=1)
        assume(ms.min() > 1e-2)
        np.testing.assert_allclose(np.mean(yr * yr, axis=1), ms / (ms + eps), rtol=tol * 10, atol=0)


@given(data=st.data())
def test_batch_norm_training_output_is_standardized(backend, data):
    x, axis, _ = data.draw(inputs())
    assume(x.size // x.shape[axis] > 1)
    kw = dict(training=True, axis=axis, eps=1e-5)
    y = forward("batch_norm", x, backend, **kw)[0]
    _check_normalized("batch_norm", x, y, kw)


@given(data=st.data())
def test_layer_norm_output_is_standardized(backend, data):
    x, _, _ = data.draw(inputs())
    kw = dict(axis=data.draw(st.sampled_from([-1, 1, (1, 2)])), eps=1e-5)
    y = forward("layer_norm", x, backend, **kw)[0]
    _check_normalized("layer_norm", x, y, kw)


@given(data=st.data())
def test_rms_norm_output_has_unit_mean_square(backend, data):
    x, _, _ = data.draw(inputs())
    kw = dict(axis=data.draw(st.sampled_from([-1, 1, (1, 2)])), eps=1e-6)
    y = forward("rms_norm", x, backend, **kw)[0]
    _check_normalized("rms_norm", x, y, kw, center=False)


@given(data=st.data())
def test_group_norm_output_is_standardized(backend, data):
    x, axis, _ = data.draw(inputs())
    c = x.shape[axis]
    g = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
    kw = dict(num_groups=g, axis=axis, eps=1e-5)
    y = forward("group_norm", x, backend, **kw)[0]
    _check_normalized("group_norm", x, y, kw)


@given(data=st.data())
def test_instance_norm_output_is_standardized(backend, data):
    x, axis, _ = data.draw(inputs())
    kw = dict(axis=axis, eps=1e-5)
    y = forward("instance_norm", x, backend, **kw)[0]
    _check_normalized("instance_norm", x, y, kw)


# ----------------------------------------------------------------------------- invariance

def _op_kwargs(draw, op, x, axis):
    if op == "batch_norm":
        return dict(training=True, axis=axis)
    if op == "layer_norm":
        return dict(axis=draw(st.sampled_from([-1, 1, (1, 2)])))
    if op == "group_norm":
        c = x.shape[axis]
        return dict(num_groups=draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0])), axis=axis)
    return dict(axis=axis)


@pytest.mark.parametrize("op", ["batch_norm", "layer_norm", "group_norm", "instance_norm"])
@given(data=st.data())
def test_output_invariant_to_affine_change_of_input(backend, op, data):
    """y(a * x + b) == y(x) for a > 0 (eps tiny, so that it does not break the invariance)."""
    x, axis, _ = data.draw(inputs(scale_range=(1.0, 5.0)))
    kw = _op_kwargs(data.draw, op, x, axis)
    kw["eps"] = 1e-20
    xr, _ = group_rows(op, x.astype(np.float64), kw)
    assume(xr.var(axis=1).min() > 1e-2)
    a = data.draw(st.floats(0.5, 4.0))
    b = data.draw(st.floats(-5.0, 5.0))
    x2 = (a * x.astype(np.float64) + b).astype(x.dtype)
    y1 = forward(op, x, backend, **kw)[0]
    y2 = forward(op, x2, backend, **kw)[0]
    tol = 1e-3 if x.dtype == np.float32 else 1e-9  # float32: a*x+b is rounded on the way in
    np.testing.assert_allclose(y2, y1, atol=tol * max(1.0, np.abs(y1).max()), rtol=0)


@given(data=st.data())
def test_rms_norm_invariant_to_positive_scaling(backend, data):
    x, _, _ = data.draw(inputs(scale_range=(1.0, 5.0)))
    kw = dict(axis=data.draw(st.sampled_from([-1, 1, (1, 2)])), eps=1e-30)
    xr, _ = group_rows("rms_norm", x.astype(np.float64), kw)
    assume(np.mean(xr * xr, axis=1).min() > 1e-2)
    a = data.draw(st.floats(0.01, 100.0))
    y1 = forward("rms_norm", x, backend, **kw)[0]
    y2 = forward("rms_norm", (a * x.astype(np.float64)).astype(x.dtype), backend, **kw)[0]
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y2, y1, atol=tol * max(1.0, np.abs(y1).max()), rtol=0)


# ----------------------------------------------------------------------------- equivalences

def _close(a, b, dtype, name):
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()), err_msg=name)


@given(data=st.data())
def test_group_norm_with_one_group_per_channel_is_instance_norm(backend, data):
    x, axis, rng = data.draw(inputs())
    c = x.shape[axis]
    affine = data.draw(st.booleans())
    kw = dict(axis=axis)
    if affine:
        kw.update(weight=rng.standard_normal(c).astype(x.dtype), bias=rng.standard_normal(c).astype(x.dtype))
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    y_g, cache_g = forward("group_norm", x, backend, num_groups=c, **kw)
    y_i, cache_i = forward("instance_norm", x, backend, **kw)
    _close(y_g, y_i, x.dtype, "y")
    _close(cache_g.mean, cache_i.mean, x.dtype, "mean")
    _close(cache_g.rstd, cache_i.rstd, x.dtype, "rstd")
    for name, a, b in zip(("dx", "dweight", "dbias"), backward("group_norm", dy, cache_g),
                          backward("instance_norm", dy, cache_i)):
        if b is None:
            assert a is None
        else:
            _close(a, b, x.dtype, name)


@given(data=st.data())
def test_group_norm_with_one_group_is_layer_norm_over_non_batch_axes(backend, data):
    x, _, rng = data.draw(inputs())
    n, c, length = x.shape  # read every draw as channels-first (N, C, L)
    affine = data.draw(st.booleans())
    kw_g, kw_l = {}, {}
    if affine:
        w = rng.standard_normal(c).astype(x.dtype)
        b = rng.standard_normal(c).astype(x.dtype)
        kw_g = dict(weight=w, bias=b)
        kw_l = dict(weight=np.repeat(w[:, None], length, axis=1), bias=np.repeat(b[:, None], length, axis=1))
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    y_g, cache_g = forward("group_norm", x, backend, num_groups=1, **kw_g)
    y_l, cache_l = forward("layer_norm", x, backend, axis=(1, 2), **kw_l)
    _close(y_g, y_l, x.dtype, "y")
    _close(cache_g.mean.reshape(n), cache_l.mean, x.dtype, "mean")
    _close(cache_g.rstd.reshape(n), cache_l.rstd, x.dtype, "rstd")
    g_g = backward("group_norm", dy, cache_g)
    g_l = backward("layer_norm", dy, cache_l)
    _close(g_g[0], g_l[0], x.dtype, "dx")
    if affine:
        _close(g_g[1], g_l[1].sum(axis=1), x.dtype, "dweight")
        _close(g_g[2], g_l[2].sum(axis=1), x.dtype, "dbias")
    else:
        assert g_g[1] is None and g_l[1] is None
