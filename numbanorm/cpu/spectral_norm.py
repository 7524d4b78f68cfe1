"""Spectral norm on the CPU: power iteration with Numba matrix-vector kernels.

The math is the reference's (numbanorm/reference/spectral_norm.py). Vectors and
dot products are float64; each kernel splits its work by shape only (rows, or
fixed blocks of rows for ``W^T u``), so results do not depend on the threads.
"""
import numpy as np
from numba import prange

from .._host import matrix_view, power_iteration
from ._kernel import kernel, outputs, row_blocks, scratch


@kernel
def _matvec(W, v, out):
    """``out = W v``: one dot product per row."""
    for i in prange(W.shape[0]):
        row = W[i]
        total = 0.0
        for j in range(W.shape[1]):
            total += row[j] * v[j]
        out[i] = total


@kernel
def _matvec_t(W, u, rows_per_item, partial):
    """``partial[k] = W[rows of item k]^T u[rows of item k]``: row-major reads, one float64
    partial per block of rows (summed afterwards in a fixed order)."""
    R, K = W.shape
    for k in prange(partial.shape[0]):
        acc = partial[k]
        for i in range(k * rows_per_item, min(R, (k + 1) * rows_per_item)):
            ui, row = u[i], W[i]
            for j in range(K):
                acc[j] += row[j] * ui


@kernel
def _scale(W, factor, out):
    for i in prange(W.shape[0]):
        src, dst = W[i], out[i]
        for j in range(W.shape[1]):
            dst[j] = src[j] * factor


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
    y = outputs.empty_like(W)
    _scale(W, 1.0 / clamped, y, work=W.size)
    return undo(y), None, np.asarray(1.0 / clamped, p.cdtype), {"W": W, "u": u, "v": v, "sigma": sigma}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dY, undo = matrix_view(dy, p["axis"])
    W, u, v, sigma = s["W"], s["u"], s["v"], s["sigma"]
    dW = outputs.empty_like(dY)
    if sigma > p["eps"]:
        inner = np.empty(W.shape[0])
        _row_inner(dY, W, inner, work=W.size)
        _minus_rank_one(dY, 1.0 / sigma, float(inner.sum()) / sigma**2, u, v, dW, work=W.size)
    else:  # sigma clamped to eps: a constant
        _scale(dY, 1.0 / p["eps"], dW, work=W.size)
    return (undo(dW),)
