"""Local response normalization on the CPU, on the ``(A, C, B)`` channel view.

The math is the reference's (numbanorm/reference/local_response_norm.py):
``y_c = x_c * base_c**-beta`` with ``base_c = k + alpha/size * sum(x**2 over c's window)``.
A work item is one ``a`` and a chunk of ``b``; it walks the channels in order, so
each row of x crosses memory once and the rest of a window is still in cache.
The backward recomputes ``base`` from x rather than reading it back: keeping it
would cost the forward a third stream of memory traffic.
"""
import numpy as np
from numba import prange

from .._host import channel_view
from ._kernel import cast_like, items, kernel, outputs, row_helper

# Rows one pass of a window sum reads; five is the window most networks use (AlexNet's).
PASS_ROWS = 5


@row_helper
def _pass_rows(rows, c, hi, b0, n, zero):
    """Runs ``rows[c + i, b0:b0 + n]`` for i < :data:`PASS_ROWS`, the ``zero`` run from ``hi`` on."""
    r0 = rows[c, b0:b0 + n]
    r1 = rows[c + 1, b0:b0 + n] if c + 1 < hi else zero
    r2 = rows[c + 2, b0:b0 + n] if c + 2 < hi else zero
    r3 = rows[c + 3, b0:b0 + n] if c + 3 < hi else zero
    r4 = rows[c + 4, b0:b0 + n] if c + 4 < hi else zero
    return r0, r1, r2, r3, r4


@row_helper
def _window_sum(rows, lo, hi, b0, square, zero, s):
    """``s = sum(rows[c, b0:b0 + len(s)] over c in [lo, hi))``, squared first when ``square``.

    Five rows a pass (a short pass reads the ``zero`` row instead), so a window of five
    is one pass over ``s``, not five.
    """
    n = s.shape[0]
    for c in range(lo, hi, PASS_ROWS):
        r0, r1, r2, r3, r4 = _pass_rows(rows, c, hi, b0, n, zero)
        if square and c == lo:
            for b in range(n):
                s[b] = (r0[b] * r0[b] + r1[b] * r1[b]) + (r2[b] * r2[b] + r3[b] * r3[b]) + r4[b] * r4[b]
        elif square:
            for b in range(n):
                s[b] += (r0[b] * r0[b] + r1[b] * r1[b]) + (r2[b] * r2[b] + r3[b] * r3[b]) + r4[b] * r4[b]
        elif c == lo:
            for b in range(n):
                s[b] = (r0[b] + r1[b]) + (r2[b] + r3[b]) + r4[b]
        else:
            for b in range(n):
                s[b] += (r0[b] + r1[b]) + (r2[b] + r3[b]) + r4[b]


@row_helper
def _window_but_last_pass(rows, c, before, size, b0, zero, s):
    """Channel ``c``'s window of squares but for its last pass: ``(partial, r0, .., r4)``, the sum
    of the passes before (in ``s``, or the ``zero`` run) and the rows of the last, for
    :func:`_finish_window`. The last pass is summed in the loop that uses it (no round trip
    through ``s``: 0.8x the backward's time)."""
    C, n = rows.shape[0], zero.shape[0]
    lo, hi = max(0, c - before), min(C, c - before + size)
    last = lo + (hi - lo - 1) // PASS_ROWS * PASS_ROWS
    if last > lo:
        _window_sum(rows, lo, last, b0, True, zero, s)
    r0, r1, r2, r3, r4 = _pass_rows(rows, last, hi, b0, n, zero)
    return s if last > lo else zero, r0, r1, r2, r3, r4


@row_helper
def _inverse_powers(v, beta):
    """``(v ** -beta, v ** (-beta - 1))``. PyTorch's default beta 0.75 (and 0.5, 1) from
    ``q = 1 / sqrt(v)`` (an estimate and a Newton step for float32: no division) and one
    square root, which vectorise; any other beta by a scalar ``pow``, 25x slower."""
    one = cast_like(v, 1.0)
    if beta == 0.75:
        q = one / np.sqrt(v)
        power = q * np.sqrt(q)
        return power, power * q * q
    if beta == 0.5:
        q = one / np.sqrt(v)
        return q, q * q * q
    if beta == 1.0:
        r = one / v
        return r, r * r
    power = v ** cast_like(v, -beta)
    return power, power / v


@row_helper
def _finish_window(partial, r0, r1, r2, r3, r4, b):
    """Entry ``b`` of a window's sum of squares: ``partial`` (the passes before) plus its last
    pass's rows ``r0 .. r4``, added as :func:`_window_sum` adds them."""
    return partial[b] + ((r0[b] * r0[b] + r1[b] * r1[b]) + (r2[b] * r2[b] + r3[b] * r3[b]) + r4[b] * r4[b])


@row_helper
def _normalize_run(partial, r0, r1, r2, r3, r4, x, k, alpha_n, beta, y):
    """``y = x * base**-beta`` over a run of one channel, ``base = k + alpha_n * s`` with ``s``
    the window's sum of squares (:func:`_finish_window`)."""
    for b in range(x.shape[0]):
        y[b] = x[b] * _inverse_powers(k + alpha_n * _finish_window(partial, r0, r1, r2, r3, r4, b), beta)[0]


@row_helper
def _first_terms_run(partial, r0, r1, r2, r3, r4, x, g, k, alpha_n, beta, dx, t):
    """Over a run of one channel: ``dx = dy * base**-beta`` (the first term of dx) and
    ``t = dy * x * base**(-beta - 1)``, ``base`` as in :func:`_normalize_run`."""
    for b in range(x.shape[0]):
        power, power1 = _inverse_powers(k + alpha_n * _finish_window(partial, r0, r1, r2, r3, r4, b), beta)
        dx[b], t[b] = g[b] * power, g[b] * x[b] * power1


