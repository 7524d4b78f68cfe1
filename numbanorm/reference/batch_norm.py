"""Reference batch norm: per-channel statistics over every other axis."""
import numpy as np

from ._common import affine, affine_grads, channel_shape, normalized_grad, other_axes, update_running


def forward(x, p):
    x = x.astype(np.float64)
    axes = other_axes(x.ndim, p.axis)
    if p.training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        if p.update_running:
            n = x.size // x.shape[p.axis]
            update_running(p.running_mean, mean, p.factor)
            update_running(p.running_var, var * n / (n - 1), p.factor)
    else:
        mean, var = p.running_mean.astype(np.float64), p.running_var.astype(np.float64)
    rstd = 1.0 / np.sqrt(var + p.eps)
    shape = channel_shape(x.ndim, p.axis)
    xhat = (x - mean.reshape(shape)) * rstd.reshape(shape)
    y = affine(xhat, p.weight, p.bias, shape)
    return y.astype(p.cdtype), mean.astype(p.cdtype), rstd.astype(p.cdtype), {"xhat": xhat, "rstd": rstd}


def backward(dy, cache):
    p, xhat, rstd = cache.params, cache.saved["xhat"], cache.saved["rstd"]
    dy = dy.astype(np.float64)
    axes = other_axes(dy.ndim, p["axis"])
    shape = channel_shape(dy.ndim, p["axis"])
    g = affine(dy, p["weight"], None, shape)
    rstd = rstd.reshape(shape)
    dx = normalized_grad(g, xhat, rstd, axes) if p["training"] else g * rstd
    dweight, dbias = affine_grads(dy, xhat, p["weight"], p["bias"], axes)
    return tuple(None if a is None else a.astype(p["cdtype"]) for a in (dx, dweight, dbias))
