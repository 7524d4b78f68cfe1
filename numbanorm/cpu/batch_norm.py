"""Batch norm on the CPU: the per-channel statistics primitive in either layout."""
import numpy as np

from .._host import channel_view
from . import channelwise
from ._kernel import outputs, param


def normalize_channels(x4, mean, var, eps, weight, bias, out=None):
    """``y = (x - mean) * rstd * weight + bias`` with float64 statistics per (o, c); returns y4, rstd."""
    C = x4.shape[2]
    rstd, m_hi, scale, shift = channelwise.affine_terms(x4, mean, var, eps, param(weight, C, 1.0, x4.dtype),
                                                        param(bias, C, 0.0, x4.dtype))
    return channelwise.apply(x4, m_hi, scale, shift, out), rstd


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
        _, mean[s], var[s] = channelwise.moments(x4[s])
        channelwise.pool_group_moments(mean[s], var[s], group_size)
        normalize_channels(x4[s], mean[s], var[s], eps, weight, bias, out=y4[s])
    return y4, mean, var


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
        dweight, dbias = np.zeros(mean.shape[1]), np.zeros(mean.shape[1])
        channelwise.add_param_grads(sum_dy, sum_dyx, rstd, dweight, dbias)
        return dx4, None if weight is None else dweight, None if bias is None else dbias
    dx4 = outputs.empty_like(x4)
    C = mean.shape[1]
    dweight, dbias = np.zeros(C), np.zeros(C)
    n = x4.shape[1] * x4.shape[3] * group_size
    w = param(weight, C, 1.0, np.float64)
    for s in channelwise.cache_chunks(x4, arrays=2):
        sum_dy, sum_dyx = channelwise.grad_sums(x4[s], dy4[s], mean[s])
        terms = channelwise.dx_terms(x4, mean[s], rstd[s], sum_dy, sum_dyx, n, w, batch_stats, group_size)
        channelwise.dx_apply(x4[s], dy4[s], *terms, out=dx4[s])
        channelwise.add_param_grads(sum_dy, sum_dyx, rstd[s], dweight, dbias)
    return dx4, None if weight is None else dweight, None if bias is None else dbias


_NO_STATISTICS = np.zeros(0)  # small_forward's running statistics when there are none to update


def _small(x, running):
    """Whether a call takes the one-call path: few elements, and running statistics Numba can index."""
    return x.size < channelwise.SMALL_BELOW and all(a is None or a.dtype in channelwise.INDEXABLE for a in running)


def _small_forward(x, p):
    x3 = channel_view(x, p.axis)
    C = x3.shape[1]
    y3 = np.empty_like(x3)
    mean, rstd = np.empty((1, C)), np.empty((1, C))
    running = (p.running_mean, p.running_var) if p.update_running else (_NO_STATISTICS, _NO_STATISTICS)
    given = (_NO_STATISTICS, _NO_STATISTICS) if p.training else (p.running_mean, p.running_var)
    channelwise.small_forward(x3, y3, param(p.weight, C, 1.0, x3.dtype), param(p.bias, C, 0.0, x3.dtype), p.eps,
                              p.training, p.update_running, *running, p.factor, *given, mean, rstd)
    return y3.reshape(x.shape), mean[0], rstd[0], {"x4": x3[None], "mean": mean, "rstd": rstd}


def forward(x, p):
    if _small(x, (p.running_mean, p.running_var)):
        return _small_forward(x, p)
    x4 = channel_view(x, p.axis)[None]
    if p.training:
        n, mean, var = channelwise.moments(x4)
        if p.update_running:
            channelwise.update_running_stats(p.running_mean, p.running_var, mean[0], var[0], n, p.factor)
    else:
        mean, var = p.running_mean.astype(np.float64)[None], p.running_var.astype(np.float64)[None]
    y4, rstd = normalize_channels(x4, mean, var, p.eps, p.weight, p.bias)
    saved = {"x4": x4, "mean": mean, "rstd": rstd}
    return y4.reshape(x.shape), mean[0], rstd[0], saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    x4 = s["x4"]
    if x4.size < channelwise.SMALL_BELOW:
        x3 = x4[0]
        C = x3.shape[1]
        dx3, dweight, dbias = np.empty_like(x3), np.empty(C), np.empty(C)
        channelwise.small_backward(x3, channel_view(dy, p["axis"]), dx3, s["mean"], s["rstd"],
                                   param(p["weight"], C, 1.0, np.float64), p["training"], dweight, dbias)
        return (dx3.reshape(dy.shape), None if p["weight"] is None else dweight,
                None if p["bias"] is None else dbias)
    dx4, dweight, dbias = channel_grads(s["x4"], channel_view(dy, p["axis"])[None], s["mean"], s["rstd"],
                                        p["weight"], p["bias"], p["training"])
    return dx4.reshape(dy.shape), dweight, dbias
