"""Local response normalization on the CPU, on the ``(A, C, B)`` channel view.

The math is the reference's (numbanorm/reference/local_response_norm.py). In the
forward one work item is one (a, c): its window of channels is summed as
contiguous runs of ``B`` values (channels-first) and the result kept, as
``base``, for the backward. The backward's work item is a block of channels of
one ``a``, whose window terms stay in cache (one pass over memory, not two).
"""
import numpy as np
from numba import prange

from .._host import channel_view
from ._kernel import cast_like, kernel, outputs, row_helper


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


# Channels a backward work item produces: its window terms are computed once for them
# and for the size - 1 channels around them, in a buffer that stays in cache.
CHANNEL_BLOCK = 16


@kernel
def _backward(x3, dy3, base3, size, before, coef, beta, dx3):
    """``dx_c = dy_c * base_c**-beta - coef * x_c * sum(t over the channels whose window holds c)``
    with ``t = dy * x * base**(-beta - 1)``; a work item is a block of channels of one ``a``, its
    ``t`` (the block and its halo) computed into a local buffer, not a full-size temporary."""
    A, C, B = x3.shape
    after = size - 1 - before
    coef = cast_like(x3, coef)
    blocks = (C + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    for i in prange(A * blocks):
        a, c0 = i // blocks, (i % blocks) * CHANNEL_BLOCK
        c1 = min(C, c0 + CHANNEL_BLOCK)
        t0, t1 = max(0, c0 - after), min(C, c1 + before)  # the channels whose t the block needs
        t = np.empty((t1 - t0, B), x3.dtype)
        for cc in range(t0, t1):
            x, g, s, tc = x3[a, cc], dy3[a, cc], base3[a, cc], t[cc - t0]
            _inverse_power(s, beta, tc)
            for b in range(B):
                tc[b] = g[b] * x[b] * tc[b] / s[b]
        for c in range(c0, c1):
            x, g, dst = x3[a, c], dy3[a, c], dx3[a, c]
            _inverse_power(base3[a, c], beta, dst)
            for b in range(B):
                dst[b] *= g[b]
            for cc in range(max(0, c - after), min(C, c + before + 1)):
                tc = t[cc - t0]
                for b in range(B):
                    dst[b] -= coef * x[b] * tc[b]


def forward(x, p):
    x3 = channel_view(x, p.axis)
    y3, base3 = outputs.empty_like(x3), outputs.empty_like(x3)
    _forward(x3, p.size, p.size // 2, p.alpha / p.size, p.beta, p.k, y3, base3, work=x3.size * p.size)
    return y3.reshape(x.shape), None, None, {"x3": x3, "base3": base3}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    x3, base3 = s["x3"], s["base3"]
    dy3 = channel_view(dy, p["axis"])
    dx3 = outputs.empty_like(x3)
    _backward(x3, dy3, base3, p["size"], p["size"] // 2, 2.0 * p["alpha"] * p["beta"] / p["size"], p["beta"],
              dx3, work=x3.size * p["size"])
    return (dx3.reshape(dy.shape),)
