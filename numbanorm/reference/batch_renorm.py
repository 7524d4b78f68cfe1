"""Reference batch renormalization (Ioffe 2017).

Training: ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``
with sigma from the running variance, and ``y = weight * (xhat * r + d) + bias``,
``xhat = (x - mu_B) / sigma_B``; r and d are constants for the gradient. Eval is
batch norm with the running statistics.
"""
import numpy as np

from . import batch_norm
from .._host import renorm_correction
from ._common import affine, channel_shape, normalized_grad, other_axes, update_running


def forward(x, p):
    if not p.training:
        return batch_norm.forward(x, p)
    x = x.astype(np.float64)
    axes = other_axes(x.ndim, p.axis)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    r, d = renorm_correction(mean, var, p.running_mean, p.running_var, p.eps, p.rmax, p.dmax)
    n = x.size // x.shape[p.axis]
    update_running(p.running_mean, mean, p.factor)
    update_running(p.running_var, var * n / (n - 1), p.factor)
    rstd = 1.0 / np.sqrt(var + p.eps)
    shape = channel_shape(x.ndim, p.axis)
    xhat = (x - mean.reshape(shape)) * rstd.reshape(shape)
    y = affine(xhat * r.reshape(shape) + d.reshape(shape), p.weight, p.bias, shape)
    return (y.astype(p.cdtype), mean.astype(p.cdtype), rstd.astype(p.cdtype),
            {"xhat": xhat, "rstd": rstd, "r": r, "d": d})


def backward(dy, cache):
    p, s = cache.params, cache.saved
    if not p["training"]:
        return batch_norm.backward(dy, cache)
    dy = dy.astype(np.float64)
    axes = other_axes(dy.ndim, p["axis"])
    shape = channel_shape(dy.ndim, p["axis"])
    xhat, r, d = s["xhat"], s["r"], s["d"]
    g = affine(dy * r.reshape(shape), p["weight"], None, shape)  # dL/dxhat, r and d constant
    dx = normalized_grad(g, xhat, s["rstd"].reshape(shape), axes)
    dweight = None if p["weight"] is None else (dy * (xhat * r.reshape(shape) + d.reshape(shape))).sum(axis=axes)
    dbias = None if p["bias"] is None else dy.sum(axis=axes)
    return tuple(None if a is None else a.astype(p["cdtype"]) for a in (dx, dweight, dbias))
