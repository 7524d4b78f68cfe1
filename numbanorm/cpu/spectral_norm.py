"""Spectral norm on the CPU: the power iteration and ``W / sigma`` in one compiled call, the gradient in another.

The math is the reference's (numbanorm/reference/spectral_norm.py). Vectors and
dot products are float64; every loop splits its work by shape only (rows, or
fixed blocks of rows for ``W^T u``), so results do not depend on the threads.
"""
import numpy as np
from numba import prange

from .._host import matrix_view
from ._kernel import ITEM_ELEMENTS, cast_like, helper, kernel, outputs, row_blocks, row_helper, scratch
from ._stream import store_fence, stream_row, streams
from ._sums import sum_squares


@row_helper
def _dot(a, b):
    """``a . b`` of two rows in float64."""
    total = 0.0
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


@row_helper
def _dot4(r0, r1, r2, r3, v):
    """``(r0 . v, r1 . v, r2 . v, r3 . v)`` in float64: four rows a step, v loaded once."""
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    t3 = 0.0
    for j in range(v.shape[0]):
        vj = v[j]
        t0 += r0[j] * vj
        t1 += r1[j] * vj
        t2 += r2[j] * vj
        t3 += r3[j] * vj
    return t0, t1, t2, t3


@row_helper
def _add_rows_times(W, u, start, end, acc):
    """``acc = sum_{i in [start, end)} u[i] W[i]``: four rows a step, one from each quarter of
    the block (four sequential streams), so the float64 ``acc`` is loaded and stored once per four rows."""
    acc[:] = 0.0
    Q = (end - start) // 4
    for i in range(start, start + Q):
        r0, r1, r2, r3 = W[i], W[i + Q], W[i + 2 * Q], W[i + 3 * Q]
        u0, u1, u2, u3 = u[i], u[i + Q], u[i + 2 * Q], u[i + 3 * Q]
        for j in range(acc.shape[0]):
            acc[j] += (r0[j] * u0 + r1[j] * u1) + (r2[j] * u2 + r3[j] * u3)
    for i in range(start + 4 * Q, end):
        ui, row = u[i], W[i]
        for j in range(acc.shape[0]):
            acc[j] += row[j] * ui


@helper
def _normalize(a, eps):
    """``a /= max(||a||, eps)`` in place; returns nothing."""
    norm = max(np.sqrt(sum_squares(a)), eps)
    for i in range(a.shape[0]):
        a[i] /= norm


@row_helper
def _scale_item(src, f, dst, start, end, stream):
    """``dst[start:end] = src[start:end] * f`` (flat arrays); with ``stream``, block by block through
    an L1 buffer and streaming stores (:mod:`._stream`)."""
    if stream:
        buffer = np.empty(STREAM_BLOCK, src.dtype)
        for b0 in range(start, end, STREAM_BLOCK):
            b1 = min(end, b0 + STREAM_BLOCK)
            part, values = buffer[:b1 - b0], src[b0:b1]
            for j in range(b1 - b0):
                part[j] = values[j] * f
            stream_row(part, dst[b0:b1])
        store_fence()
    else:
        values, out = src[start:end], dst[start:end]
        for j in range(end - start):
            out[j] = values[j] * f


# Elements :func:`_scale_item` computes into its L1 buffer between streaming copies.
STREAM_BLOCK = 2048

# Columns of the per-block partials of ``W^T u`` one work item adds up.
COLUMN_CHUNK = 512


@kernel
def _forward(W, u, steps, eps, training, rows_per_block, partial, v, w_v, y, stream):
    """spectral_norm's forward in one call: the power iteration, as PyTorch's, then ``y = W / sigma``.

    ``steps`` rounds of ``v = normalize(W^T u)``, ``w_v = W v``, and when ``training``
    ``u = normalize(w_v)`` in place; ``sigma = u^T w_v``, returned. ``partial`` holds one
    float64 row of ``W^T u`` per block of ``rows_per_block`` rows, added up in block order.
    """
    R, K = W.shape
    blocks = partial.shape[0]
    Q = R // 4
    for _ in range(steps):
        for k in prange(blocks):
            _add_rows_times(W, u, k * rows_per_block, min(R, (k + 1) * rows_per_block), partial[k])
        for c in prange((K + COLUMN_CHUNK - 1) // COLUMN_CHUNK):
            start, end = c * COLUMN_CHUNK, min(K, (c + 1) * COLUMN_CHUNK)
            v[start:end] = 0.0
            for k in range(blocks):
                part = partial[k]
                for j in range(start, end):
                    v[j] += part[j]
        _normalize(v, eps)
        # W v: four rows a step, one from each quarter of W.
        for k in prange(Q):
            w_v[k], w_v[Q + k], w_v[2 * Q + k], w_v[3 * Q + k] = _dot4(W[k], W[Q + k], W[2 * Q + k], W[3 * Q + k], v)
        for i in range(4 * Q, R):
            w_v[i] = _dot(W[i], v)
        if training:
            u[:] = w_v
            _normalize(u, eps)
    sigma = 0.0
    for i in range(R):
        sigma += u[i] * w_v[i]
    f = cast_like(W, 1.0 / max(sigma, eps))  # a zero weight gives zeros, not NaN
    src, dst = W.reshape(-1), y.reshape(-1)
    n = src.shape[0]
    for k in prange((n + ITEM_ELEMENTS - 1) // ITEM_ELEMENTS):
        _scale_item(src, f, dst, k * ITEM_ELEMENTS, min(n, (k + 1) * ITEM_ELEMENTS), stream)
    return sigma


@kernel
def _backward(dY, W, u, v, sigma, eps, inner, dW):
    """``dW = dY / sigma - <dY, W> / sigma**2 * u v^T``; ``dY / eps`` where sigma was clamped to eps.
    ``inner`` takes the float64 ``<dY, W>`` of each row, added up in row order."""
    factor, coef = 1.0 / eps, 0.0
    if sigma > eps:
        for i in prange(dY.shape[0]):
            inner[i] = _dot(dY[i], W[i])
        total = 0.0
        for i in range(inner.shape[0]):
            total += inner[i]
        factor, coef = 1.0 / sigma, total / sigma**2
    for i in prange(dY.shape[0]):
        src, dst, ui = dY[i], dW[i], coef * u[i]
        for j in range(dY.shape[1]):
            dst[j] = src[j] * factor - ui * v[j]


def forward(w, p):
    W, undo = matrix_view(w, p.axis)
    R, K = W.shape
    u = p.u.astype(np.float64)
    rows_per_block, blocks = row_blocks(R, K, K)
    partial, v, w_v = scratch.empty((blocks, K), np.float64), np.empty(K), np.empty(R)
    y = outputs.empty_like(W)
    steps = p.n_power_iterations if p.training else 1
    sigma = _forward(W, u, steps, p.eps, p.training, rows_per_block, partial, v, w_v, y, streams(y),
                     work=W.size * steps)
    if p.training:
        p.u[...] = u
    return undo(y), None, np.asarray(1.0 / max(sigma, p.eps)), {"W": W, "u": u, "v": v, "sigma": sigma}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dY, undo = matrix_view(dy, p["axis"])
    dW = outputs.empty_like(dY)
    _backward(dY, s["W"], s["u"], s["v"], s["sigma"], p["eps"], np.empty(dY.shape[0]), dW, work=dY.size)
    return (undo(dW),)
