"""Running statistics of batch norm and instance norm, against a float64 re-computation.

``running = (1 - momentum) * running + momentum * stat`` in place, with the
unbiased variance (n / (n - 1)); ``momentum=None`` is the cumulative average
``1 / num_batches_tracked`` after incrementing the counter; eval updates nothing.
"""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import Snapshot, plain, rng_for

SETUPS = [
    pytest.param("batch_norm", (4, 3, 5), 1, id="batch_norm"),
    pytest.param("batch_norm", (4, 5, 3), -1, id="batch_norm-last"),
    pytest.param("batch_norm", (6, 3), 1, id="batch_norm-2d"),
    pytest.param("instance_norm", (4, 3, 5), 1, id="instance_norm"),
    pytest.param("instance_norm", (2, 4, 5, 3), -1, id="instance_norm-last"),
]
TRAIN = {"batch_norm": {"training": True}, "instance_norm": {"use_input_stats": True}}
EVAL = {"batch_norm": {"training": False}, "instance_norm": {"use_input_stats": False}}


def batch_stats(op, x, axis):
    """float64 (mean, unbiased variance) per channel, as folded into the running statistics."""
    m = np.moveaxis(x.astype(np.float64), axis, 1)
    m = m.reshape(m.shape[0], m.shape[1], -1)  # (N, C, S)
    if op == "batch_norm":
        n = m.shape[0] * m.shape[2]
        return m.mean(axis=(0, 2)), m.var(axis=(0, 2)) * n / (n - 1)
    s = m.shape[2]
    return m.mean(axis=2).mean(axis=0), (m.var(axis=2) * s / (s - 1)).mean(axis=0)


def _start(op, shape, axis, dtype, key):
    rng = rng_for("running", op, shape, axis, np.dtype(dtype).name, key)
    c = shape[axis]
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    xs = [(2.0 + 3.0 * rng.standard_normal(shape)).astype(dtype) for _ in range(3)]
    return rng, rm, rv, xs


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("op, shape, axis", SETUPS)
def test_momentum_running_average(backend, op, shape, axis, momentum, dtype):
    _, rm, rv, xs = _start(op, shape, axis, dtype, momentum)
    exp_m, exp_v = rm.astype(np.float64), rv.astype(np.float64)
    rm_id, rv_id = id(rm), id(rv)
    for x in xs:
        plain(op, x, backend, running_mean=rm, running_var=rv, momentum=momentum, axis=axis, **TRAIN[op])
        mean, var = batch_stats(op, x, axis)
        exp_m = (1 - momentum) * exp_m + momentum * mean
        exp_v = (1 - momentum) * exp_v + momentum * var
        assert rm.dtype == dtype and rv.dtype == dtype and id(rm) == rm_id and id(rv) == rv_id
        np.testing.assert_allclose(rm, exp_m, **_tol(dtype), err_msg="running_mean")
        np.testing.assert_allclose(rv, exp_v, **_tol(dtype), err_msg="running_var")


@pytest.mark.parametrize("start", [0, 4])
@pytest.mark.parametrize("op, shape, axis", SETUPS)
def test_momentum_none_is_cumulative_average(backend, op, shape, axis, start):
    dtype = np.float64
    _, rm, rv, xs = _start(op, shape, axis, dtype, start)
    nbt = np.full(1, start, np.int64)
    exp_m, exp_v = rm.copy(), rv.copy()
    means, variances = [], []
    for k, x in enumerate(xs, 1):
        plain(op, x, backend, running_mean=rm, running_var=rv, momentum=None, num_batches_tracked=nbt,
              axis=axis, **TRAIN[op])
        assert nbt.dtype == np.int64 and nbt.shape == (1,)
        assert nbt[0] == start + k
        mean, var = batch_stats(op, x, axis)
        means.append(mean)
        variances.append(var)
        factor = 1.0 / (start + k)
        exp_m = (1 - factor) * exp_m + factor * mean
        exp_v = (1 - factor) * exp_v + factor * var
        np.testing.assert_allclose(rm, exp_m, **_tol(dtype), err_msg="running_mean")
        np.testing.assert_allclose(rv, exp_v, **_tol(dtype), err_msg="running_var")
    if start == 0:  # from a fresh counter: the plain average of the batch statistics
        np.testing.assert_allclose(rm, np.mean(means, axis=0), **_tol(dtype))
        np.testing.assert_allclose(rv, np.mean(variances, axis=0), **_tol(dtype))


@pytest.mark.parametrize("op, shape, axis", SETUPS)
def test_counter_also_counts_with_a_momentum(backend, op, shape, axis):
    _, rm, rv, xs = _start(op, shape, axis, np.float64, "counter")
    nbt = np.zeros(1, np.int64)
    for k, x in enumerate(xs, 1):
        plain(op, x, backend, running_mean=rm, running_var=rv, momentum=0.1, num_batches_tracked=nbt,
              axis=axis, **TRAIN[op])
        assert nbt[0] == k


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("op, shape, axis", SETUPS)
def test_eval_updates_nothing(backend, op, shape, axis, momentum):
    _, rm, rv, xs = _start(op, shape, axis, np.float32, "eval")
    nbt = np.full(1, 3, np.int64)
    snap = Snapshot(running_mean=rm, running_var=rv, num_batches_tracked=nbt)
    for x in xs:
        y = plain(op, x, backend, running_mean=rm, running_var=rv, momentum=momentum,
                  num_batches_tracked=nbt, axis=axis, **EVAL[op])
        assert np.all(np.isfinite(y))
    snap.assert_unchanged()


@pytest.mark.parametrize("op, shape, axis", SETUPS)
def test_training_without_running_stats_counts_nothing(backend, op, shape, axis):
    _, _, _, xs = _start(op, shape, axis, np.float64, "nostats")
    nbt = np.full(1, 2, np.int64)
    for x in xs:
        plain(op, x, backend, num_batches_tracked=nbt, axis=axis, **TRAIN[op])
    assert nbt[0] == 2


@pytest.mark.parametrize("op, shape, axis", SETUPS)
def test_eval_accepts_read_only_running_stats(backend, op, shape, axis):
    _, rm, rv, xs = _start(op, shape, axis, np.float64, "readonly")
    ro_m, ro_v = rm.copy(), rv.copy()
    ro_m.setflags(write=False)
    ro_v.setflags(write=False)
    y_ro = plain(op, xs[0], backend, running_mean=ro_m, running_var=ro_v, axis=axis, **EVAL[op])
    y_rw = plain(op, xs[0], backend, running_mean=rm, running_var=rv, axis=axis, **EVAL[op])
    np.testing.assert_array_equal(y_ro, y_rw)
    # and eval really normalizes with the running statistics
    m = np.moveaxis(xs[0], axis, 1)
    bshape = (1, -1) + (1,) * (m.ndim - 2)
    expected = (m - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + 1e-5)
    np.testing.assert_allclose(np.moveaxis(y_rw, axis, 1), expected, rtol=1e-12, atol=1e-12)
