"""Adversarial data against a float64 reference written by hand in the tests (not the library).

- large-mean float32 data (``1e4 + randn``, ``1e3 + 0.01 * randn``): statistics must be
  computed stably (never E[x^2] - E[x]^2 in float32), so the output keeps unit variance;
- constant groups: zero variance, eps > 0, the output is exactly the bias;
- float32 values near 1e30, whose squares overflow float32: no inf/nan, right answer.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from _helpers import (assert_close, backward, forward, group_rows, hand_backward, hand_forward,
                      hand_stats, make_params, param_bshape, rng_for, tol_for)

Config = namedtuple("Config", "op shape kw")
CONFIGS = [
    Config("batch_norm", (4, 3, 64), dict(training=True)),
    Config("batch_norm", (4, 64, 3), dict(training=True, axis=-1)),
    Config("layer_norm", (4, 3, 64), dict(axis=-1)),
    Config("rms_norm", (4, 3, 64), dict(axis=-1)),
    Config("group_norm", (4, 4, 64), dict(num_groups=2)),
    Config("instance_norm", (4, 3, 64), dict()),
    Config("group_norm", (4, 64, 4), dict(num_groups=2, axis=-1)),
    Config("instance_norm", (4, 64, 3), dict(axis=-1)),
]
CONFIG_IDS = ["batch_norm", "batch_norm-last", "layer_norm", "rms_norm", "group_norm", "instance_norm",
              "group_norm-last", "instance_norm-last"]
config_param = pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)


def _check_stats(cache, op, x, kw, tol):
    mean, rstd = hand_stats(op, x, kw)
    assert np.all(np.isfinite(cache.rstd))
    np.testing.assert_allclose(np.asarray(cache.rstd, np.float64).reshape(-1), rstd.reshape(-1),
                               rtol=tol, err_msg="cache.rstd")
    if op == "rms_norm":
        assert cache.mean is None
    else:
        std = 1.0 / rstd.reshape(-1)
        err = np.abs(np.asarray(cache.mean, np.float64).reshape(-1) - mean.reshape(-1))
        assert np.all(err <= tol * std + 4 * np.spacing(np.abs(mean.reshape(-1)).astype(x.dtype))), "cache.mean"


@pytest.mark.parametrize("offset, sigma", [(1e4, 1.0), (1e3, 0.01)], ids=["1e4+randn", "1e3+0.01randn"])
@config_param
def test_large_mean_float32(backend, cfg, offset, sigma):
    op = cfg.op
    rng = rng_for("large-mean", op, cfg.shape, offset)
    x = (offset + sigma * rng.standard_normal(cfg.shape)).astype(np.float32)
    dy = rng.standard_normal(cfg.shape).astype(np.float32)
    kw = dict(cfg.kw, eps=1e-8)  # eps far below sigma**2: the output should have unit variance
    # Compared with float64 arithmetic on the same (already quantized) float32 values, a stable
    # float32 computation is off by a few input ulps relative to sigma; E[x^2]-E[x]^2 is off by O(1).
    tol = 1e-5 if op == "rms_norm" else 8 * float(np.spacing(np.float32(offset))) / sigma

    y, cache = forward(op, x, backend, **kw)
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    y_hand = hand_forward(op, x, kw)
    np.testing.assert_allclose(y, y_hand, rtol=0, atol=tol, err_msg="y")
    if op != "rms_norm":
        yr, _ = group_rows(op, y.astype(np.float64), kw)
        np.testing.assert_allclose(yr.var(axis=1), 1.0, atol=max(2 * tol, 1e-4), err_msg="unit variance")
        np.testing.assert_allclose(yr.mean(axis=1), 0.0, atol=tol, err_msg="zero mean")
    _check_stats(cache, op, x, kw, tol)

    dx = backward(op, dy, cache)[0]
    dx_hand = hand_backward(op, x, dy, kw)[0]
    np.testing.assert_allclose(dx, dx_hand, rtol=0, atol=tol * np.abs(dx_hand).max(), err_msg="dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@config_param
def test_constant_groups_give_exactly_the_bias(backend, cfg, dtype):
    """Groups with zero variance: x - mean is exactly 0, so y is exactly bias (0 for RMS norm)."""
    op = cfg.op
    rng = rng_for("constant", op, cfg.shape, np.dtype(dtype).name)
    kw = make_params(rng, op, cfg.shape, cfg.kw, "wb", False, dtype)  # eps: the default, > 0
    x = rng.standard_normal(cfg.shape)
    rows, back = group_rows(op, x, kw)
    rows = rows.copy()
    constant = np.zeros(rows.shape[0], bool)
    constant[1::2] = True
    # values with few mantissa bits, so every partial sum is exact in float32 too
    values = np.array([3.75, -1.25, 1024.5, 0.5, -7.0, 10000.0])
    rows[constant] = 0.0 if op == "rms_norm" else values[np.arange(constant.sum()) % len(values), None]
    x = back(rows).astype(dtype)
    mask = back(np.repeat(constant[:, None], rows.shape[1], axis=1))
    dy = rng.standard_normal(cfg.shape).astype(dtype)

    y, cache = forward(op, x, backend, **kw)
    y_hand = hand_forward(op, x, kw)
    expected = y_hand.astype(dtype)
    if op == "rms_norm":
        assert np.all(expected[mask] == 0)
    else:  # the hand reference gives exactly the bias there
        bias = np.broadcast_to(kw["bias"].reshape(param_bshape(op, x.shape, kw)), x.shape)
        assert np.array_equal(expected[mask], bias[mask])
    np.testing.assert_array_equal(y[mask], expected[mask])
    assert_close(y[~mask], y_hand[~mask], tol_for(dtype), "y in the other groups")
    assert np.all(np.isfinite(cache.rstd))

    grads = backward(op, dy, cache)
    for name, g, g_hand in zip(("dx", "dweight", "dbias"), grads, hand_backward(op, x, dy, kw)):
        assert np.all(np.isfinite(g)), name
        assert_close(g, g_hand, tol_for(dtype), name)


@pytest.mark.parametrize("loc", [1.5, 0.0], ids=["1e30*(1.5+0.5randn)", "1e30*randn"])
@config_param
def test_values_near_1e30_float32(backend, cfg, loc):
    """Squares of these overflow float32: statistics must not be accumulated in float32 squares."""
    op = cfg.op
    rng = rng_for("1e30", op, cfg.shape, loc)
    x = (1e30 * (loc + 0.5 * rng.standard_normal(cfg.shape))).astype(np.float32)
    assert np.all(np.isfinite(x))
    dy = rng.standard_normal(cfg.shape).astype(np.float32)
    kw = make_params(rng, op, cfg.shape, cfg.kw, "wb", False, np.float32)
    tol = tol_for(np.float32)

    y, cache = forward(op, x, backend, **kw)
    assert np.all(np.isfinite(y)), "inf/nan in y"
    assert_close(y, hand_forward(op, x, kw), tol, "y")
    _check_stats(cache, op, x, kw, tol)

    grads = backward(op, dy, cache)
    for name, g, g_hand in zip(("dx", "dweight", "dbias"), grads, hand_backward(op, x, dy, kw)):
        assert np.all(np.isfinite(g)), f"inf/nan in {name}"
        assert_close(g, g_hand, tol, name)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])  # (the CUDA kernels keep the tolerance above)
@config_param
def test_large_mean_gradient_with_biased_dy(backend, cfg):
    """The CPU kernels' gradient sums ``sum(dy * (x - mean))``, taken against the mean rounded to
    float32, add back ``(rounded - mean) * sum(dy)``: with ``dy`` of mean 1 and
    ``x = 1e3 + 0.01 * randn``, leaving it out moves dx by several percent of its largest value;
    with it, dx is within 2e-7 of it. (The CUDA kernels work against the rounded mean and are
    off by 0.2-0.7% here: within :func:`test_large_mean_float32`'s tolerance, not this one's.)"""
    op = cfg.op
    rng = rng_for("biased-dy", op, cfg.shape)
    x = (1e3 + 0.01 * rng.standard_normal(cfg.shape)).astype(np.float32)
    dy = (1.0 + rng.standard_normal(cfg.shape)).astype(np.float32)
    kw = dict(cfg.kw, eps=1e-12)
    dx = backward(op, dy, forward(op, x, backend, **kw)[1])[0]
    dx_hand = hand_backward(op, x, dy, kw)[0]
    np.testing.assert_allclose(dx, dx_hand, rtol=0, atol=1e-5 * np.abs(dx_hand).max(), err_msg="dx")
