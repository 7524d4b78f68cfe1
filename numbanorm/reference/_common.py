"""The math every reference op shares, in float64 NumPy."""
import numpy as np

from .._host import update_running  # noqa: F401  (shared with the cpu backend)


def moments(x, axes, center=True):
    """Mean (zero when not ``center``) and biased second central moment over ``axes``, keepdims."""
    mean = x.mean(axis=axes, keepdims=True) if center else np.zeros_like(x.sum(axis=axes, keepdims=True))
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    return mean, var


def normalized_grad(g, xhat, rstd, axes, center=True):
    """dL/dx for ``xhat = (x - mean) * rstd`` with the statistics over ``axes``, given g = dL/dxhat.

    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``; without centering the
    ``mean(g)`` term drops out.
    """
    dx = g - xhat * (g * xhat).mean(axis=axes, keepdims=True)
    if center:
        dx -= g.mean(axis=axes, keepdims=True)
    return rstd * dx


def channel_shape(ndim, axis):
    """The shape that broadcasts a per-channel vector along ``axis``."""
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def affine(xhat, weight, bias, shape):
    """``xhat * weight + bias`` with the parameters reshaped to ``shape`` (either may be None)."""
    y = xhat if weight is None else xhat * weight.astype(np.float64).reshape(shape)
    return y if bias is None else y + bias.astype(np.float64).reshape(shape)


def affine_grads(dy, xhat, weight, bias, axes):
    """dweight = sum(dy * xhat), dbias = sum(dy) over ``axes``; None for an absent parameter."""
    dweight = None if weight is None else (dy * xhat).sum(axis=axes)
    dbias = None if bias is None else dy.sum(axis=axes)
    return dweight, dbias


def other_axes(ndim, *keep):
    return tuple(i for i in range(ndim) if i not in keep)
