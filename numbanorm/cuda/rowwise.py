"""The shared "normalize rows" primitive on the GPU: layer, RMS, group and instance norm.

The form is the CPU backend's (:mod:`numbanorm.cpu.rowwise`): ``x2`` of shape
``(R, L)``, C-contiguous, one normalized group per row, and affine vectors of
``period * nseg`` entries, segment ``q`` of row ``r`` using entry
``(r % period) * nseg + q``. Layer norm is ``period=1, nseg=L``, instance norm
``period=C, nseg=1``, group norm ``period=G, nseg=C // G``.

A row is handled by the lanes of one warp (short rows) or of one block (long
rows), see :func:`._launch.row_config`. Its statistics take two passes, in the
compute dtype (float32 for float32 and float16 data):

1. ``pivot = x[r, 0]``, then the sums of ``x - pivot`` and ``|x - pivot|``:
   ``mean = pivot + sum / L`` and ``scale = mean(|x - pivot|)``. The pivot keeps
   the sums small for large-mean data (``1e4 + randn`` in float32).
2. ``rss = scale * sqrt(sum(((x - mean) / scale)**2))``, the root of the sum of
   squared deviations: never ``E[x^2] - E[x]^2``, and no square of data near
   1e30 overflows float32. Then ``rstd = 1 / hypot(std, sqrt(eps))``, which is
   ``1 / sqrt(var + eps)`` without forming ``var``.

Rows that fit in the block's shared memory (48 KiB: up to ~12k float32 values
per row for the forward, half that for the backward) are read from global
memory once: the first pass keeps them there for the others (:func:`row_cache_start`).

The backward is fused per row: the row sums of ``g = dy * w`` and ``g * xhat``
(one lane reduction), then ``dx``. dweight and dbias take two stages: each row
group of a block adds its rows' ``dy * xhat`` and ``dy`` into its own row of
partial sums, and :func:`._reduce.column_sums` adds the partial rows up.
"""
import functools
import math

import numpy as np
from numba import cuda

from ._arrays import empty, full, vector
from ._launch import cdiv, flat_config, kernel, partial_rows_limit, ROW_CACHE_BYTES, row_config
from ._reduce import column_sums, scratch_bytes, scratch_slots, sum_lanes


@cuda.jit(device=True)
def segment(j, nseg, seg):
    """Which of its row's ``nseg`` segments (``seg`` elements each) element ``j`` is in."""
    if nseg == 1:
        return 0
    if seg == 1:
        return j
    return j // seg


@cuda.jit(device=True)
def row_cache_start(length):
    """Where this thread's row keeps ``length`` values in the dynamic shared memory: after the
    reduction scratch, one slice per row of the block. (A device function cannot return the
    slice itself; the kernels take ``shared[start:start + length]``, empty for length 0.)"""
    return scratch_slots() + cuda.threadIdx.y * length


@cuda.jit(device=True)
def row_moments(x, r, j0, j1, valid, center, scratch, cache):
    """``(mean, rss)`` of ``x[r, j0:j1]``: its mean (0 without centering) and ``sqrt(sum((x - mean)**2))``.

    Every lane of the row calls it; a row past the end (``valid`` false) adds nothing.
    With a ``cache`` of ``j1 - j0`` entries (else empty) the first pass keeps the
    values there and the second reads them back. Each lane reads back only what it
    stored itself, so no synchronization is needed.
    """
    T = x.dtype.type
    lane, lanes = cuda.threadIdx.x, cuda.blockDim.x
    cached = cache.shape[0] > 0
    pivot = x[r, j0] if valid and center else T(0)
    total = T(0)
    size = T(0)
    if valid:
        for j in range(j0 + lane, j1, lanes):
            v = x[r, j]
            if cached:
                cache[j - j0] = v
            d = v - pivot
            total += d
            size += abs(d)
    total, size = sum_lanes(total, size, scratch)
    n = T(j1 - j0)
    mean = pivot + total / n if center else T(0)
    scale = size / n
    squares = T(0)
    if valid and scale > 0:
        for j in range(j0 + lane, j1, lanes):
            d = ((cache[j - j0] if cached else x[r, j]) - mean) / scale
            squares += d * d
    squares, _ = sum_lanes(squares, T(0), scratch)
    return mean, scale * T(math.sqrt(squares))


