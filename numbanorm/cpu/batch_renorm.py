"""Batch renormalization on the CPU: batch norm's per-channel primitive with the
corrections r and d folded into the per-channel scale and shift.

``y = weight * (xhat * r + d) + bias`` is ``(x - mu_B) * (weight * r / sigma_B) +
(weight * d + bias)``; with r, d constant its gradient is batch norm's with the
weight ``weight * r``.
"""
import numpy as np

from .._host import channel_view, renorm_correction
from . import batch_norm, channelwise


def forward(x, p):
    if not p.training:
        return batch_norm.forward(x, p)
    x4 = channel_view(x, p.axis)[None]
    n, mean, var = channelwise.moments(x4)
    r, d = renorm_correction(mean[0], var[0], p.running_mean, p.running_var, p.eps, p.rmax, p.dmax)
    channelwise.update_running_stats(p.running_mean, p.running_var, mean[0], var[0], n, p.factor)
    rstd = 1.0 / np.sqrt(var + p.eps)
    weight = np.ones_like(r) if p.weight is None else p.weight.astype(np.float64)
    bias = np.zeros_like(r) if p.bias is None else p.bias.astype(np.float64)
    y4 = channelwise.scale_shift(x4, mean, rstd * (weight * r), (weight * d + bias)[None])
    saved = {"x4": x4, "mean": mean, "rstd": rstd, "r": r, "d": d}
    return y4.reshape(x.shape), mean[0], rstd[0], saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    if not p["training"]:
        return batch_norm.backward(dy, cache)
    r, d = s["r"], s["d"]
    weight = np.ones_like(r) if p["weight"] is None else p["weight"].astype(np.float64)
    # Batch norm's gradient with the weight * r; its dweight/dbias are sum(dy * xhat), sum(dy).
    dx4, sum_dy_xhat, sum_dy = batch_norm.channel_grads(s["x4"], channel_view(dy, p["axis"])[None], s["mean"],
                                                        s["rstd"], weight * r, np.zeros_like(r), True)
    dweight = None if p["weight"] is None else sum_dy_xhat * r + sum_dy * d
    dbias = None if p["bias"] is None else sum_dy
    return dx4.reshape(dy.shape), dweight, dbias
