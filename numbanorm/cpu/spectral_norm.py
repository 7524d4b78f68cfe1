"""Spectral norm on the CPU: power iteration with Numba matrix-vector kernels.

The math is the reference's (numbanorm/reference/spectral_norm.py). Vectors and
dot products are float64; each kernel splits its work by shape only (rows, or
fixed blocks of rows for ``W^T u``), so results do not depend on the threads.
"""
import numpy as np
from numba import prange

from .._host import matrix_view, power_iteration
from ._kernel import ITEM_ELEMENTS, cast_like, kernel, outputs, row_blocks, scratch
from ._stream import store_fence, stream_row, streams


@kernel
def _matvec(W, v, out):
    """``out = W v``: one float64 dot product per row."""
    R, K = W.shape
    Q = R // 4
    for k in prange(Q):
        # Four rows a step, one from each quarter of W: four sequential streams, v loaded once.
        r0, r1, r2, r3 = W[k], W[Q + k], W[2 * Q + k], W[3 * Q + k]
        t0 = 0.0
        t1 = 0.0
        t2 = 0.0
        t3 = 0.0
        for j in range(K):
            vj = v[j]
            t0 += r0[j] * vj
            t1 += r1[j] * vj
            t2 += r2[j] * vj
            t3 += r3[j] * vj
        out[k], out[Q + k], out[2 * Q + k], out[3 * Q + k] = t0, t1, t2, t3
    for i in range(4 * Q, R):
        row = W[i]
        total = 0.0
        for j in range(K):
            total += row[j] * v[j]
        out[i] = total


@kernel
def _matvec_t(W, u, rows_per_item, partial):
    """``partial[k] = W[rows of item k]^T u[rows of item k]``: row-major reads, one float64
    partial per block of rows (summed afterwards in a fixed order)."""
    R, K = W.shape
    for k in prange(partial.shape[0]):
        acc = partial[k]
        start, end = k * rows_per_item, min(R, (k + 1) * rows_per_item)
        # Four rows a step, one from each quarter of the block, as channelwise._lanes_moments:
        # the float64 partial is loaded and stored once per four rows.
        Q = (end - start) // 4
        for i in range(start, start + Q):
            r0, r1, r2, r3 = W[i], W[i + Q], W[i + 2 * Q], W[i + 3 * Q]
            u0, u1, u2, u3 = u[i], u[i + Q], u[i + 2 * Q], u[i + 3 * Q]
            for j in range(K):
                acc[j] += (r0[j] * u0 + r1[j] * u1) + (r2[j] * u2 + r3[j] * u3)
        for i in range(start + 4 * Q, end):
            ui, row = u[i], W[i]
            for j in range(K):
                acc[j] += row[j] * ui


# Elements a work item of :func:`_scale` computes into its L1 buffer between streaming copies.
STREAM_BLOCK = 2048


@kernel
def _scale(src, factor, dst, stream):
    """``dst = src * factor`` over flat arrays, the product in their dtype; with ``stream``, block by
    block through an L1 buffer and streaming stores (:mod:`._stream`)."""
    n = src.shape[0]
    f = cast_like(src, factor)
    for k in prange((n + ITEM_ELEMENTS - 1) // ITEM_ELEMENTS):
        start, end = k * ITEM_ELEMENTS, min(n, (k + 1) * ITEM_ELEMENTS)
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


def _scaled(W, factor):
    """``W * factor`` into a new output, in W's dtype."""
    y = outputs.empty_like(W)
    _scale(W.reshape(-1), factor, y.reshape(-1), streams(y), work=W.size)
    return y


@kernel
def _row_inner(A, B, out):
    """``out[i] = sum_j A[i, j] * B[i, j]``."""
    for i in prange(A.shape[0]):
        a, b = A[i], B[i]
        total = 0.0
        for j in range(A.shape[1]):
            total += a[j] * b[j]
        out[i] = total


@kernel
def _minus_rank_one(dY, factor, coef, u, v, out):
    """``out = dY * factor - coef * u v^T``."""
    for i in prange(dY.shape[0]):
        src, dst, ui = dY[i], out[i], coef * u[i]
        for j in range(dY.shape[1]):
            dst[j] = src[j] * factor - ui * v[j]


def _w_v(W, v):
    out = np.empty(W.shape[0])
    _matvec(W, v, out, work=W.size)
    return out


def _wt_u(W, u):
    R, K = W.shape
    rows_per_item, blocks = row_blocks(R, K, K)
    partial = scratch.zeros((blocks, K))
    _matvec_t(W, u, rows_per_item, partial, work=W.size)
    return partial.sum(axis=0)


def forward(w, p):
    W, undo = matrix_view(w, p.axis)
    u, v, sigma = power_iteration(lambda v: _w_v(W, v), lambda u: _wt_u(W, u), p.u.astype(np.float64),
                                  p.n_power_iterations, p.eps, p.training)
    if p.training:
        p.u[...] = u
    clamped = max(sigma, p.eps)  # a zero weight gives zeros, not NaN
    y = _scaled(W, 1.0 / clamped)
    return undo(y), None, np.asarray(1.0 / clamped), {"W": W, "u": u, "v": v, "sigma": sigma}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dY, undo = matrix_view(dy, p["axis"])
    W, u, v, sigma = s["W"], s["u"], s["v"], s["sigma"]
    if sigma <= p["eps"]:  # sigma clamped to eps: a constant
        return (undo(_scaled(dY, 1.0 / p["eps"])),)
    dW = outputs.empty_like(dY)
    inner = np.empty(W.shape[0])
    _row_inner(dY, W, inner, work=W.size)
    _minus_rank_one(dY, 1.0 / sigma, float(inner.sum()) / sigma**2, u, v, dW, work=W.size)
    return (undo(dW),)