def _chunk(A, B):
    """Columns a work item covers: whole rows when there are enough ``a`` to share out,
    else a split of each row (at least 256 columns, to keep the rows' runs long)."""
    splits = max(1, min(items(16, A), B // 256))
    return max(1, items(B, splits))


@kernel
def _forward(x3, size, before, alpha_n, beta, k, chunk, y3):
    A, C, B = x3.shape
    alpha_n, k = cast_like(x3, alpha_n), cast_like(x3, k)
    chunks = (B + chunk - 1) // chunk
    for i in prange(A * chunks):
        a, b0 = i // chunks, (i % chunks) * chunk
        n = min(chunk, B - b0)
        s, zero = np.empty(n, x3.dtype), np.zeros(n, x3.dtype)
        xa = x3[a]
        for c in range(C):
            x, y = xa[c, b0:b0 + n], y3[a, c, b0:b0 + n]
            partial, r0, r1, r2, r3, r4 = _window_but_last_pass(xa, c, before, size, b0, zero, s)
            # Each fast beta its own call, so that the loop vectorises (a runtime beta inside it stops LLVM).
            if beta == 0.75:
                _normalize_run(partial, r0, r1, r2, r3, r4, x, k, alpha_n, 0.75, y)
            elif beta == 0.5:
                _normalize_run(partial, r0, r1, r2, r3, r4, x, k, alpha_n, 0.5, y)
            elif beta == 1.0:
                _normalize_run(partial, r0, r1, r2, r3, r4, x, k, alpha_n, 1.0, y)
            else:
                _normalize_run(partial, r0, r1, r2, r3, r4, x, k, alpha_n, beta, y)


@kernel
def _backward(x3, dy3, size, before, alpha_n, beta, k, coef, chunk, dx3):
    """``dx_c = dy_c * base_c**-beta - coef * x_c * sum(t over the channels whose window holds c)``,
    ``t = dy * x * base**(-beta - 1)``. Walking the channels, the item keeps ``t`` of the last
    ``size`` channels in a ring: at channel ``cc`` it has all the terms of channel ``cc - before``."""
    A, C, B = x3.shape
    alpha_n, k, coef = cast_like(x3, alpha_n), cast_like(x3, k), cast_like(x3, coef)
    chunks = (B + chunk - 1) // chunk
    for i in prange(A * chunks):
        a, b0 = i // chunks, (i % chunks) * chunk
        n = min(chunk, B - b0)
        s, zero = np.empty(n, x3.dtype), np.zeros(n, x3.dtype)
        ring = np.zeros((size, n), x3.dtype)  # t of channels cc - size + 1 .. cc; zero outside [0, C)
        xa, ga = x3[a], dy3[a]
        for cc in range(C + before):
            t = ring[cc % size]
            if cc < C:
                x, g, dx = xa[cc, b0:b0 + n], ga[cc, b0:b0 + n], dx3[a, cc, b0:b0 + n]
                partial, r0, r1, r2, r3, r4 = _window_but_last_pass(xa, cc, before, size, b0, zero, s)
                # (the window's term of dx follows `before` channels later)
                if beta == 0.75:
                    _first_terms_run(partial, r0, r1, r2, r3, r4, x, g, k, alpha_n, 0.75, dx, t)
                elif beta == 0.5:
                    _first_terms_run(partial, r0, r1, r2, r3, r4, x, g, k, alpha_n, 0.5, dx, t)
                elif beta == 1.0:
                    _first_terms_run(partial, r0, r1, r2, r3, r4, x, g, k, alpha_n, 1.0, dx, t)
                else:
                    _first_terms_run(partial, r0, r1, r2, r3, r4, x, g, k, alpha_n, beta, dx, t)
            else:
                for b in range(n):
                    t[b] = 0.0
            c = cc - before
            if c >= 0 and size <= PASS_ROWS:  # the window's sum and dx in one pass
                x, dx = xa[c, b0:b0 + n], dx3[a, c, b0:b0 + n]
                r0, r1, r2, r3, r4 = _pass_rows(ring, 0, size, 0, n, zero)
                for b in range(n):
                    dx[b] -= coef * x[b] * ((r0[b] + r1[b]) + (r2[b] + r3[b]) + r4[b])
            elif c >= 0:
                x, dx = xa[c, b0:b0 + n], dx3[a, c, b0:b0 + n]
                _window_sum(ring, 0, size, 0, False, zero, s)
                for b in range(n):
                    dx[b] -= coef * x[b] * s[b]


def forward(x, p):
    x3 = channel_view(x, p.axis)
    y3 = outputs.empty_like(x3)
    _forward(x3, p.size, p.size // 2, p.alpha / p.size, p.beta, p.k, _chunk(*x3.shape[::2]), y3,
             work=x3.size * p.size)
    return y3.reshape(x.shape), None, None, {"x3": x3}


def backward(dy, cache):
    p, x3 = cache.params, cache.saved["x3"]
    dy3 = channel_view(dy, p["axis"])
    dx3 = outputs.empty_like(x3)
    _backward(x3, dy3, p["size"], p["size"] // 2, p["alpha"] / p["size"], p["beta"], p["k"],
              2.0 * p["alpha"] * p["beta"] / p["size"], _chunk(*x3.shape[::2]), dx3, work=x3.size * p["size"])
    return (dx3.reshape(dy.shape),)
