"""Reference group norm: statistics per (sample, group of channels) over the spatial axes."""
import numpy as np

from ._common import affine, affine_grads, channel_shape, moments, normalized_grad, other_axes


def _grouped(x, axis, groups):
    """x with the channel axis moved to 1 and split: shape (N, G, C // G, *spatial)."""
    x = np.moveaxis(x, axis, 1)
    return x.reshape(x.shape[0], groups, x.shape[1] // groups, *x.shape[2:])


def _ungrouped(xg, axis):
    xg = xg.reshape(xg.shape[0], xg.shape[1] * xg.shape[2], *xg.shape[3:])
    return np.moveaxis(xg, 1, axis)


def forward(x, p):
    xg = _grouped(x.astype(np.float64), p.axis, p.num_groups)
    axes = tuple(range(2, xg.ndim))
    mean, var = moments(xg, axes)
    rstd = 1.0 / np.sqrt(var + p.eps)
    xhat = _ungrouped((xg - mean) * rstd, p.axis)
    y = affine(xhat, p.weight, p.bias, channel_shape(x.ndim, p.axis))
    n, g = xg.shape[:2]
    return (y.astype(p.cdtype), mean.reshape(n, g).astype(p.cdtype), rstd.reshape(n, g).astype(p.cdtype),
            {"xhat": xhat, "rstd": rstd})


def backward(dy, cache):
    p, xhat, rstd = cache.params, cache.saved["xhat"], cache.saved["rstd"]
    dy = dy.astype(np.float64)
    axis, groups = p["axis"], p["num_groups"]
    g = affine(dy, p["weight"], None, channel_shape(dy.ndim, axis))
    gg, xg = _grouped(g, axis, groups), _grouped(xhat, axis, groups)
    dx = _ungrouped(normalized_grad(gg, xg, rstd, tuple(range(2, gg.ndim))), axis)
    dweight, dbias = affine_grads(dy, xhat, p["weight"], p["bias"], other_axes(dy.ndim, axis))
    return tuple(None if a is None else a.astype(p["cdtype"]) for a in (dx, dweight, dbias))
