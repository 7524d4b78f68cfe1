"""Instance norm on the CPU: one row per (sample, channel); with running statistics it is
batch norm in eval mode."""
import numpy as np

from .._host import channel_view, rows_view, update_running
from . import rowwise
from .batch_norm import channel_grads, normalize_channels


def _spatial(ndim, axis):
    return tuple(i for i in range(1, ndim) if i != axis)


def forward(x, p):
    channels = x.shape[p.axis]
    if not p.use_input_stats:
        x3 = channel_view(x, p.axis)
        mean, var = p.running_mean.astype(np.float64), p.running_var.astype(np.float64)
        y3, rstd = normalize_channels(x3, mean, var, p.eps, p.weight, p.bias)
        return (y3.reshape(x.shape), mean.astype(p.cdtype), rstd.astype(p.cdtype),
                {"x3": x3, "mean": mean, "rstd": rstd})
    x2, undo = rows_view(x, _spatial(x.ndim, p.axis))  # rows ordered (n, c)
    y2, mean, rstd, var = rowwise.forward(x2, p.weight, p.bias, channels, 1, p.eps, True)
    per_instance = (x.shape[0], channels)
    if p.update_running:
        n = x2.shape[1]
        update_running(p.running_mean, mean.reshape(per_instance).mean(axis=0), p.factor)
        update_running(p.running_var, (var * n / (n - 1)).reshape(per_instance).mean(axis=0), p.factor)
    return (undo(y2), mean.reshape(per_instance).astype(p.cdtype), rstd.reshape(per_instance).astype(p.cdtype),
            {"x2": x2, "mean": mean, "rstd": rstd})


def backward(dy, cache):
    p, s = cache.params, cache.saved
    if not p["use_input_stats"]:
        dx3, dweight, dbias = channel_grads(s["x3"], channel_view(dy, p["axis"]), s["mean"], s["rstd"],
                                            p["weight"], p["bias"], batch_stats=False)
        return dx3.reshape(dy.shape), dweight, dbias
    dy2, undo = rows_view(dy, _spatial(dy.ndim, p["axis"]))
    dx2, dweight, dbias = rowwise.backward(s["x2"], dy2, p["weight"], dy.shape[p["axis"]], 1,
                                           s["mean"], s["rstd"], True)
    return (undo(dx2), None if p["weight"] is None else dweight,
            None if p["bias"] is None else dbias)