@kernel
def _forward(x, y, w, b, period, nseg, sqrt_eps, center, cache_length, mean_out, rstd_out, std_out):
    T = x.dtype.type
    shared = cuda.shared.array(0, x.dtype)  # sum_lanes' scratch, then the cached rows; sized at launch
    start = row_cache_start(cache_length)
    cache = shared[start:start + cache_length]
    cached = cache_length > 0
    R, L = x.shape
    seg = L // nseg
    lane, lanes, rows = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockDim.y
    for first in range(cuda.blockIdx.x * rows, R, cuda.gridDim.x * rows):
        r = first + cuda.threadIdx.y
        valid = r < R
        mean, rss = row_moments(x, r, 0, L, valid, center, shared, cache)
        if valid:  # (rows past the end would divide by zero when eps is 0)
            std = rss / math.sqrt(T(L))
            rstd = T(1) / math.hypot(std, sqrt_eps)
            if lane == 0:
                mean_out[r], rstd_out[r], std_out[r] = mean, rstd, std
            base = (r % period) * nseg
            for j in range(lane, L, lanes):
                k = base + segment(j, nseg, seg)
                y[r, j] = ((cache[j] if cached else x[r, j]) - mean) * rstd * w[k] + b[k]


@kernel
def _moments(x, length, mean_out, rss_out):
    """Moments of every piece ``x[r, s * length:(s + 1) * length]``, at ``[r, s]`` of the outputs."""
    shared = cuda.shared.array(0, x.dtype)  # sum_lanes' scratch, sized at launch
    no_cache = shared[0:0]
    R, L = x.shape
    pieces = mean_out.shape[1]
    rows = cuda.blockDim.y
    for first in range(cuda.blockIdx.x * rows, R * pieces, cuda.gridDim.x * rows):
        i = first + cuda.threadIdx.y
        valid = i < R * pieces
        r, s = i // pieces, i % pieces
        j0 = s * length
        mean, rss = row_moments(x, r, j0, min(L, j0 + length), valid, True, shared, no_cache)
        if valid and cuda.threadIdx.x == 0:
            mean_out[r, s], rss_out[r, s] = mean, rss


@kernel
def _backward(x, dy, dx, w, period, nseg, mean, rstd, center, cache_length, dw_part, db_part):
    """dx of every row, and this row group's partial dweight, dbias sums in row ``p`` of the partials.

    With g = dy * w and xhat = (x - mean) * rstd:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); mean(g) drops without centering.
    With ``cache_length`` (= L) the sums' pass keeps the row of x and dy in shared memory for dx.
    """
    T = x.dtype.type
    shared = cuda.shared.array(0, x.dtype)  # sum_lanes' scratch, then the cached rows; sized at launch
    start = row_cache_start(2 * cache_length)
    x_cache, dy_cache = shared[start:start + cache_length], shared[start + cache_length:start + 2 * cache_length]
    cached = cache_length > 0
    R, L = x.shape
    seg = L // nseg
    lane, lanes, rows = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockDim.y
    p = cuda.blockIdx.x * rows + cuda.threadIdx.y
    for k in range(lane, dw_part.shape[1], lanes):
        dw_part[p, k] = T(0)
        db_part[p, k] = T(0)
    cuda.syncthreads()
    for first in range(cuda.blockIdx.x * rows, R, cuda.gridDim.x * rows):  # the same trips for the whole block
        r = first + cuda.threadIdx.y
        valid = r < R
        m = mean[r] if valid else T(0)
        rs = rstd[r] if valid else T(0)
        base = (r % period) * nseg
        sum_g = T(0)
        sum_gx = T(0)
        if seg == 1:  # a weight per element: each lane owns its columns of the partials
            if valid:
                for j in range(lane, L, lanes):
                    d = dy[r, j]
                    v = x[r, j]
                    if cached:
                        x_cache[j], dy_cache[j] = v, d
                    xhat = (v - m) * rs
                    dw_part[p, base + j] += d * xhat
                    db_part[p, base + j] += d
                    g = d * w[base + j]
                    sum_g += g
                    sum_gx += g * xhat
            sum_g, sum_gx = sum_lanes(sum_g, sum_gx, shared)
        else:  # a weight per segment: the segment's sums over the lanes
            for q in range(nseg):
                sum_dy = T(0)
                sum_dyx = T(0)
                if valid:
                    for j in range(q * seg + lane, (q + 1) * seg, lanes):
                        d = dy[r, j]
                        v = x[r, j]
                        if cached:
                            x_cache[j], dy_cache[j] = v, d
                        sum_dy += d
                        sum_dyx += d * ((v - m) * rs)
                sum_dy, sum_dyx = sum_lanes(sum_dy, sum_dyx, shared)
                if valid and lane == 0:
                    dw_part[p, base + q] += sum_dyx
                    db_part[p, base + q] += sum_dy
                sum_g += w[base + q] * sum_dy
                sum_gx += w[base + q] * sum_dyx
        mean_g = sum_g / T(L) if center else T(0)
        mean_gx = sum_gx / T(L)
        if cached:  # the segments' lanes stored elements other lanes read below
            cuda.syncthreads()
        if valid:
            for j in range(lane, L, lanes):
                k = base + segment(j, nseg, seg)
                v = x_cache[j] if cached else x[r, j]
                d = dy_cache[j] if cached else dy[r, j]
                dx[r, j] = rs * (d * w[k] - mean_g - (v - m) * rs * mean_gx)
        if cached:  # read before the next rows overwrite the cache
            cuda.syncthreads()


