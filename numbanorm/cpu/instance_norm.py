"""Instance norm on the CPU.

Channels at axis 1: one row per (sample, channel) for the row-wise primitive.
Channels elsewhere (channels-last): the per-channel primitive with one problem
per sample, so no transposed copy is made. With running statistics it is batch
norm in eval mode.
"""
import numpy as np

from .._host import channel_view, rows_view, sample_channel_view
from . import channelwise, rowwise
from .batch_norm import channel_grads, normalize_channels, normalize_samples


def _spatial(ndim, axis):
    return tuple(i for i in range(1, ndim) if i != axis)


def forward(x, p):
    channels = x.shape[p.axis]
    per_instance = (x.shape[0], channels)
    if not p.use_input_stats:
        x4 = channel_view(x, p.axis)[None]
        mean, var = p.running_mean.astype(np.float64)[None], p.running_var.astype(np.float64)[None]
        y4, rstd = normalize_channels(x4, mean, var, p.eps, p.weight, p.bias)
        return (y4.reshape(x.shape), mean[0], rstd[0],
                {"x4": x4, "mean": mean, "rstd": rstd})
    if p.axis == 1:
        x2, undo = rows_view(x, _spatial(x.ndim, p.axis))  # rows ordered (n, c)
        y2, mean, rstd, var = rowwise.forward(x2, p.weight, p.bias, channels, 1, p.eps, True)
        y, saved = undo(y2), {"x2": x2}
        mean, rstd, var = mean.reshape(per_instance), rstd.reshape(per_instance), var.reshape(per_instance)
    else:
        x4 = sample_channel_view(x, p.axis)
        y4, mean, var = normalize_samples(x4, p.eps, p.weight, p.bias)
        rstd = 1.0 / np.sqrt(var + p.eps)
        y, saved = y4.reshape(x.shape), {"x4": x4}
    if p.update_running:
        n = x.size // max(x.shape[0] * channels, 1)
        channelwise.update_running_stats(p.running_mean, p.running_var, mean.mean(axis=0), var.mean(axis=0),
                                         n, p.factor)
    saved.update(mean=mean, rstd=rstd)
    return y, mean, rstd, saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    weight, bias = p["weight"], p["bias"]
    if not p["use_input_stats"]:
        dx4, dweight, dbias = channel_grads(s["x4"], channel_view(dy, p["axis"])[None], s["mean"], s["rstd"],
                                            weight, bias, batch_stats=False)
        return dx4.reshape(dy.shape), dweight, dbias
    if "x4" in s:
        dx4, dweight, dbias = channel_grads(s["x4"], sample_channel_view(dy, p["axis"]), s["mean"], s["rstd"],
                                            weight, bias, batch_stats=True)
        return dx4.reshape(dy.shape), dweight, dbias
    dy2, undo = rows_view(dy, _spatial(dy.ndim, p["axis"]))
    dx2, dweight, dbias = rowwise.backward(s["x2"], dy2, weight, dy.shape[p["axis"]], 1,
                                           s["mean"].reshape(-1), s["rstd"].reshape(-1), True)
    return (undo(dx2), None if weight is None else dweight, None if bias is None else dbias)
