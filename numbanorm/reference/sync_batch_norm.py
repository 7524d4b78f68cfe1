"""Reference pieces of SyncBatchNorm (see :mod:`numbanorm.distributed`, which does the MPI).

Each rank's per-channel moments and gradient sums, which the ranks add up, and
the gradient from the totals; normalizing is batch norm's eval path, fed the
statistics of the whole batch.
"""
import numpy as np

from .._host import update_running  # noqa: F401  (the running average, on the host)
from . import batch_norm
from ._common import channel_shape, other_axes


# Eval (running statistics): batch norm itself, with no communication.
forward, backward = batch_norm.forward, batch_norm.backward


def local_moments(x, p):
    """``(state, mean, m2)``: this rank's float64 mean and sum of squared deviations per channel."""
    x64 = x.astype(np.float64)
    axes = other_axes(x.ndim, p.axis)
    if x.size == 0:
        return x, np.zeros(x.shape[p.axis]), np.zeros(x.shape[p.axis])
    mean = x64.mean(axis=axes)
    m2 = np.square(x64 - mean.reshape(channel_shape(x.ndim, p.axis))).sum(axis=axes)
    return x, mean, m2


def normalize(x, p):
    """Batch norm with the given statistics (``p.running_mean``, ``p.running_var``): its eval path."""
    return batch_norm.forward(x, p)


def grad_sums(dy, cache):
    """``(state, sum(dy), sum(dy * xhat))`` per channel, float64, over this rank's batch."""
    p, xhat = cache.params, cache.saved["xhat"]
    dy = dy.astype(np.float64)
    axes = other_axes(dy.ndim, p["axis"])
    sum_dy, sum_dy_xhat = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    return (dy, sum_dy, sum_dy_xhat), sum_dy, sum_dy_xhat


def grads(state, cache, total_dy, total_dy_xhat, count):
    """``(dx, dweight, dbias)``: dx from the sums over every rank's ``count`` values per channel,
    ``dx = rstd * weight * (dy - (sum(dy) + xhat * sum(dy * xhat)) / count)``; dweight and
    dbias are this rank's share."""
    p, s = cache.params, cache.saved
    dy, sum_dy, sum_dy_xhat = state
    shape = channel_shape(dy.ndim, p["axis"])
    w = np.ones_like(total_dy) if p["weight"] is None else p["weight"].astype(np.float64)
    dx = (s["rstd"] * w).reshape(shape) * (
        dy - (total_dy.reshape(shape) + s["xhat"] * total_dy_xhat.reshape(shape)) / count)
    dweight = None if p["weight"] is None else sum_dy_xhat
    dbias = None if p["bias"] is None else sum_dy
    return tuple(None if a is None else a.astype(p["cdtype"]) for a in (dx, dweight, dbias))
