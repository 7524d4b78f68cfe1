"""SyncBatchNorm's local pieces on the GPU (:mod:`numbanorm.distributed` does the MPI).

The per-channel statistics primitive gives each rank's moments and gradient sums
on the device; only those per-channel vectors (C values each) are copied to the
host for MPI, and the totals back. Batch norm's eval path normalizes with the
statistics of the whole batch.
"""
import numpy as np

from .. import _host
from . import batch_norm, channelwise
from ._arrays import channels, give, is_host, to_device, to_host


def _host64(d):
    return d.copy_to_host().astype(np.float64)


# Eval (running statistics): batch norm itself, with no communication.
forward, backward = batch_norm.forward, batch_norm.backward


def local_moments(x, p):
    """``(state, mean, m2)``: this rank's mean and sum of squared deviations per channel, computed
    on the device, returned as float64 host vectors."""
    x3, _ = channels(x, p.axis, None)  # float16 as it is: the kernels compute in p.cdtype
    A, C, B = x3.shape
    state = (x3.reshape(x.shape), is_host(x))  # the device copy, for normalize
    if x3.size == 0:
        return state, np.zeros(C), np.zeros(C)
    mean, std, _ = channelwise.moments(x3, p.eps, p.cdtype)
    return state, _host64(mean), _host64(std) ** 2 * (A * B)


def normalize(state, p):
    """Batch norm with the given statistics (``p.running_mean``, ``p.running_var``): its eval path,
    on the device copy that :func:`local_moments` made."""
    xd, host = state
    y, mean, rstd, saved = batch_norm.forward(xd, p)
    return to_host(y, host), to_host(mean, host), to_host(rstd, host), saved


def update_running(running, stat, factor):
    """The running average with the float64 host statistic ``stat``, on the host or the device."""
    if is_host(running):
        _host.update_running(running, stat, factor)
    else:
        channelwise.update_running(running, to_device(stat.reshape(1, -1)), factor)


def grad_sums(dy, cache):
    """``(state, sum(dy), sum(dy * xhat))`` per channel over this rank's batch, as float64 host vectors."""
    p, s = cache.params, cache.saved
    dy3, undo = channels(dy, p["axis"], None)
    sum_dy, sum_dy_xhat = channelwise.grad_sums(s["x3"], dy3, s["mean"], s["rstd"])
    return (dy3, undo, sum_dy, sum_dy_xhat, is_host(dy)), _host64(sum_dy), _host64(sum_dy_xhat)


def grads(state, cache, total_dy, total_dy_xhat, count):
    """``(dx, dweight, dbias)``: dx from the sums over every rank's ``count`` values per channel;
    dweight and dbias are this rank's share."""
    p, s = cache.params, cache.saved
    dy3, undo, sum_dy, sum_dy_xhat, host = state
    dtype = p["cdtype"]
    dx3 = channelwise.dx_from_sums(s["x3"], dy3, s["mean"], s["rstd"], p["weight"], to_device(total_dy, dtype),
                                   to_device(total_dy_xhat, dtype), count, p["dtype"])
    dweight = None if p["weight"] is None else give(sum_dy_xhat, p["weight_dtype"], host)
    dbias = None if p["bias"] is None else give(sum_dy, p["bias_dtype"], host)
    return undo(dx3), dweight, dbias
