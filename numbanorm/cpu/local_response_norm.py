"""Local response normalization on the CPU, on the ``(A, C, B)`` channel view.

The math is the reference's (numbanorm/reference/local_response_norm.py). One
work item is one (a, c): its window of channels is summed as contiguous runs of
``B`` values (channels-first) and the result kept, as ``base``, for the backward.
"""
import numpy as np
from numba import prange

from .._host import channel_view
from ._kernel import cast_like, kernel, outputs, row_helper, scratch


@row_helper
def _inverse_power(s, beta, out):
    """``out = s ** -beta`` over a run. PyTorch's default beta 0.75 (and 0.5, 1) by square
    roots, which vectorise; any other beta by a scalar ``pow`` per value."""
    one = cast_like(s, 1.0)
    if beta == 0.75:
        for b in range(s.shape[0]):
            root = np.sqrt(s[b])
            out[b] = one / (root * np.sqrt(root))
    elif beta == 0.5:
        for b in range(s.shape[0]):
            out[b] = one / np.sqrt(s[b])
    elif beta == 1.0:
        for b in range(s.shape[0]):
            out[b] = one / s[b]
    else:
        power = cast_like(s, -beta)
        for b in range(s.shape[0]):
            out[b] = s[b] ** power


@kernel
def _forward(x3, size, before, alpha_n, beta, k, y3, base3):
    A, C, B = x3.shape
    alpha_n, k = cast_like(x3, alpha_n), cast_like(x3, k)
    for i in prange(A * C):
        a, c = i // C, i % C
        base, dst, src = base3[a, c], y3[a, c], x3[a, c]
        for b in range(B):
            base[b] = 0.0
        for cc in range(max(0, c - before), min(C, c - before + size)):
            other = x3[a, cc]
            for b in range(B):
                base[b] += other[b] * other[b]
        for b in range(B):
            base[b] = k + alpha_n * base[b]
        _inverse_power(base, beta, dst)
        for b in range(B):
            dst[b] *= src[b]


@kernel
def _terms(x3, dy3, base3, beta, t3):
    """``t = dy * x * base**(-beta - 1)``."""
    A, C, B = x3.shape
    for i in prange(A * C):
        a, c = i // C, i % C
        x, g, s, t = x3[a, c], dy3[a, c], base3[a, c], t3[a, c]
        _inverse_power(s, beta, t)
        for b in range(B):
            t[b] = g[b] * x[b] * t[b] / s[b]


@kernel
def _backward(x3, dy3, base3, t3, size, before, coef, beta, dx3):
    """``dx_c = dy_c * base_c**-beta - coef * x_c * sum(t over the channels whose window holds c)``."""
    A, C, B = x3.shape
    after = size - 1 - before
    coef = cast_like(x3, coef)
    for i in prange(A * C):
        a, c = i // C, i % C
        x, g, dst = x3[a, c], dy3[a, c], dx3[a, c]
        _inverse_power(base3[a, c], beta, dst)
        for b in range(B):
            dst[b] *= g[b]
        for cc in range(max(0, c - after), min(C, c + before + 1)):
            t = t3[a, cc]
            for b in range(B):
                dst[b] -= coef * x[b] * t[b]


def forward(x, p):
    x3 = channel_view(x, p.axis)
    y3, base3 = outputs.empty_like(x3), outputs.empty_like(x3)
    _forward(x3, p.size, p.size // 2, p.alpha / p.size, p.beta, p.k, y3, base3, work=x3.size * p.size)
    return y3.reshape(x.shape), None, None, {"x3": x3, "base3": base3}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    x3, base3 = s["x3"], s["base3"]
    dy3 = channel_view(dy, p["axis"])
    t3, dx3 = scratch.empty_like(x3), outputs.empty_like(x3)
    _terms(x3, dy3, base3, p["beta"], t3, work=x3.size)
    _backward(x3, dy3, base3, t3, p["size"], p["size"] // 2, 2.0 * p["alpha"] * p["beta"] / p["size"], p["beta"],
              dx3, work=x3.size * p["size"])
    return (dx3.reshape(dy.shape),)
