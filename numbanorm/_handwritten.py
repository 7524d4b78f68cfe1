"""The NumPy a user writes today (cs231n style), for ``bench`` to time ours against.

Not the numpy backend (a float64 reference): these run in the data's dtype, with the
textbook forward (``mu = x.mean(0)``, ``xc = x - mu``, ...) and backward, and keep
what the backward needs as a training loop would. Each ``forward(x)`` returns
``(y, cache)`` and ``backward(dy, cache)`` the gradients of x and the affine parameters.
"""
from __future__ import annotations

import numpy as np


def _normalize(x, axes, eps):
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    return xc * rstd, rstd


def _dx(xhat, rstd, g, axes):
    """dx of ``xhat = (x - mean) * rstd`` over ``axes`` given ``g = dy * weight``."""
    return rstd * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))


class Handwritten:
    """One op's hand-written forward and backward; NotImplementedError for ops it lacks."""

    OPS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")

    def __init__(self, op, x, args, kwargs):
        if op not in self.OPS:
            raise NotImplementedError(f"no hand-written NumPy {op}")
        self.op, self.eps = op, kwargs.get("eps", 1e-5)
        self.axis = kwargs.get("axis", 1) % x.ndim
        self.groups = args[0] if op == "group_norm" else None
        C = x.shape[self.axis] if op in ("batch_norm", "group_norm", "instance_norm") else x.shape[-1]
        shape = [1] * x.ndim
        shape[self.axis if op != "layer_norm" and op != "rms_norm" else -1] = C
        self.weight = kwargs["weight"].reshape(shape)
        self.bias = kwargs["bias"].reshape(shape) if "bias" in kwargs else None
        self.running = (kwargs.get("running_mean"), kwargs.get("running_var"))
        # the axes each statistic is over, and the axes dweight / dbias sum over
        if op == "batch_norm":
            self.stat_axes = tuple(i for i in range(x.ndim) if i != self.axis)
        elif op in ("layer_norm", "rms_norm"):
            self.stat_axes = (x.ndim - 1,)
        else:  # instance / group norm: per sample and channel (group), over the spatial axes
            self.stat_axes = tuple(i for i in range(1, x.ndim) if i != self.axis)
        self.param_axes = tuple(i for i in range(x.ndim) if shape[i] == 1)

    def forward(self, x):
        if self.op == "rms_norm":
            rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.finfo(x.dtype).eps)
            xhat = x * rstd
        elif self.op == "group_norm":
            xg = np.moveaxis(x, self.axis, 1)
            grouped = xg.reshape(xg.shape[0], self.groups, -1)
            xhat, rstd = _normalize(grouped, -1, self.eps)
            xhat = np.moveaxis(xhat.reshape(xg.shape), 1, self.axis)
        else:
            xhat, rstd = _normalize(x, self.stat_axes, self.eps)
        if self.op == "batch_norm" and self.running[0] is not None:  # the running averages, in place
            n = x.size // x.shape[self.axis]
            mean = x.mean(axis=self.stat_axes)
            self.running[0][...] = 0.9 * self.running[0] + 0.1 * mean
            self.running[1][...] = 0.9 * self.running[1] + 0.1 * (1.0 / rstd.reshape(-1) ** 2 - self.eps) * n / (n - 1)
        y = xhat * self.weight
        if self.bias is not None:
            y += self.bias
        return y, (xhat, rstd)

    def backward(self, dy, cache):
        xhat, rstd = cache
        g = dy * self.weight
        if self.op == "rms_norm":
            dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        elif self.op == "group_norm":
            def grouped(a):
                a = np.moveaxis(a, self.axis, 1)
                return a.reshape(a.shape[0], self.groups, -1)
            dxg = _dx(grouped(xhat), rstd, grouped(g), -1)
            moved = np.moveaxis(xhat, self.axis, 1).shape
            dx = np.moveaxis(dxg.reshape(moved), 1, self.axis)
        else:
            dx = _dx(xhat, rstd, g, self.stat_axes)
        dweight = (dy * xhat).sum(axis=self.param_axes)
        dbias = None if self.bias is None else dy.sum(axis=self.param_axes)
        return dx, dweight, dbias
