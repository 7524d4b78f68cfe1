"""Reference local response normalization (PyTorch's definition).

``y_c = x_c / s_c**beta`` with ``s_c = k + alpha / size * sum(x_c'**2)`` over the
channels ``c - size // 2 <= c' <= c + (size - 1) // 2`` (zero padding at the
ends; alpha is divided by ``size`` even where the window is cut).
Backward: ``dx_j = dy_j * s_j**-beta - 2 * alpha * beta / size * x_j *
sum(dy_c * x_c * s_c**(-beta - 1))`` over the channels ``c`` whose window holds ``j``.
"""
import numpy as np


def window_sum(a, size, before):
    """Sum of ``a`` (channels last) over the windows ``[c - before, c - before + size)``, zero padded."""
    padded = np.concatenate([np.zeros(a.shape[:-1] + (before,)), a, np.zeros(a.shape[:-1] + (size - 1 - before,))],
                            axis=-1)
    cumulative = np.concatenate([np.zeros(a.shape[:-1] + (1,)), np.cumsum(padded, axis=-1)], axis=-1)
    return cumulative[..., size:] - cumulative[..., :-size]


def forward(x, p):
    xc = np.moveaxis(x.astype(np.float64), p.axis, -1)
    base = p.k + p.alpha / p.size * window_sum(xc * xc, p.size, p.size // 2)
    y = xc * base ** -p.beta
    return np.moveaxis(y, -1, p.axis).astype(p.cdtype), None, None, {"xc": xc, "base": base}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    xc, base = s["xc"], s["base"]
    g = np.moveaxis(dy.astype(np.float64), p["axis"], -1)
    terms = g * xc * base ** (-p["beta"] - 1.0)
    # channel j is in the window of c for c in [j - (size - 1) // 2, j + size // 2]
    spread = window_sum(terms, p["size"], (p["size"] - 1) // 2)
    dx = g * base ** -p["beta"] - 2.0 * p["alpha"] * p["beta"] / p["size"] * xc * spread
    return (np.moveaxis(dx, -1, p["axis"]).astype(p["cdtype"]),)
