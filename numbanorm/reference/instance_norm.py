"""Reference instance norm: statistics per (sample, channel) over the spatial axes."""
import numpy as np

from ._common import affine, affine_grads, channel_shape, moments, normalized_grad, other_axes, update_running


def forward(x, p):
    x = x.astype(np.float64)
    spatial = other_axes(x.ndim, 0, p.axis)
    shape = channel_shape(x.ndim, p.axis)
    if p.use_input_stats:
        mean, var = moments(x, spatial)
        if p.update_running:
            n = x.size // (x.shape[0] * x.shape[p.axis])
            per_instance = (x.shape[0], x.shape[p.axis])  # (N, C) in either layout
            update_running(p.running_mean, mean.reshape(per_instance).mean(axis=0), p.factor)
            update_running(p.running_var, (var * n / (n - 1)).reshape(per_instance).mean(axis=0), p.factor)
        public = (x.shape[0], x.shape[p.axis])
    else:
        mean = p.running_mean.astype(np.float64).reshape(shape)
        var = p.running_var.astype(np.float64).reshape(shape)
        public = (x.shape[p.axis],)
    rstd = 1.0 / np.sqrt(var + p.eps)
    xhat = (x - mean) * rstd
    y = affine(xhat, p.weight, p.bias, shape)
    return (y.astype(p.cdtype), mean.reshape(public).astype(p.cdtype), rstd.reshape(public).astype(p.cdtype),
            {"xhat": xhat, "rstd": rstd})


def backward(dy, cache):
    p, xhat, rstd = cache.params, cache.saved["xhat"], cache.saved["rstd"]
    dy = dy.astype(np.float64)
    axis = p["axis"]
    g = affine(dy, p["weight"], None, channel_shape(dy.ndim, axis))
    if p["use_input_stats"]:
        dx = normalized_grad(g, xhat, rstd, other_axes(dy.ndim, 0, axis))
    else:
        dx = g * rstd
    dweight, dbias = affine_grads(dy, xhat, p["weight"], p["bias"], other_axes(dy.ndim, axis))
    return tuple(None if a is None else a.astype(p["cdtype"]) for a in (dx, dweight, dbias))
