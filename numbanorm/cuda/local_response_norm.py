"""Local response normalization on the GPU, on the ``(A, C, B)`` channel view.

The math is the reference's (numbanorm/reference/local_response_norm.py): one
thread per element, each summing its window of channels; ``base`` is kept for
the backward.
"""
import math

from numba import cuda

from ._arrays import channels, empty
from ._launch import grid_config, kernel


@kernel
def _forward(x3, size, before, alpha_n, beta, k, y3, base3):
    A, C, B = x3.shape
    T = x3.dtype.type
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, A * C, rstep):
        a, c = r // C, r % C
        for b in range(j0, B, jstep):
            total = T(0)
            for cc in range(max(0, c - before), min(C, c - before + size)):
                total += x3[a, cc, b] * x3[a, cc, b]
            s = k + alpha_n * total
            base3[a, c, b] = s
            y3[a, c, b] = x3[a, c, b] * math.pow(s, -beta)


@kernel
def _terms(x3, dy3, base3, beta, t3):
    """``t = dy * x * base**(-beta - 1)``."""
    A, C, B = x3.shape
    power = -beta - x3.dtype.type(1)  # a literal 1 would make it float64
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, A * C, rstep):
        a, c = r // C, r % C
        for b in range(j0, B, jstep):
            t3[a, c, b] = dy3[a, c, b] * x3[a, c, b] * math.pow(base3[a, c, b], power)


@kernel
def _backward(x3, dy3, base3, t3, size, before, coef, beta, dx3):
    """``dx_c = dy_c * base_c**-beta - coef * x_c * sum(t over the channels whose window holds c)``."""
    A, C, B = x3.shape
    T = x3.dtype.type
    after = size - 1 - before
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, A * C, rstep):
        a, c = r // C, r % C
        for b in range(j0, B, jstep):
            total = T(0)
            for cc in range(max(0, c - after), min(C, c + before + 1)):
                total += t3[a, cc, b]
            dx3[a, c, b] = dy3[a, c, b] * math.pow(base3[a, c, b], -beta) - coef * x3[a, c, b] * total


def _launch_shape(x3):
    A, C, B = x3.shape
    return grid_config(A * C, B)


def forward(x, p):
    x3, undo = channels(x, p.axis, p.cdtype)
    T = x3.dtype.type
    y3, base3 = empty(x3.shape, p.dtype), empty(x3.shape, x3.dtype)
    if x3.size:
        grid, block = _launch_shape(x3)
        _forward[grid, block](x3, p.size, p.size // 2, T(p.alpha / p.size), T(p.beta), T(p.k), y3, base3)
    return undo(y3), None, None, {"x3": x3, "base3": base3}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    x3, base3 = s["x3"], s["base3"]
    dy3, undo = channels(dy, p["axis"], p["cdtype"])
    T = x3.dtype.type
    t3, dx3 = empty(x3.shape, x3.dtype), empty(x3.shape, p["dtype"])
    if x3.size:
        grid, block = _launch_shape(x3)
        _terms[grid, block](x3, dy3, base3, T(p["beta"]), t3)
        _backward[grid, block](x3, dy3, base3, t3, p["size"], p["size"] // 2,
                               T(2.0 * p["alpha"] * p["beta"] / p["size"]), T(p["beta"]), dx3)
    return (undo(dx3),)
