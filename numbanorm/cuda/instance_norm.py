"""Instance norm on the GPU: one row per (sample, channel); with running statistics it is
batch norm in eval mode."""
from . import channelwise, rowwise
from ._arrays import channels, give, is_host, rows, to_host
from .batch_norm import channel_backward


def _spatial(ndim, axis):
    return tuple(i for i in range(1, ndim) if i != axis)


def forward(x, p):
    host = is_host(x)
    if not p.use_input_stats:
        x3, undo = channels(x, p.axis, p.cdtype)
        mean, rstd = channelwise.frozen_stats(p.running_mean, p.running_var, p.eps, p.cdtype)
        y3 = channelwise.normalize(x3, mean, rstd, p.weight, p.bias, p.dtype)
        return undo(y3), to_host(mean, host), to_host(rstd, host), {"x3": x3, "mean": mean, "rstd": rstd}
    channels_n = x.shape[p.axis]
    x2, undo = rows(x, _spatial(x.ndim, p.axis), None)  # rows ordered (n, c); float16 stays float16
    y2, mean, rstd, std = rowwise.forward(x2, p.weight, p.bias, channels_n, 1, p.eps, True, p.dtype, p.cdtype)
    per_instance = (x.shape[0], channels_n)
    if p.update_running:  # the batch average of the instances' mean and unbiased variance
        n = x2.shape[1]
        channelwise.update_running(p.running_mean, mean.reshape(per_instance), p.factor)
        channelwise.update_running(p.running_var, std.reshape(per_instance), p.factor, 2, n / (n - 1))
    return (undo(y2), to_host(mean.reshape(per_instance), host), to_host(rstd.reshape(per_instance), host),
            {"x2": x2, "mean": mean, "rstd": rstd})


def backward(dy, cache):
    p, s = cache.params, cache.saved
    if not p["use_input_stats"]:
        return channel_backward(dy, p, s, batch_stats=False)
    host = is_host(dy)
    dy2, undo = rows(dy, _spatial(dy.ndim, p["axis"]), None)
    dx2, dweight, dbias = rowwise.backward(s["x2"], dy2, p["weight"], dy.shape[p["axis"]], 1, s["mean"],
                                           s["rstd"], True, p["dtype"], p["weight_dtype"] or p["cdtype"],
                                           p["bias_dtype"] or p["cdtype"])
    return (undo(dx2), None if p["weight"] is None else give(dweight, None, host),
            None if p["bias"] is None else give(dbias, None, host))
