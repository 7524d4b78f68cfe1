"""Reference layer norm (and RMS norm, its uncentered twin) over any set of axes."""
import numpy as np

from ._common import affine, affine_grads, moments, normalized_grad, other_axes

CENTER = True


def _param_shape(ndim, axes, normalized_shape):
    """Broadcast a parameter of shape ``normalized_shape`` over x's ``axes``."""
    shape = [1] * ndim
    for axis, size in zip(axes, normalized_shape):
        shape[axis] = size
    return tuple(shape)


def forward(x, p, center=CENTER):
    x = x.astype(np.float64)
    mean, var = moments(x, p.axes, center)
    rstd = 1.0 / np.sqrt(var + p.eps)
    xhat = (x - mean) * rstd
    shape = _param_shape(x.ndim, p.axes, p.normalized_shape)
    y = affine(xhat, p.weight, getattr(p, "bias", None), shape)
    kept = tuple(x.shape[i] for i in other_axes(x.ndim, *p.axes))
    public_mean = mean.reshape(kept).astype(p.cdtype) if center else None
    return (y.astype(p.cdtype), public_mean, rstd.reshape(kept).astype(p.cdtype),
            {"xhat": xhat, "rstd": rstd})


def backward(dy, cache, center=CENTER):
    p, xhat, rstd = cache.params, cache.saved["xhat"], cache.saved["rstd"]
    dy = dy.astype(np.float64)
    weight, bias = p["weight"], p.get("bias")
    g = affine(dy, weight, None, _param_shape(dy.ndim, p["axes"], p["normalized_shape"]))
    dx = normalized_grad(g, xhat, rstd, p["axes"], center)
    dweight, dbias = affine_grads(dy, xhat, weight, bias, other_axes(dy.ndim, *p["axes"]))
    grads = (dx, dweight, dbias) if center else (dx, dweight)
    return tuple(None if a is None else a.astype(p["cdtype"]) for a in grads)
