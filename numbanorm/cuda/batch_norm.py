"""Batch norm on the GPU: the per-channel statistics primitive in either layout."""
from . import channelwise
from ._arrays import channels, give, is_host, to_host


def forward(x, p):
    host = is_host(x)
    x3, undo = channels(x, p.axis, None)  # float16 as it is: the kernels compute in p.cdtype
    if p.training:
        mean, std, rstd = channelwise.moments(x3, p.eps, p.cdtype)
        if p.update_running:  # the unbiased variance goes into running_var
            channelwise.update_running_stats(p.running_mean, p.running_var, mean, std, x3.shape[0] * x3.shape[2],
                                             p.factor)
    else:
        mean, rstd = channelwise.frozen_stats(p.running_mean, p.running_var, p.eps, p.cdtype)
    y3 = channelwise.normalize(x3, mean, rstd, p.weight, p.bias, p.dtype)
    saved = {"x3": x3, "mean": mean, "rstd": rstd}
    return undo(y3), to_host(mean, host), to_host(rstd, host), saved


def channel_backward(dy, p, s, batch_stats):
    """(dx, dweight, dbias) from the saved ``(A, C, B)`` input and per-channel statistics."""
    host = is_host(dy)
    dy3, undo = channels(dy, p["axis"], None)
    dx3, dweight, dbias = channelwise.grads(s["x3"], dy3, s["mean"], s["rstd"], p["weight"], batch_stats,
                                            p["dtype"])
    return (undo(dx3), None if p["weight"] is None else give(dweight, p["weight_dtype"], host),
            None if p["bias"] is None else give(dbias, p["bias_dtype"], host))


def backward(dy, cache):
    return channel_backward(dy, cache.params, cache.saved, cache.params["training"])
