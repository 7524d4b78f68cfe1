"""SyncBatchNorm's local pieces on the CPU (:mod:`numbanorm.distributed` does the MPI):
the per-channel statistics primitive gives each rank's moments and gradient sums,
batch norm's eval path normalizes with the statistics of the whole batch, and
``dx`` takes the coefficients of batch norm's backward from the summed totals."""

import numpy as np

from .._host import channel_view, update_running  # noqa: F401  (the running average, on the host)
from . import batch_norm, channelwise
from ._kernel import param


# Eval (running statistics): batch norm itself, with no communication.
forward, backward = batch_norm.forward, batch_norm.backward


def local_moments(x, p):
    """``(state, mean, m2)``: this rank's float64 mean and sum of squared deviations per channel."""
    _, mean, m2 = channelwise.moments_m2(channel_view(x, p.axis)[None])
    return x, mean[0], m2[0]


def normalize(x, p):
    """Batch norm with the given statistics (``p.running_mean``, ``p.running_var``): its eval path."""
    return batch_norm.forward(x, p)


def grad_sums(dy, cache):
    """``(state, sum(dy), sum(dy * (x - mean)))`` per channel, float64, over this rank's batch."""
    p, s = cache.params, cache.saved
    dy4 = channel_view(dy, p["axis"])[None]
    sum_dy, sum_dyx = channelwise.grad_sums(s["x4"], dy4, s["mean"])
    return (dy4, sum_dy, sum_dyx), sum_dy[0], sum_dyx[0]


def grads(state, cache, total_dy, total_dyx, count):
    """``(dx, dweight, dbias)``: dx from the sums over every rank's ``count`` values per channel
    (batch norm's coefficients); dweight and dbias are this rank's share."""
    p, s = cache.params, cache.saved
    dy4, sum_dy, sum_dyx = state
    C = total_dy.shape[0]
    terms = channelwise.dx_terms(s["x4"], s["mean"], s["rstd"], total_dy[None], total_dyx[None], count,
                                 param(p["weight"], C, 1.0, np.float64), True, 1)
    dx4 = channelwise.dx_apply(s["x4"], dy4, *terms)
    dweight = None if p["weight"] is None else (sum_dyx * s["rstd"])[0]
    dbias = None if p["bias"] is None else sum_dy[0]
    return dx4.reshape(p["shape"]), dweight, dbias
