"""Batch norm on the CPU: the per-channel statistics primitive in either layout."""
import numpy as np

from .._host import channel_view, update_running
from . import channelwise


def normalize_channels(x3, mean, var, eps, weight, bias):
    """``y = (x - mean) * rstd * weight + bias`` per channel (float64 statistics); returns y3, rstd."""
    rstd = 1.0 / np.sqrt(var + eps)
    scale = rstd if weight is None else rstd * weight
    shift = np.zeros_like(rstd) if bias is None else bias.astype(np.float64)
    return channelwise.scale_shift(x3, mean, scale, shift), rstd


def channel_grads(x3, dy3, mean, rstd, weight, bias, batch_stats):
    """(dx3, dweight, dbias) of :func:`normalize_channels`.

    With g = weight * dy and n values per channel, batch statistics give
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, i.e.
    ``alpha * dy + beta * (x - mean) + gamma``; frozen (running) statistics
    give ``dx = rstd * g``.
    """
    sum_dy, sum_dyx = channelwise.grad_sums(x3, dy3, mean)
    alpha = rstd if weight is None else rstd * weight
    if batch_stats:
        n = x3.shape[0] * x3.shape[2]
        beta = -alpha * rstd * rstd * sum_dyx / n
        gamma = -alpha * sum_dy / n
    else:
        beta = gamma = np.zeros_like(rstd)
    dx3 = channelwise.dx(x3, dy3, mean, alpha, beta, gamma)
    dweight = None if weight is None else sum_dyx * rstd
    dbias = None if bias is None else sum_dy
    return dx3, dweight, dbias


def forward(x, p):
    x3 = channel_view(x, p.axis)
    if p.training:
        n, mean, var = channelwise.moments(x3)
        if p.update_running:
            update_running(p.running_mean, mean, p.factor)
            update_running(p.running_var, var * n / (n - 1), p.factor)
    else:
        mean, var = p.running_mean.astype(np.float64), p.running_var.astype(np.float64)
    y3, rstd = normalize_channels(x3, mean, var, p.eps, p.weight, p.bias)
    saved = {"x3": x3, "mean": mean, "rstd": rstd}
    return y3.reshape(x.shape), mean.astype(p.cdtype), rstd.astype(p.cdtype), saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dx3, dweight, dbias = channel_grads(s["x3"], channel_view(dy, p["axis"]), s["mean"], s["rstd"],
                                        p["weight"], p["bias"], p["training"])
    return dx3.reshape(dy.shape), dweight, dbias
