"""Batch norm on the CPU: the per-channel statistics primitive in either layout."""
import numpy as np

from .._host import channel_view, update_running
from . import channelwise
from ._kernel import outputs


def normalize_channels(x4, mean, var, eps, weight, bias, out=None):
    """``y = (x - mean) * rstd * weight + bias`` with float64 statistics per (o, c); returns y4, rstd."""
    rstd = 1.0 / np.sqrt(var + eps)
    scale = rstd if weight is None else rstd * weight
    shift = np.zeros_like(rstd) if bias is None else np.zeros_like(rstd) + bias
    return channelwise.scale_shift(x4, mean, scale, shift, out), rstd


def _pool_groups(mean, var, group_size):
    """Statistics of groups of ``group_size`` consecutive channels with equal counts (law of
    total variance), spread back to one per channel."""
    if group_size == 1:
        return mean, var
    group_mean = _spread(mean, group_size) / group_size
    return group_mean, _spread(var + np.square(mean - group_mean), group_size) / group_size


def normalize_samples(x4, eps, weight, bias, group_size=1):
    """Instance (or group) norm of ``x4`` (N, A, C, B): statistics per (sample, channel), pooled
    over groups of ``group_size`` channels; returns y4 and the float64 (N, C) mean and variance.

    Channels-last with several samples: a work item per sample
    (:func:`channelwise.normalize_per_sample`); else chunk by chunk of samples
    (:func:`channelwise.cache_chunks`), so each chunk is still in cache when it is normalized.
    """
    if x4.shape[3] == 1 and x4.shape[0] >= channelwise.SAMPLE_ITEMS_FROM:
        return channelwise.normalize_per_sample(x4, eps, weight, bias, group_size)
    y4 = outputs.empty_like(x4)
    mean, var = np.empty(x4.shape[0::2]), np.empty(x4.shape[0::2])
    for s in channelwise.cache_chunks(x4):
        _, m, v = channelwise.moments(x4[s])
        mean[s], var[s] = _pool_groups(m, v, group_size)
        normalize_channels(x4[s], mean[s], var[s], eps, weight, bias, out=y4[s])
    return y4, mean, var


def _spread(v, group_size):
    """Sum ``v`` (O, C) over consecutive groups of ``group_size`` channels, repeated back to (O, C)."""
    if group_size == 1:
        return v
    total = v.reshape(v.shape[0], -1, group_size).sum(axis=2)
    return np.repeat(total, group_size, axis=1)


def dx_coefficients(sum_dy, sum_dyx, n, rstd, weight, batch_stats, group_size=1):
    """``(alpha, beta, gamma)`` of ``dx = rstd * (alpha * dy + beta * (x - mean) + gamma)`` per (o, c),
    for :func:`.channelwise.dx`.

    ``sum_dy`` and ``sum_dyx = sum(dy * (x - mean))`` are per (o, c), over the
    ``n / group_size`` values of each channel; with batch statistics (over ``n``
    values per statistic) ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``
    for ``g = weight * dy``, with frozen ones ``dx = rstd * g``. SyncBatchNorm
    passes sums and ``n`` taken over every rank's batch.
    """
    w = np.ones(rstd.shape[1]) if weight is None else weight.astype(np.float64)
    if batch_stats:
        mean_g = _spread(w * sum_dy, group_size) / n
        mean_gxhat = rstd * _spread(w * sum_dyx, group_size) / n
        return w, -rstd * mean_gxhat, -mean_g
    return w, np.zeros_like(rstd), np.zeros_like(rstd)


def channel_grads(x4, dy4, mean, rstd, weight, bias, batch_stats, group_size=1):
    """(dx4, dweight, dbias) of :func:`normalize_channels`; statistics per (o, c), shared by
    ``group_size`` consecutive channels (group norm).

    With g = weight * dy and n values per statistic, batch statistics give
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, i.e.
    ``rstd * (weight * dy - rstd * mean(g * xhat) * (x - mean) - mean(g))``;
    frozen (running) statistics give ``dx = rstd * g``. Several samples (O > 1)
    go chunk by chunk, so x and dy are still in cache for dx; channels-last batch
    statistics of several samples, one work item per sample (:func:`channelwise.sample_grads`).
    """
    if batch_stats and x4.shape[3] == 1 and x4.shape[0] >= channelwise.SAMPLE_ITEMS_FROM:
        dx4, sum_dy, sum_dyx = channelwise.sample_grads(x4, dy4, mean, rstd, weight, group_size)
        dweight, dbias = (sum_dyx * rstd).sum(axis=0), sum_dy.sum(axis=0)
        return dx4, None if weight is None else dweight, None if bias is None else dbias
    dx4 = outputs.empty_like(x4)
    dweight, dbias = np.zeros(mean.shape[1]), np.zeros(mean.shape[1])
    n = x4.shape[1] * x4.shape[3] * group_size
    for s in channelwise.cache_chunks(x4, arrays=2):
        sum_dy, sum_dyx = channelwise.grad_sums(x4[s], dy4[s], mean[s])
        coefficients = dx_coefficients(sum_dy, sum_dyx, n, rstd[s], weight, batch_stats, group_size)
        channelwise.dx(x4[s], dy4[s], mean[s], rstd[s], *coefficients, out=dx4[s])
        dweight += (sum_dyx * rstd[s]).sum(axis=0)
        dbias += sum_dy.sum(axis=0)
    return dx4, None if weight is None else dweight, None if bias is None else dbias


def forward(x, p):
    x4 = channel_view(x, p.axis)[None]
    if p.training:
        n, mean, var = channelwise.moments(x4)
        if p.update_running:
            update_running(p.running_mean, mean[0], p.factor)
            update_running(p.running_var, var[0] * n / (n - 1), p.factor)
    else:
        mean, var = p.running_mean.astype(np.float64)[None], p.running_var.astype(np.float64)[None]
    y4, rstd = normalize_channels(x4, mean, var, p.eps, p.weight, p.bias)
    saved = {"x4": x4, "mean": mean, "rstd": rstd}
    return y4.reshape(x.shape), mean[0].astype(p.cdtype), rstd[0].astype(p.cdtype), saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dx4, dweight, dbias = channel_grads(s["x4"], channel_view(dy, p["axis"])[None], s["mean"], s["rstd"],
                                        p["weight"], p["bias"], p["training"])
    return dx4.reshape(dy.shape), dweight, dbias
