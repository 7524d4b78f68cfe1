"""The shared "per-channel statistics" primitive on the GPU: batch norm in either layout.

The input is the CPU backend's ``x3`` of shape ``(A, C, B)``, C-contiguous,
channel in the middle (see :mod:`numbanorm.cpu.channelwise`). It may be float16:
every kernel computes in the dtype of the float32/float64 arrays it is given
(the statistics it writes or reads), never in ``x3``'s, so float16 data needs
no cast pass.

Statistics take two steps, in the compute dtype:

1. Partial moments ``(mean, rss)`` of pieces of each channel, where
   ``rss = sqrt(sum((x - mean)**2))`` (kept as a root, so data near 1e30 fits
   float32).

   Channels-first data (``B > 1``): the ``A * C`` planes ``x3[a, c, :]``, cut
   in pieces when they are few and long (at most ``partial_rows_limit()``
   pieces in all, a number fixed by the shape), each piece handled by a warp
   or a block with the row primitive (:func:`.rowwise.moments`).

   Channels-last data (``B == 1``): :func:`_chunk_moments` reads ``x2 =
   x3[:, :, 0]`` once. Its rows are taken ``m`` at a time, as "fused" rows of
   ``W = m * C`` values (``m = ROW_WARP // C``, 1 for 32 channels or more), so
   that the lanes of a warp read consecutive addresses even for few channels;
   fused column ``j`` holds channel ``j % C``. A thread takes a piece of ``per``
   fused rows of one fused column and sums, in one pass, ``d = x - shift``
   (``shift`` the piece's first value) and ``d**2``, as the CPU backend does
   (:func:`numbanorm.cpu._sums.shifted_moments`). As ``shift`` is a value of the
   piece, ``sum(d**2) = M2 + n * (shift - mean)**2 <= (n + 1) * M2``: the
   subtraction ``M2 = sum(d**2) - sum(d)**2 / n`` loses at most a factor ``n``
   of the compute dtype's precision, and about ``1 + z**2`` for a shift ``z``
   standard deviations from the mean, so ``1e4 + randn`` in float32 keeps its
   unit variance. The sums are kept in units of the largest ``|d|`` seen so far
   (a running scale, as LAPACK's ``slassq`` does), so no square overflows or
   underflows float32 (data near 1e30 or 1e-30). The pieces of a block's rows
   of threads are then merged in shared memory (:func:`_merge_rows`) into one
   partial, a chunk of ``rows * per`` fused rows: a partial per block's column
   of threads, not per thread, so that step 2 has little to merge.

2. :func:`_merge`: Chan's formula, in parallel: a block per group of channels,
   each channel's partials split over the block's rows of threads, each row
   merging its share in order, then the rows' results merged as a tree through
   shared memory (:func:`_merge_rows`). The counts of the partials follow from
   the shape: no host array, no copy.

Normalizing and ``dx`` are elementwise over the same rows: ``(A * C, B)``, row
``r`` of channel ``r % C`` (channels-first), or ``(A, C)``, column ``j`` of
channel ``j`` (channels-last). The backward sums ``sum(dy)`` and ``sum(dy *
xhat)`` per channel take two stages: per piece or chunk, written as partial
rows ``(P, C)``, then :func:`._reduce.column_sums`.

Every split (pieces, chunks, groups of a merge) depends on the shape only,
never on the grid: results are the same bits for any number of blocks.
"""
import math

import numpy as np
from numba import cuda

from .. import _host
from ._arrays import compute_dtype, empty, full, is_host, to_device, transposed, vector
from ._launch import (ROW_WARP, cdiv, channel_chunk_config, channel_merge_config, channel_piece_length,
                      flat_config, grid_config, kernel, row_config)
from ._reduce import column_sums, scratch_bytes, sum_lanes
from .rowwise import moments as row_moments


