"""Batch renormalization on the GPU: batch norm's kernels, with r and d folded into
the per-channel weight and bias (see numbanorm/cpu/batch_renorm.py). The
per-channel vectors (C values) are combined on the host."""
import numpy as np

from .._host import renorm_correction
from . import batch_norm, channelwise
from ._arrays import channels, give, is_host, to_device, to_host


def _host64(a):
    return (a if is_host(a) else a.copy_to_host()).astype(np.float64)


def _weight(p):
    return np.ones(p["running_mean"].shape[0]) if p["weight"] is None else _host64(p["weight"])


def forward(x, p):
    if not p.training:
        return batch_norm.forward(x, p)
    host = is_host(x)
    x3, undo = channels(x, p.axis, p.cdtype)
    mean, std, rstd = channelwise.moments(x3, p.eps)
    r, d = renorm_correction(_host64(mean), _host64(std) ** 2, _host64(p.running_mean), _host64(p.running_var),
                             p.eps, p.rmax, p.dmax)
    n = x3.shape[0] * x3.shape[2]
    channelwise.update_running(p.running_mean, mean.reshape(1, -1), p.factor)
    channelwise.update_running(p.running_var, std.reshape(1, -1), p.factor, 2, n / (n - 1))
    weight = _weight(vars(p))
    bias = np.zeros_like(r) if p.bias is None else _host64(p.bias)
    y3 = channelwise.normalize(x3, mean, rstd, weight * r, weight * d + bias, p.dtype)
    saved = {"x3": x3, "mean": mean, "rstd": rstd, "r": r, "d": d}
    return undo(y3), to_host(mean, host), to_host(rstd, host), saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    if not p["training"]:
        return batch_norm.backward(dy, cache)
    host = is_host(dy)
    r, d = s["r"], s["d"]
    dy3, undo = channels(dy, p["axis"], p["cdtype"])
    # Batch norm's gradient with the weight * r; its sums are sum(dy * xhat) and sum(dy).
    dx3, sum_dy_xhat, sum_dy = channelwise.grads(s["x3"], dy3, s["mean"], s["rstd"], _weight(p) * r, True,
                                                 p["dtype"])
    dweight = dbias = None
    if p["weight"] is not None:
        dweight = give(to_device(_host64(sum_dy_xhat) * r + _host64(sum_dy) * d), p["weight_dtype"], host)
    if p["bias"] is not None:
        dbias = give(sum_dy, p["bias_dtype"], host)
    return undo(dx3), dweight, dbias