@functools.lru_cache(maxsize=256)
def cache_length(block, L, arrays, dtype):
    """``L`` when ``arrays`` rows of ``L`` values per row of the block fit in shared memory
    beside the reduction scratch, else 0 (the kernel re-reads global memory)."""
    return L if _shared_bytes(block, L, arrays, dtype) <= ROW_CACHE_BYTES else 0


def _shared_bytes(block, length, arrays, dtype):
    """Dynamic shared memory of a row kernel: the reduction scratch and ``arrays`` cached rows per row."""
    return scratch_bytes(block, dtype) + block[1] * arrays * length * np.dtype(dtype).itemsize


def forward(x2, weight, bias, period, nseg, eps, center, out_dtype):
    """Normalize each row of ``x2``: ``y = (x - mean) * rstd * w + b`` with per-row statistics.

    Parameters
    ----------
    x2 : device array, shape (R, L), C-contiguous
        The rows, in the compute dtype (float32 or float64).
    weight, bias : array or None
        ``period * nseg`` entries (any shape, dtype, host or device); None is ones / zeros.
    period, nseg : int
        Row ``r``, segment ``q`` uses entry ``(r % period) * nseg + q``.
    eps : float
        Added to the variance.
    center : bool
        Subtract the mean (False: RMS norm, statistics around 0).
    out_dtype : dtype
        The dtype of ``y2`` (float16 input gets float16 back).

    Returns
    -------
    y2 : device array, shape (R, L), ``out_dtype``
    mean, rstd, std : device arrays, shape (R,), in ``x2``'s dtype
        ``std`` is the square root of the biased variance (its square may overflow).
    """
    R, L = x2.shape
    dtype = x2.dtype
    if L == 0:  # statistics of nothing
        return empty((R, 0), out_dtype), full(R, np.nan, dtype), full(R, np.nan, dtype), full(R, np.nan, dtype)
    w = vector(weight, period * nseg, 1.0, dtype)
    b = vector(bias, period * nseg, 0.0, dtype)
    y2 = empty((R, L), out_dtype)
    mean, rstd, std = empty(R, dtype), empty(R, dtype), empty(R, dtype)
    if R:
        grid, block = row_config(R, L)
        length = cache_length(block, L, 1, dtype)
        _forward[grid, block, 0, _shared_bytes(block, length, 1, dtype)](
            x2, y2, w, b, period, nseg, dtype.type(math.sqrt(eps)), center, length, mean, rstd, std)
    return y2, mean, rstd, std


def moments(x2, length):
    """``mean`` and ``rss = sqrt(sum((x - mean)**2))`` of the device rows ``x2`` cut in pieces.

    Each row of ``L > 0`` values is cut into ``ceil(L / length)`` pieces, so that
    a few long rows still keep many blocks busy; the results are ``(R, pieces)``.
    """
    R, L = x2.shape
    pieces = cdiv(L, length)
    mean, rss = empty((R, pieces), x2.dtype), empty((R, pieces), x2.dtype)
    if R:
        grid, block = row_config(R * pieces, length)
        _moments[grid, block, 0, scratch_bytes(block, x2.dtype)](x2, length, mean, rss)
    return mean, rss


def backward(x2, dy2, weight, period, nseg, mean, rstd, center, dx_dtype, dw_dtype, db_dtype):
    """Gradients of :func:`forward`.

    Parameters
    ----------
    x2, dy2 : device arrays, shape (R, L), C-contiguous, compute dtype
        The forward's rows and the gradient of ``y2``.
    weight, period, nseg, center
        As given to :func:`forward`.
    mean, rstd : device arrays, shape (R,)
        The statistics :func:`forward` returned.
    dx_dtype, dw_dtype, db_dtype : dtype
        The dtypes of the three results.

    Returns
    -------
    dx2 : device array, shape (R, L)
    dweight, dbias : device arrays, shape (period * nseg,)
        ``sum(dy * xhat)`` and ``sum(dy)`` per affine entry.
    """
    R, L = x2.shape
    dtype = x2.dtype
    entries = period * nseg
    dx2 = empty((R, L), dx_dtype)
    dw, db = empty(entries, dw_dtype), empty(entries, db_dtype)
    if R == 0 or L == 0:
        return dx2, full(entries, 0.0, dw_dtype), full(entries, 0.0, db_dtype)
    w = vector(weight, entries, 1.0, dtype)
    grid, block = row_config(R, L, partial_rows_limit())
    parts = grid * block[1]
    dw_part, db_part = empty((parts, entries), dtype), empty((parts, entries), dtype)
    length = cache_length(block, L, 2, dtype)
    _backward[grid, block, 0, _shared_bytes(block, length, 2, dtype)](x2, dy2, dx2, w, period, nseg, mean, rstd,
                                                                      center, length, dw_part, db_part)
    column_sums(dw_part, db_part, dw, db)
    return dx2, dw, db
