"""Spectral norm on the GPU: the matrix-vector products and the scaling on the device,
the vectors (one entry per row or column of W) normalized on the host.

The math is the reference's (numbanorm/reference/spectral_norm.py). The device
works in the compute dtype (float32 for float32 and float16 weights, with
float32 sums), the host's power iteration in float64.

Both products read W coalesced, and add in an order fixed by the shape:

- ``W v`` (and the gradient's row inner products ``<dY[i], W[i]>``): a warp per
  row, or a block per long row, lanes along the row, then :func:`._reduce.sum_lanes`.
- ``W^T u``: a thread per (chunk of rows, column), neighbouring threads on
  neighbouring columns, each adding its chunk's rows in order into a partial
  row; then :func:`._reduce.column_sums` adds the partial rows in order.
"""
import numpy as np
from numba import cuda

from .._host import power_iteration
from ._arrays import empty, is_host, rows, to_device
from ._launch import cdiv, channel_chunk_config, grid_config, kernel, row_config
from ._reduce import column_sums, scratch_bytes, sum_lanes


@kernel
def _row_dots(W, V, out):
    """``out[i] = W[i] . V[i % len(V)]``: ``V`` is one row (``W v``) or as many as ``W`` (row inner products)."""
    T = out.dtype.type
    scratch = cuda.shared.array(0, out.dtype)  # sum_lanes' scratch, sized at launch
    R, K = W.shape
    lane, lanes, block_rows = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockDim.y
    for first in range(cuda.blockIdx.x * block_rows, R, cuda.gridDim.x * block_rows):  # the same trips for the block
        i = first + cuda.threadIdx.y
        total = T(0)
        if i < R:
            row = i % V.shape[0]
            for j in range(lane, K, lanes):
                total += T(W[i, j]) * T(V[row, j])
        total, _ = sum_lanes(total, T(0), scratch)
        if i < R and lane == 0:
            out[i] = total


@kernel
def _column_dots(W, u, per, part):
    """``part[k, j] = sum(W[i, j] * u[i])`` over the rows ``i`` of chunk ``k`` (``per`` rows), in order."""
    T = part.dtype.type
    R = W.shape[0]
    K, L = part.shape
    j0, k0 = cuda.grid(2)
    jstep, kstep = cuda.gridsize(2)
    for k in range(k0, K, kstep):
        for j in range(j0, L, jstep):
            total = T(0)
            for i in range(k * per, min(R, (k + 1) * per)):
                total += T(W[i, j]) * u[i]
            part[k, j] = total


@kernel
def _minus_rank_one(dY, factor, coef, u, v, out):
    """``out = dY * factor - coef * u v^T`` (coef 0: a plain scaling)."""
    j0, i0 = cuda.grid(2)
    jstep, istep = cuda.gridsize(2)
    for i in range(i0, dY.shape[0], istep):
        cu = coef * u[i]
        for j in range(j0, dY.shape[1], jstep):
            out[i, j] = dY[i, j] * factor - cu * v[j]


def _row_products(W, V):
    """``W[i] . V[i % len(V)]`` per row of ``W``, a device vector in ``W``'s dtype."""
    R, K = W.shape
    out = empty(R, W.dtype)
    if R:
        grid, block = row_config(R, K)
        _row_dots[grid, block, 0, scratch_bytes(block, W.dtype)](W, V, out)
    return out


def times(W, v):
    """``W v`` of the device matrix ``W`` (R, K) and the host vector ``v``, as a float64 host vector.

    A warp (or a block) per row, in ``W``'s dtype.
    """
    return _row_products(W, to_device(np.asarray(v).reshape(1, -1), W.dtype)).copy_to_host().astype(np.float64)


def transpose_times(W, u):
    """``W^T u`` of the device matrix ``W`` (R, K) and the host vector ``u``, as a float64 host vector.

    Two launches, in ``W``'s dtype: partial rows over chunks of rows, then the
    column sums of the first and of the second half of the partial rows (as
    :func:`._reduce.column_sums`' two reductions), added on the host in float64.
    """
    R, K = W.shape
    per, chunks = channel_chunk_config(R, K)
    if chunks == 0 or K == 0:
        return np.zeros(K)
    half = cdiv(chunks, 2)
    part = empty((2 * half, K), W.dtype)  # (a last chunk past the rows adds up to zeros)
    grid, block = grid_config(2 * half, K)
    _column_dots[grid, block](W, to_device(np.asarray(u), W.dtype), per, part)
    out = empty((2, K), W.dtype)
    column_sums(part[:half], part[half:], out[0], out[1])
    return out.copy_to_host().astype(np.float64).sum(axis=0)


def _scaled(M, factor, coef, u, v, dtype):
    out = empty(M.shape, dtype)
    if M.size:
        T = M.dtype.type
        grid, block = grid_config(*M.shape)
        _minus_rank_one[grid, block](M, T(factor), T(coef), to_device(u, M.dtype), to_device(v, M.dtype), out)
    return out


def _axes_but(ndim, axis):
    return tuple(i for i in range(ndim) if i != axis)


def forward(w, p):
    host = is_host(w)
    W, undo = rows(w, _axes_but(w.ndim, p.axis), p.cdtype)
    u, v, sigma = power_iteration(lambda v: times(W, v), lambda u: transpose_times(W, u),
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
        inner = float(_row_products(dY, W).copy_to_host().astype(np.float64).sum())  # <dY, W>
        dW = _scaled(dY, 1.0 / sigma, inner / sigma**2, u, v, p["dtype"])
    else:  # sigma clamped to eps: a constant
        dW = _scaled(dY, 1.0 / p["eps"], 0.0, u, v, p["dtype"])
    return (undo(dW),)
