"""Local response normalization on the GPU, on the ``(A, C, B)`` channel view as rows ``(A * C, B)``.

The math is the reference's (numbanorm/reference/local_response_norm.py): one
thread per element, each summing its window of channels (neighbouring threads
on neighbouring ``b``, so the reads coalesce); ``base`` is kept for the
backward. Three launches in all: the forward, then ``t`` and ``dx``. The kernels
compute in the dtype of ``base`` (float32 for float16 data), whatever ``x``'s and
``dy``'s.
"""
import math

import numpy as np
from numba import cuda

from ._arrays import channels, empty
from ._launch import grid_config, kernel


@kernel
def _forward(x, C, size, before, alpha_n, beta, k, y, base):
    """``base = k + alpha / size * sum(x**2 over the window)``, ``y = x * base**-beta``.

    On rows ``(A * C, B)``: row ``r`` is channel ``r % C``, its window rows ``r - c + cc``.
    """
    T = base.dtype.type
    R, B = x.shape
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, R, rstep):
        c = r % C
        first, last = r - c + max(0, c - before), r - c + min(C, c - before + size)
        for b in range(j0, B, jstep):
            total = T(0)
            for q in range(first, last):
                v = T(x[q, b])
                total += v * v
            s = k + alpha_n * total
            base[r, b] = s
            y[r, b] = T(x[r, b]) * math.pow(s, -beta)


@kernel
def _terms(x, dy, base, beta, t):
    """``t = dy * x * base**(-beta - 1)``, elementwise on rows."""
    T = t.dtype.type
    power = -beta - T(1)  # a literal 1 would make it float64
    R, B = x.shape
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, R, rstep):
        for b in range(j0, B, jstep):
            t[r, b] = T(dy[r, b]) * T(x[r, b]) * math.pow(base[r, b], power)


@kernel
def _backward(x, dy, base, t, C, size, before, coef, beta, dx):
    """``dx_c = dy_c * base_c**-beta - coef * x_c * sum(t over the channels whose window holds c)``,
    on rows as :func:`_forward`'s."""
    T = t.dtype.type
    R, B = x.shape
    after = size - 1 - before
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, R, rstep):
        c = r % C
        first, last = r - c + max(0, c - after), r - c + min(C, c + before + 1)
        for b in range(j0, B, jstep):
            total = T(0)
            for q in range(first, last):
                total += t[q, b]
            dx[r, b] = T(dy[r, b]) * math.pow(base[r, b], -beta) - coef * T(x[r, b]) * total


def _rows(x3):
    """The ``(A, C, B)`` view as rows ``(A * C, B)``, and ``C``."""
    A, C, B = x3.shape
    return x3.reshape(A * C, B), C


def forward(x, p):
    x3, undo = channels(x, p.axis, None)  # float16 as it is
    T = np.dtype(p.cdtype).type
    y3, base3 = empty(x3.shape, p.dtype), empty(x3.shape, T)
    if x3.size:
        x2, C = _rows(x3)
        grid, block = grid_config(*x2.shape)
        _forward[grid, block](x2, C, p.size, p.size // 2, T(p.alpha / p.size), T(p.beta), T(p.k),
                              y3.reshape(x2.shape), base3.reshape(x2.shape))
    return undo(y3), None, None, {"x3": x3, "base3": base3}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    x3, base3 = s["x3"], s["base3"]
    dy3, undo = channels(dy, p["axis"], None)
    T = base3.dtype.type
    t3, dx3 = empty(x3.shape, T), empty(x3.shape, p["dtype"])
    if x3.size:
        x2, C = _rows(x3)
        rows = x2.shape
        grid, block = grid_config(*rows)
        _terms[grid, block](x2, dy3.reshape(rows), base3.reshape(rows), T(p["beta"]), t3.reshape(rows))
        _backward[grid, block](x2, dy3.reshape(rows), base3.reshape(rows), t3.reshape(rows), C, p["size"],
                               p["size"] // 2, T(2.0 * p["alpha"] * p["beta"] / p["size"]), T(p["beta"]),
                               dx3.reshape(rows))
    return (undo(dx3),)
