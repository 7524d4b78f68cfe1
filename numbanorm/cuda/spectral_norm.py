"""Spectral norm on the GPU: the matrix-vector products and the scaling on the device,
the vectors (one entry per row or column of W) normalized on the host.

The math is the reference's (numbanorm/reference/spectral_norm.py).
"""
import numpy as np
from numba import cuda

from .._host import power_iteration
from ._arrays import empty, is_host, rows, to_device
from ._launch import flat_config, grid_config, kernel


@kernel
def _matvec(W, v, out):
    """``out = W v``: a thread per row."""
    for i in range(cuda.grid(1), W.shape[0], cuda.gridsize(1)):
        total = 0.0
        for j in range(W.shape[1]):
            total += W[i, j] * v[j]
        out[i] = total


@kernel
def _matvec_t(W, u, out):
    """``out = W^T u``: a thread per column, so a warp reads consecutive columns of each row."""
    for j in range(cuda.grid(1), W.shape[1], cuda.gridsize(1)):
        total = 0.0
        for i in range(W.shape[0]):
            total += W[i, j] * u[i]
        out[j] = total


@kernel
def _row_inner(A, B, out):
    for i in range(cuda.grid(1), A.shape[0], cuda.gridsize(1)):
        total = 0.0
        for j in range(A.shape[1]):
            total += A[i, j] * B[i, j]
        out[i] = total


@kernel
def _minus_rank_one(dY, factor, coef, u, v, out):
    """``out = dY * factor - coef * u v^T`` (coef 0: a plain scaling)."""
    j0, i0 = cuda.grid(2)
    jstep, istep = cuda.gridsize(2)
    for i in range(i0, dY.shape[0], istep):
        for j in range(j0, dY.shape[1], jstep):
            out[i, j] = dY[i, j] * factor - coef * u[i] * v[j]


def _product(kernel, W, vector, length):
    out = empty(length, np.float64)
    grid, block = flat_config(length)
    kernel[grid, block](W, to_device(vector, np.float64), out)
    return out.copy_to_host()


def _scaled(M, factor, coef, u, v, dtype):
    out = empty(M.shape, dtype)
    if M.size:
        grid, block = grid_config(*M.shape)
        _minus_rank_one[grid, block](M, factor, coef, to_device(u, np.float64), to_device(v, np.float64), out)
    return out


def _axes_but(ndim, axis):
    return tuple(i for i in range(ndim) if i != axis)


def forward(w, p):
    host = is_host(w)
    W, undo = rows(w, _axes_but(w.ndim, p.axis), p.cdtype)
    R, K = W.shape
    u, v, sigma = power_iteration(lambda v: _product(_matvec, W, v, R), lambda u: _product(_matvec_t, W, u, K),
                                  (p.u if is_host(p.u) else p.u.copy_to_host()).astype(np.float64),
                                  p.n_power_iterations, p.eps, p.training)
    if p.training and is_host(p.u):
        p.u[...] = u
    elif p.training:
        p.u.copy_to_device(u.astype(p.u.dtype))
    clamped = max(sigma, p.eps)  # a zero weight gives zeros, not NaN
    y = _scaled(W, 1.0 / clamped, 0.0, u, v, p.dtype)
    inverse = np.asarray(1.0 / clamped, p.cdtype)
    return undo(y), None, inverse if host else to_device(inverse), {"W": W, "u": u, "v": v, "sigma": sigma}


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dY, undo = rows(dy, _axes_but(dy.ndim, p["axis"]), p["cdtype"])
    W, u, v, sigma = s["W"], s["u"], s["v"], s["sigma"]
    if sigma > p["eps"]:
        inner = empty(W.shape[0], np.float64)
        grid, block = flat_config(W.shape[0])
        _row_inner[grid, block](dY, W, inner)
        dW = _scaled(dY, 1.0 / sigma, float(inner.copy_to_host().sum()) / sigma**2, u, v, p["dtype"])
    else:  # sigma clamped to eps: a constant
        dW = _scaled(dY, 1.0 / p["eps"], 0.0, u, v, p["dtype"])
    return (undo(dW),)