def _fused(A, C):
    """Channels-last: how many rows of ``x2`` (A, C) a fused row holds."""
    return max(1, min(ROW_WARP // max(C, 1), A))


# ----------------------------------------------------------------------------- statistics

@cuda.jit(device=True)
def _count(extent, index, step):
    """How many of ``extent`` values chunk ``index`` of ``step`` values holds."""
    return min(max(extent - index * step, 0), step)


@cuda.jit(device=True)
def _chan(n, mean, rss, nk, mean_k, rss_k):
    """Chan's merge of ``(n, mean, rss)`` with a part of ``nk`` values: ``M2 = M2 + M2_k + delta**2 *
    n * nk / (n + nk)``, as roots (``rss = sqrt(M2)``; hypot adds squares without forming them)."""
    if nk == 0:
        return n, mean, rss
    total = n + nk
    share = nk / total
    delta = mean_k - mean
    between = abs(delta) * math.sqrt(n * share)
    return total, mean + delta * share, math.hypot(math.hypot(rss, rss_k), between)


@cuda.jit(device=True)
def _merge_rows(n, mean, rss, shared):
    """Chan's merge of the ``(n, mean, rss)`` of the block's rows of threads, per column (``threadIdx.x``):
    a tree over the rows, in an order fixed by ``blockDim``; row 0 gets the totals. Every thread of the
    block calls it; ``shared`` (dynamic) has ``3 * blockDim.x * blockDim.y`` entries."""
    i, h = cuda.threadIdx.x, cuda.threadIdx.y
    columns, rows = cuda.blockDim.x, cuda.blockDim.y
    size = columns * rows
    slot = h * columns + i
    cuda.syncthreads()  # the previous merge's reads are done
    shared[slot], shared[size + slot], shared[2 * size + slot] = n, mean, rss
    step = 1
    while step < rows:  # rows h and h + step, for h a multiple of 2 * step
        cuda.syncthreads()
        if h % (2 * step) == 0 and h + step < rows:
            other = slot + step * columns
            n, mean, rss = _chan(n, mean, rss, shared[other], shared[size + other], shared[2 * size + other])
            shared[slot], shared[size + slot], shared[2 * size + slot] = n, mean, rss
        step *= 2
    return n, mean, rss


@cuda.jit(device=True)
def _column_moments(x, start, n, W, like):
    """Mean and rss of the ``n`` values ``x[start], x[start + W], ...`` in one pass, in ``like``'s dtype.

    Sums of ``d = x - shift`` (``shift = x[start]``) and ``d**2``, in units of the largest ``|d|``
    so far (``scale``): ``u1 = sum(d) / scale``, ``u2 = sum(d**2) / scale**2``.
    """
    T = like.dtype.type
    shift = T(x[start])
    scale = T(0)
    inv = T(0)
    u1 = T(0)
    u2 = T(0)
    stop = start + n * W
    for f in range(start, stop, 4 * W):  # four rows a step: four loads in flight
        d0 = T(x[f]) - shift
        d1 = T(x[f + W]) - shift if f + W < stop else T(0)
        d2 = T(x[f + 2 * W]) - shift if f + 2 * W < stop else T(0)
        d3 = T(x[f + 3 * W]) - shift if f + 3 * W < stop else T(0)
        big = max(max(abs(d0), abs(d1)), max(abs(d2), abs(d3)))
        if big > scale:  # rare (a few times a column): rescale, so every |d| / scale <= 1
            ratio = scale / big
            u1 *= ratio
            u2 *= ratio * ratio
            scale = big
            inv = T(1) / big
        t0, t1, t2, t3 = d0 * inv, d1 * inv, d2 * inv, d3 * inv
        u1 += (t0 + t1) + (t2 + t3)
        u2 += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3)
    inv_n = T(1) / T(n)
    return shift + scale * (u1 * inv_n), scale * T(math.sqrt(max(u2 - u1 * u1 * inv_n, T(0))))


@kernel
def _chunk_moments(x, per, mean_part, rss_part):
    """Channels-last, one pass: mean and rss of every chunk ``k`` of every fused column ``j``, at ``[k, j]``.

    ``x`` is ``x2`` flat; fused row ``r`` is ``x[r * W:(r + 1) * W]`` (the last one may be short).
    Thread row ``t`` of a block takes ``per`` fused rows of its column, from fused row ``(k * rows
    + t) * per``; the block's rows are then merged (:func:`_merge_rows`): chunk ``k`` is ``rows *
    per`` fused rows.
    """
    T = mean_part.dtype.type
    shared = cuda.shared.array(0, mean_part.dtype)  # _merge_rows' scratch, sized at launch
    K, W = mean_part.shape
    N = x.shape[0]
    full, tail = N // W, N % W  # column j has full + (j < tail) values
    i, t = cuda.threadIdx.x, cuda.threadIdx.y
    columns, rows = cuda.blockDim.x, cuda.blockDim.y
    for k in range(cuda.blockIdx.y, K, cuda.gridDim.y):  # the same trips for the whole block
        for first in range(cuda.blockIdx.x * columns, W, cuda.gridDim.x * columns):
            j = first + i
            piece = k * rows + t
            n = _count(full + (j < tail), piece, per) if j < W else 0
            mean = T(0)
            rss = T(0)
            if n > 0:
                mean, rss = _column_moments(x, piece * per * W + j, n, W, mean_part)
            _, mean, rss = _merge_rows(T(n), mean, rss, shared)
            if t == 0 and j < W:
                mean_part[k, j], rss_part[k, j] = mean, rss


@kernel
def _merge(mean_part, rss_part, full, tail, step, sqrt_eps, mean_out, std_out, rstd_out):
    """Chan's merge of the partials ``[g, :, q]`` of each channel, in a fixed order; partial
    ``(g, q)`` holds the values of chunk ``q`` (of ``step`` values) of ``full + (g < tail)``.

    A block is ``(columns, groups)`` threads: thread ``(i, h)`` merges the partials ``h, h +
    groups, ...`` (numbered ``g * Q + q``) of channel ``first + i`` in order, then the groups'
    results are merged by :func:`_merge_rows`. Neighbouring threads read neighbouring channels.
    """
    T = mean_out.dtype.type
    shared = cuda.shared.array(0, mean_out.dtype)  # _merge_rows' scratch, sized at launch
    G, C, Q = mean_part.shape
    i, h = cuda.threadIdx.x, cuda.threadIdx.y
    columns, groups = cuda.blockDim.x, cuda.blockDim.y
    g_step, q_step = groups // Q, groups % Q  # (g, q) moves by this, without a division per partial
    for first in range(cuda.blockIdx.x * columns, C, cuda.gridDim.x * columns):  # the same trips for the block
        c = first + i
        n = T(0)
        mean = T(0)
        rss = T(0)
        if c < C:
            g, q = h // Q, h % Q
            while g < G:
                nk = T(_count(full + (g < tail), q, step))
                n, mean, rss = _chan(n, mean, rss, nk, mean_part[g, c, q], rss_part[g, c, q])
                g += g_step
                q += q_step
                if q >= Q:
                    g += 1
                    q -= Q
        n, mean, rss = _merge_rows(n, mean, rss, shared)
        if h == 0 and c < C:
            std = rss / T(math.sqrt(n))
            mean_out[c], std_out[c] = mean, std
            rstd_out[c] = T(1) / T(math.hypot(std, sqrt_eps))


@kernel
def _frozen_rstd(var, eps, rstd_out):
    """``rstd = 1 / sqrt(var + eps)`` of given (running) variances."""
    T = rstd_out.dtype.type
    for c in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        rstd_out[c] = T(1) / math.sqrt(T(var[c]) + eps)


def moments(x3, eps, dtype=None):
    """Per-channel batch statistics of ``x3`` over axes 0 and 2.

    Two launches for channels-last data (one pass over ``x3``, then the merge),
    the row primitive's and the merge for channels-first data; nothing is copied
    between the host and the device.

    Parameters
    ----------
    x3 : device array, shape (A, C, B), C-contiguous
        float16, float32 or float64.
    eps : float
        Added to the variance for ``rstd``.
    dtype : dtype, optional
        The compute dtype, float32 or float64 (default ``x3``'s, float32 for float16).

    Returns
    -------
    mean, std, rstd : device arrays, shape (C,), compute dtype
        ``std`` is the square root of the biased variance (its square may overflow).
    """
    A, C, B = x3.shape
    dtype = compute_dtype(x3, dtype)
    if C == 0 or A * B == 0:  # statistics of nothing
        return full(C, np.nan, dtype), full(C, np.nan, dtype), full(C, np.nan, dtype)
    if B > 1:
        length = channel_piece_length(A, C, B)
        mean_part, rss_part = row_moments(x3.reshape(A * C, B), length, dtype)
        shape = (A, C, mean_part.shape[1])  # [a, c, piece]
        mean_part, rss_part = mean_part.reshape(shape), rss_part.reshape(shape)
        counts = (B, 0, length)
    else:
        m = _fused(A, C)
        per, pieces = channel_chunk_config(cdiv(A, m), m * C)  # a thread's piece: per fused rows of a column
        grid, block = grid_config(pieces, m * C)
        K = cdiv(pieces, block[1])  # a chunk: the pieces of a block's rows of threads, merged
        mean_part, rss_part = empty((K, m * C), dtype), empty((K, m * C), dtype)
        _chunk_moments[grid, block, 0, 3 * block[0] * block[1] * dtype.itemsize](
            x3.reshape(A * C), per, mean_part, rss_part)
        # [k, i * C + c] as [i, c, k]: partial (i, k) holds chunk k of rows i, i + m, ...
        mean_part = transposed(mean_part.reshape(K, m, C), (1, 2, 0))
        rss_part = transposed(rss_part.reshape(K, m, C), (1, 2, 0))
        counts = (A // m, A % m, block[1] * per)
    mean, std, rstd = empty(C, dtype), empty(C, dtype), empty(C, dtype)
    grid, block = channel_merge_config(C, mean_part.shape[0] * mean_part.shape[2])
    _merge[grid, block, 0, 3 * block[0] * block[1] * dtype.itemsize](
        mean_part, rss_part, *counts, dtype.type(math.sqrt(eps)), mean, std, rstd)
    return mean, std, rstd


def frozen_stats(running_mean, running_var, eps, dtype):
    """``(mean, rstd)`` in ``dtype`` on the device from running statistics.

    Device running statistics are read in place; host ones are copied over
    (the caller chose to keep them on the host).
    """
    mean = to_device(running_mean, dtype, copy=True)  # a copy: the cache must not see later updates
    var = to_device(running_var)
    rstd = empty(var.shape, dtype)
    if var.size:
        grid, block = flat_config(var.size)
        _frozen_rstd[grid, block](var, np.dtype(dtype).type(eps), rstd)
    return mean, rstd


@kernel
def _update_running(running, stat, power, scale, factor):
    """``running = (1 - factor) * running + factor * scale * mean(stat[:, c] ** power)``, in place."""
    T = stat.dtype.type
    K, C = stat.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        total = T(0)
        for k in range(K):
            total += stat[k, c] if power == 1 else stat[k, c] * stat[k, c]
        running[c] = (T(1) - factor) * T(running[c]) + factor * (scale * (total / T(K)))


def update_running(running, stat, factor, power=1, scale=1.0):
    """PyTorch's running average of the batch statistic ``scale * mean(stat ** power, axis=0)``, in place.

    Parameters
    ----------
    running : array, shape (C,)
        Updated in place. On the device: by one kernel, in ``stat``'s dtype, with
        no copy. On the host (the caller's choice): ``stat`` is copied to the host
        and the update made there in float64, as on the CPU backend.
    stat : device array, shape (K, C)
        ``K`` batch statistics per channel (1 for batch norm, the samples for
        instance norm), averaged.
    factor : float
        The momentum.
    power, scale
        ``power=2`` turns standard deviations into variances; ``scale`` is the
        unbiasing factor ``n / (n - 1)``.
    """
    if is_host(running):
        batch = scale * (stat.copy_to_host().astype(np.float64) ** power).mean(axis=0)
        _host.update_running(running, batch, factor)
        return
    T = stat.dtype.type
    grid, block = flat_config(stat.shape[1])
    _update_running[grid, block](running, stat, power, T(scale), T(factor))


@kernel
def _update_running_stats(running_mean, running_var, mean, std, unbias, factor):
    """Both running averages in place: of ``mean`` and of the unbiased variance ``unbias * std**2``."""
    T = mean.dtype.type
    keep = T(1) - factor
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        running_mean[c] = keep * T(running_mean[c]) + factor * mean[c]
        running_var[c] = keep * T(running_var[c]) + factor * (unbias * (std[c] * std[c]))


def update_running_stats(running_mean, running_var, mean, std, n, factor):
    """PyTorch's running averages of batch norm, in place: of the batch ``mean`` and of the
    unbiased variance ``std**2 * n / (n - 1)`` (``n`` values per channel).

    Device running statistics: one launch, in ``mean``'s dtype, no copy. Host ones
    (the caller's choice): the statistics are copied to the host and the
    averages taken there in float64 (:func:`update_running`).
    """
    if is_host(running_mean) or is_host(running_var):
        update_running(running_mean, mean.reshape(1, -1), factor)
        update_running(running_var, std.reshape(1, -1), factor, 2, n / (n - 1))
        return
    T = mean.dtype.type
    grid, block = flat_config(mean.shape[0])
    _update_running_stats[grid, block](running_mean, running_var, mean, std, T(n / (n - 1)), T(factor))


# ----------------------------------------------------------------------------- y = (x - mean) * rstd * w + b

def _rows(x3):
    """The shape ``(R, L)`` of the rows that elementwise kernels run on, and whether the channel is the column."""
    A, C, B = x3.shape
    if B > 1:
        return (A * C, B), False
    return (A, C), True


@kernel
def _normalize(x, y, L, mean, rstd, w, b, last):
    """``y = (x - mean[c]) * (rstd[c] * w[c]) + b[c]`` on flat rows of ``L`` values, element ``(r, j)``
    at ``r * L + j``: rows ``(A, C)`` (``last``: channel ``j`` is column ``j``) or ``(A * C, B)`` (row
    ``r`` is of channel ``r % C``). A thread's channels are its outer loop, so their constants are
    read once, not per element; flat indices keep the registers few."""
    T = mean.dtype.type
    N = x.shape[0]
    C = mean.shape[0]
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    if last:
        for c in range(j0, L, jstep):
            m, s, t = mean[c], rstd[c] * w[c], b[c]
            for f in range(r0 * L + c, N, rstep * L):
                y[f] = (T(x[f]) - m) * s + t
    else:
        for r in range(r0, N // L, rstep):
            c = r % C
            m, s, t = mean[c], rstd[c] * w[c], b[c]
            for f in range(r * L + j0, (r + 1) * L, jstep):
                y[f] = (T(x[f]) - m) * s + t


def normalize(x3, mean, rstd, weight, bias, out_dtype):
    """``y3 = (x - mean[c]) * rstd[c] * weight[c] + bias[c]`` per channel ``c``, in one launch.

    Parameters
    ----------
    x3 : device array, shape (A, C, B), C-contiguous
        float16, float32 or float64.
    mean, rstd : device arrays, shape (C,)
        Their dtype is the compute dtype.
    weight, bias : arrays of shape (C,) or None
        Host or device, any float dtype; None is ones / zeros.
    out_dtype : dtype

    Returns
    -------
    y3 : device array, shape (A, C, B), ``out_dtype``
    """
    A, C, B = x3.shape
    dtype = mean.dtype
    w, b = vector(weight, C, 1.0, dtype), vector(bias, C, 0.0, dtype)
    y3 = empty(x3.shape, out_dtype)
    if x3.size:
        (R, L), last = _rows(x3)
        grid, block = grid_config(R, L)
        _normalize[grid, block](x3.reshape(x3.size), y3.reshape(y3.size), L, mean, rstd, w, b, last)
    return y3


# ----------------------------------------------------------------------------- backward

@kernel
def _plane_grad_sums(x, dy, mean, rstd, length, sum_dy, sum_dyx):
    """Channels-first: ``sum(dy)`` and ``sum(dy * xhat)`` over piece ``s`` (``length`` values) of
    each plane ``r = a * C + c``, at ``[a * pieces + s, c]`` of the partials: a warp or a block each."""
    T = mean.dtype.type
    scratch = cuda.shared.array(0, mean.dtype)  # sum_lanes' scratch, sized at launch
    R, L = x.shape
    C = mean.shape[0]
    pieces = (L + length - 1) // length
    lane, lanes, rows = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockDim.y
    for first in range(cuda.blockIdx.x * rows, R * pieces, cuda.gridDim.x * rows):  # the same trips for the block
        i = first + cuda.threadIdx.y
        valid = i < R * pieces
        r, s = i // pieces, i % pieces
        c = r % C
        s1 = T(0)
        s2 = T(0)
        if valid:
            m, rs = mean[c], rstd[c]
            for j in range(s * length + lane, min(L, (s + 1) * length), lanes):
                d = T(dy[r, j])
                s1 += d
                s2 += d * ((T(x[r, j]) - m) * rs)
        s1, s2 = sum_lanes(s1, s2, scratch)
        if valid and lane == 0:
            p = (r // C) * pieces + s
            sum_dy[p, c], sum_dyx[p, c] = s1, s2


@kernel
def _chunk_grad_sums(x, dy, mean, rstd, per, sum_dy, sum_dyx):
    """Channels-last: ``sum(dy)`` and ``sum(dy * xhat)`` over every chunk ``k`` of every fused column
    ``j`` (channel ``j % C``), at ``[k, j]``; the fused rows as in :func:`_chunk_moments`."""
    T = mean.dtype.type
    K, W = sum_dy.shape
    N = x.shape[0]
    C = mean.shape[0]
    j0, k0 = cuda.grid(2)
    jstep, kstep = cuda.gridsize(2)
    for k in range(k0, K, kstep):
        for j in range(j0, W, jstep):
            c = j % C
            m, rs = mean[c], rstd[c]
            s1 = T(0)
            s2 = T(0)
            for f in range(k * per * W + j, min(N, (k + 1) * per * W), W):
                d = T(dy[f])
                s1 += d
                s2 += d * ((T(x[f]) - m) * rs)
            sum_dy[k, j], sum_dyx[k, j] = s1, s2


@kernel
def _dx(x, dy, dx, L, mean, rstd, w, sum_dy, sum_dyx, inv_n, last):
    """``dx = rstd * w * (dy - (sum(dy) + xhat * sum(dy * xhat)) / n)`` per channel; inv_n = 0: frozen
    stats. Rows and channels as in :func:`_normalize`, with ``dx = p * (dy - q - (x - mean) * k)``
    for the channel's constants ``p = rstd * w``, ``q = sum(dy) / n``, ``k = rstd * sum(dy * xhat) / n``."""
    T = mean.dtype.type
    N = x.shape[0]
    C = mean.shape[0]
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    if last:
        for c in range(j0, L, jstep):
            m, p, q, k = mean[c], rstd[c] * w[c], inv_n * sum_dy[c], inv_n * sum_dyx[c] * rstd[c]
            for f in range(r0 * L + c, N, rstep * L):
                dx[f] = p * (T(dy[f]) - q - (T(x[f]) - m) * k)
    else:
        for r in range(r0, N // L, rstep):
            c = r % C
            m, p, q, k = mean[c], rstd[c] * w[c], inv_n * sum_dy[c], inv_n * sum_dyx[c] * rstd[c]
            for f in range(r * L + j0, (r + 1) * L, jstep):
                dx[f] = p * (T(dy[f]) - q - (T(x[f]) - m) * k)


def grad_sums(x3, dy3, mean, rstd):
    """``sum(dy)`` and ``sum(dy * xhat)`` per channel, ``xhat = (x - mean) * rstd``.

    One pass over x and dy (partial rows), then :func:`._reduce.column_sums`.

    Parameters
    ----------
    x3, dy3 : device arrays, shape (A, C, B), C-contiguous
        float16, float32 or float64.
    mean, rstd : device arrays, shape (C,)
        Their dtype is the compute dtype.

    Returns
    -------
    sum_dy, sum_dy_xhat : device arrays, shape (C,), compute dtype
    """
    A, C, B = x3.shape
    dtype = mean.dtype
    if x3.size == 0:
        return full(C, 0.0, dtype), full(C, 0.0, dtype)
    if B > 1:
        length = channel_piece_length(A, C, B)
        pieces = cdiv(B, length)
        part_dy, part_dyx = empty((A * pieces, C), dtype), empty((A * pieces, C), dtype)
        grid, block = row_config(A * C * pieces, length)
        _plane_grad_sums[grid, block, 0, scratch_bytes(block, dtype)](
            x3.reshape(A * C, B), dy3.reshape(A * C, B), mean, rstd, length, part_dy, part_dyx)
    else:
        m = _fused(A, C)
        per, K = channel_chunk_config(cdiv(A, m), m * C)
        part_dy, part_dyx = empty((K, m * C), dtype), empty((K, m * C), dtype)
        grid, block = grid_config(K, m * C)
        _chunk_grad_sums[grid, block](x3.reshape(A * C), dy3.reshape(A * C), mean, rstd, per, part_dy, part_dyx)
        part_dy, part_dyx = part_dy.reshape(K * m, C), part_dyx.reshape(K * m, C)  # [k, i * C + c] as [k * m + i, c]
    sum_dy, sum_dyx = empty(C, dtype), empty(C, dtype)
    column_sums(part_dy, part_dyx, sum_dy, sum_dyx)
    return sum_dy, sum_dyx


def dx_from_sums(x3, dy3, mean, rstd, weight, sum_dy, sum_dy_xhat, count, dx_dtype):
    """``dx = rstd * w * (dy - (sum_dy + xhat * sum_dy_xhat) / count)`` per channel, in one launch.

    ``count`` is the number of values per channel the sums were taken over (the
    batch of every rank for SyncBatchNorm); None: frozen statistics, ``dx = rstd * w * dy``.
    The sums are device vectors of shape (C,) in the compute dtype (``mean``'s).
    """
    dtype = mean.dtype
    dx3 = empty(x3.shape, dx_dtype)
    if x3.size == 0:
        return dx3
    C = x3.shape[1]
    (R, L), last = _rows(x3)
    inv_n = dtype.type(0.0 if count is None else 1.0 / count)
    grid, block = grid_config(R, L)
    _dx[grid, block](x3.reshape(x3.size), dy3.reshape(x3.size), dx3.reshape(x3.size), L, mean, rstd,
                     vector(weight, C, 1.0, dtype), sum_dy, sum_dy_xhat, inv_n, last)
    return dx3


def grads(x3, dy3, mean, rstd, weight, batch_stats, dx_dtype):
    """Gradients of :func:`normalize`.

    With batch statistics ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``
    for ``g = weight * dy``; with frozen (running) ones ``dx = rstd * g``.

    Parameters
    ----------
    x3, dy3 : device arrays, shape (A, C, B), C-contiguous
        float16, float32 or float64.
    mean, rstd : device arrays, shape (C,)
        The statistics the forward normalized with; their dtype is the compute dtype.
    weight : array of shape (C,) or None
    batch_stats : bool
        Whether ``mean`` and ``rstd`` were the batch's (training) or frozen.
    dx_dtype : dtype

    Returns
    -------
    dx3 : device array, shape (A, C, B), ``dx_dtype``
    dweight, dbias : device arrays, shape (C,), compute dtype
        ``sum(dy * xhat)`` and ``sum(dy)`` per channel.
    """
    A, C, B = x3.shape
    sum_dy, sum_dyx = grad_sums(x3, dy3, mean, rstd)
    dx3 = dx_from_sums(x3, dy3, mean, rstd, weight, sum_dy, sum_dyx, A * B if batch_stats else None, dx_dtype)
    return dx3, sum_dyx, sum_dy
