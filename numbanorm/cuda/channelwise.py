"""The shared "per-channel statistics" primitive on the GPU: batch norm in either layout.

The input is the CPU backend's ``x3`` of shape ``(A, C, B)``, C-contiguous,
channel in the middle (see :mod:`numbanorm.cpu.channelwise`).

Statistics take two steps, in the compute dtype:

1. Partial moments ``(count, mean, rss)`` of pieces of each channel, where
   ``rss = sqrt(sum((x - mean)**2))`` (kept as a root, so data near 1e30 fits
   float32). Channels-first data (``B > 1``) splits into the ``A * C`` planes
   ``x3[a, c, :]``, cut in pieces when they are few and long, each piece
   handled by a warp or a block with the row primitive's two passes
   (:func:`.rowwise.moments`). Channels-last data (``B == 1``) splits
   into chunks of rows of ``x2 = x3[:, :, 0]``, a thread per (chunk, channel),
   neighbouring threads on neighbouring channels so the reads coalesce.
2. :func:`_merge`: one thread per channel merges its partials in order with
   Chan's formula.

Normalizing and ``dx`` are elementwise over the same rows, with the row
primitive's ``period``/``nseg`` convention to find each element's channel:
rows ``(A * C, B)`` with ``period=C, nseg=1``, or rows ``(A, C)`` with
``period=1, nseg=C``. The backward sums ``sum(dy)`` and ``sum(dy * xhat)`` per
channel take two stages: per piece or chunk, then :func:`._reduce.column_sums`.
"""
import math

import numpy as np
from numba import cuda

from .. import _host
from ._arrays import empty, full, is_host, permuted, to_device, vector
from ._launch import cdiv, flat_config, grid_config, kernel, partial_rows_limit, row_config, SIM
from ._reduce import column_sums, scratch_bytes, sum_lanes
from .rowwise import moments as row_moments, segment

# Channels-last: about this many threads, a (chunk of rows, channel) each.
CHUNK_THREADS = 16 if SIM else 1 << 16
# Channels-first: planes are cut in pieces no shorter than this when there are few of them.
MIN_PIECE = 16 if SIM else 1 << 14


# ----------------------------------------------------------------------------- statistics

@kernel
def _chunk_moments(x2, per, mean_out, rss_out):
    """Channels-last: mean and rss of ``x2[k * per:(k + 1) * per, c]`` for every (k, c), in two passes."""
    T = x2.dtype.type
    A, C = x2.shape
    c0, k0 = cuda.grid(2)
    cstep, kstep = cuda.gridsize(2)
    for k in range(k0, mean_out.shape[0], kstep):
        a0, a1 = k * per, min(A, (k + 1) * per)
        n = T(a1 - a0)
        for c in range(c0, C, cstep):
            pivot = x2[a0, c]  # keeps the sums small for large-mean data
            total = T(0)
            size = T(0)
            for a in range(a0, a1):
                d = x2[a, c] - pivot
                total += d
                size += abs(d)
            mean = pivot + total / n
            scale = size / n  # deviations are summed scaled, so their squares cannot overflow
            squares = T(0)
            if scale > 0:
                for a in range(a0, a1):
                    d = (x2[a, c] - mean) / scale
                    squares += d * d
            mean_out[k, c], rss_out[k, c] = mean, scale * T(math.sqrt(squares))


@kernel
def _merge(mean_part, rss_part, count, sqrt_eps, mean_out, std_out, rstd_out):
    """Chan's merge, in order, of each channel's partials ``[k, c]``, of ``count[k]`` values each."""
    T = mean_part.dtype.type
    K, C = mean_part.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        n = T(0)
        mean = T(0)
        rss = T(0)
        for k in range(K):
            nk = count[k]
            total = n + nk
            delta = mean_part[k, c] - mean
            mean += delta * (nk / total)
            # Chan: M2 = M2 + M2_k + delta**2 * n * nk / total, as roots (hypot adds squares)
            between = abs(delta) * T(math.sqrt(n * nk / total))
            rss = T(math.hypot(T(math.hypot(rss, rss_part[k, c])), between))
            n = total
        std = rss / T(math.sqrt(n))
        mean_out[c], std_out[c] = mean, std
        rstd_out[c] = T(1) / math.hypot(std, sqrt_eps)


@kernel
def _frozen_rstd(var, eps, rstd_out):
    """``rstd = 1 / sqrt(var + eps)`` of given (running) variances."""
    T = rstd_out.dtype.type
    for c in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        rstd_out[c] = T(1) / math.sqrt(T(var[c]) + eps)


def _sqrt_eps(eps, dtype):
    return dtype.type(math.sqrt(eps))


def _chunks(A, C):
    """Channels-last: ``(rows per chunk, chunks)`` so that about CHUNK_THREADS threads share the work."""
    per = cdiv(A, max(1, min(A, CHUNK_THREADS // C)))
    return per, cdiv(A, per)


def _piece_length(A, C, B):
    """Channels-first: planes of ``B`` values are cut in pieces of this length when there are
    too few planes (``A * C``) to keep the GPU busy."""
    pieces = max(1, min(cdiv(B, MIN_PIECE), partial_rows_limit() // (A * C)))
    return cdiv(B, pieces)


def _by_channel(part, dtype):
    """Partials ``(A, C, pieces)`` of channels-first planes as ``(A * pieces, C)``: a row per piece."""
    A, C, pieces = part.shape
    return permuted(part, (0, 2, 1), dtype).reshape(A * pieces, C)


def moments(x3, eps):
    """Per-channel batch statistics of ``x3`` over axes 0 and 2.

    Parameters
    ----------
    x3 : device array, shape (A, C, B), C-contiguous, compute dtype
    eps : float
        Added to the variance for ``rstd``.

    Returns
    -------
    mean, std, rstd : device arrays, shape (C,), in ``x3``'s dtype
        ``std`` is the square root of the biased variance (its square may overflow).
    """
    A, C, B = x3.shape
    dtype = x3.dtype
    if B > 1:
        length = _piece_length(A, C, B)
        mean_part, rss_part = row_moments(x3.reshape(A * C, B), length)
        pieces = mean_part.shape[1]
        mean_part = _by_channel(mean_part.reshape(A, C, pieces), dtype)
        rss_part = _by_channel(rss_part.reshape(A, C, pieces), dtype)
        count = np.tile(np.minimum(length, B - length * np.arange(pieces)), A)
    else:
        per, K = _chunks(A, C)
        mean_part, rss_part = empty((K, C), dtype), empty((K, C), dtype)
        grid, block = grid_config(K, C)
        _chunk_moments[grid, block](x3.reshape(A, C), per, mean_part, rss_part)
        count = np.minimum(per, A - per * np.arange(K))
    mean, std, rstd = empty(C, dtype), empty(C, dtype), empty(C, dtype)
    grid, block = flat_config(C)
    _merge[grid, block](mean_part, rss_part, to_device(count, dtype), _sqrt_eps(eps, dtype), mean, std, rstd)
    return mean, std, rstd


def frozen_stats(running_mean, running_var, eps, dtype):
    """``(mean, rstd)`` in ``dtype`` on the device from running statistics (host or device arrays)."""
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

    ``stat`` is a ``(K, C)`` device array (``power=2`` turns standard deviations
    into variances). Host running statistics are updated on the host in float64,
    as on the CPU backend; device ones by a kernel, in the compute dtype.
    """
    if is_host(running):
        batch = scale * (stat.copy_to_host().astype(np.float64) ** power).mean(axis=0)
        _host.update_running(running, batch, factor)
        return
    T = stat.dtype.type
    grid, block = flat_config(stat.shape[1])
    _update_running[grid, block](running, stat, power, T(scale), T(factor))


# ----------------------------------------------------------------------------- y = (x - mean) * rstd * w + b

def _rows(x3):
    """``x3`` as the rows that elementwise kernels run on, with their ``(period, nseg)``."""
    A, C, B = x3.shape
    if B > 1:
        return x3.reshape(A * C, B), C, 1
    return x3.reshape(A, C), 1, C


@kernel
def _normalize(x, y, mean, rstd, w, b, period, nseg):
    R, L = x.shape
    seg = L // nseg
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, R, rstep):
        base = (r % period) * nseg
        for j in range(j0, L, jstep):
            c = base + segment(j, nseg, seg)
            y[r, j] = (x[r, j] - mean[c]) * rstd[c] * w[c] + b[c]


def normalize(x3, mean, rstd, weight, bias, out_dtype):
    """``y3 = (x - mean[c]) * rstd[c] * weight[c] + bias[c]`` per channel ``c``.

    Parameters
    ----------
    x3 : device array, shape (A, C, B), C-contiguous, compute dtype
    mean, rstd : device arrays, shape (C,), compute dtype
    weight, bias : arrays of shape (C,) or None
        Host or device, any float dtype; None is ones / zeros.
    out_dtype : dtype

    Returns
    -------
    y3 : device array, shape (A, C, B), ``out_dtype``
    """
    A, C, B = x3.shape
    w, b = vector(weight, C, 1.0, x3.dtype), vector(bias, C, 0.0, x3.dtype)
    y3 = empty(x3.shape, out_dtype)
    if x3.size:
        x2, period, nseg = _rows(x3)
        grid, block = grid_config(*x2.shape)
        _normalize[grid, block](x2, y3.reshape(x2.shape), mean, rstd, w, b, period, nseg)
    return y3


# ----------------------------------------------------------------------------- backward

@kernel
def _plane_grad_sums(x, dy, mean, rstd, period, length, sum_dy, sum_dyx):
    """Channels-first: ``sum(dy)`` and ``sum(dy * xhat)`` over every piece ``[r, s * length:(s + 1) * length]``
    of the planes, row ``r`` being of channel ``r % period``; at ``[r, s]`` of the outputs."""
    T = x.dtype.type
    scratch = cuda.shared.array(0, x.dtype)  # sum_lanes' scratch, sized at launch
    R, L = x.shape
    pieces = sum_dy.shape[1]
    lane, lanes, rows = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockDim.y
    for first in range(cuda.blockIdx.x * rows, R * pieces, cuda.gridDim.x * rows):
        i = first + cuda.threadIdx.y
        valid = i < R * pieces
        r, s = i // pieces, i % pieces
        s1 = T(0)
        s2 = T(0)
        if valid:
            m, rs = mean[r % period], rstd[r % period]
            for j in range(s * length + lane, min(L, (s + 1) * length), lanes):
                d = dy[r, j]
                s1 += d
                s2 += d * ((x[r, j] - m) * rs)
        s1, s2 = sum_lanes(s1, s2, scratch)
        if valid and lane == 0:
            sum_dy[r, s], sum_dyx[r, s] = s1, s2


@kernel
def _chunk_grad_sums(x2, dy2, mean, rstd, per, sum_dy, sum_dyx):
    """Channels-last: ``sum(dy)`` and ``sum(dy * xhat)`` over every (chunk of rows, channel)."""
    T = x2.dtype.type
    A, C = x2.shape
    c0, k0 = cuda.grid(2)
    cstep, kstep = cuda.gridsize(2)
    for k in range(k0, sum_dy.shape[0], kstep):
        for c in range(c0, C, cstep):
            m, rs = mean[c], rstd[c]
            s1 = T(0)
            s2 = T(0)
            for a in range(k * per, min(A, (k + 1) * per)):
                d = dy2[a, c]
                s1 += d
                s2 += d * ((x2[a, c] - m) * rs)
            sum_dy[k, c], sum_dyx[k, c] = s1, s2


@kernel
def _dx(x, dy, dx, mean, rstd, w, sum_dy, sum_dyx, inv_n, period, nseg):
    """``dx = rstd * w * (dy - (sum(dy) + xhat * sum(dy * xhat)) / n)`` per channel; inv_n = 0: frozen stats."""
    R, L = x.shape
    seg = L // nseg
    j0, r0 = cuda.grid(2)
    jstep, rstep = cuda.gridsize(2)
    for r in range(r0, R, rstep):
        base = (r % period) * nseg
        for j in range(j0, L, jstep):
            c = base + segment(j, nseg, seg)
            xhat = (x[r, j] - mean[c]) * rstd[c]
            dx[r, j] = rstd[c] * w[c] * (dy[r, j] - inv_n * (sum_dy[c] + xhat * sum_dyx[c]))


def grad_sums(x3, dy3, mean, rstd):
    """``sum(dy)`` and ``sum(dy * xhat)`` per channel, ``xhat = (x - mean) * rstd``.

    Parameters
    ----------
    x3, dy3 : device arrays, shape (A, C, B), C-contiguous, compute dtype
    mean, rstd : device arrays, shape (C,)

    Returns
    -------
    sum_dy, sum_dy_xhat : device arrays, shape (C,), in ``x3``'s dtype
    """
    A, C, B = x3.shape
    dtype = x3.dtype
    if x3.size == 0:
        return full(C, 0.0, dtype), full(C, 0.0, dtype)
    if B > 1:
        length = _piece_length(A, C, B)
        pieces = cdiv(B, length)
        part_dy, part_dyx = empty((A * C, pieces), dtype), empty((A * C, pieces), dtype)
        grid, block = row_config(A * C * pieces, length)
        _plane_grad_sums[grid, block, 0, scratch_bytes(block, dtype)](x3.reshape(A * C, B), dy3.reshape(A * C, B),
                                                                      mean, rstd, C, length, part_dy, part_dyx)
        part_dy = _by_channel(part_dy.reshape(A, C, pieces), dtype)
        part_dyx = _by_channel(part_dyx.reshape(A, C, pieces), dtype)
    else:
        per, K = _chunks(A, C)
        part_dy, part_dyx = empty((K, C), dtype), empty((K, C), dtype)
        grid, block = grid_config(K, C)
        _chunk_grad_sums[grid, block](x3.reshape(A, C), dy3.reshape(A, C), mean, rstd, per, part_dy, part_dyx)
    sum_dy, sum_dyx = empty(C, dtype), empty(C, dtype)
    column_sums(part_dy, part_dyx, sum_dy, sum_dyx)
    return sum_dy, sum_dyx


def dx_from_sums(x3, dy3, mean, rstd, weight, sum_dy, sum_dy_xhat, count, dx_dtype):
    """``dx = rstd * w * (dy - (sum_dy + xhat * sum_dy_xhat) / count)`` per channel.

    ``count`` is the number of values per channel the sums were taken over (the
    batch of every rank for SyncBatchNorm); None: frozen statistics, ``dx = rstd * w * dy``.
    The sums are device vectors of shape (C,).
    """
    dtype = x3.dtype
    dx3 = empty(x3.shape, dx_dtype)
    if x3.size == 0:
        return dx3
    C = x3.shape[1]
    x2, period, nseg = _rows(x3)
    inv_n = dtype.type(0.0 if count is None else 1.0 / count)
    grid, block = grid_config(*x2.shape)
    _dx[grid, block](x2, dy3.reshape(x2.shape), dx3.reshape(x2.shape), mean, rstd, vector(weight, C, 1.0, dtype),
                     sum_dy, sum_dy_xhat, inv_n, period, nseg)
    return dx3


def grads(x3, dy3, mean, rstd, weight, batch_stats, dx_dtype):
    """Gradients of :func:`normalize`.

    With batch statistics ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``
    for ``g = weight * dy``; with frozen (running) ones ``dx = rstd * g``.

    Parameters
    ----------
    x3, dy3 : device arrays, shape (A, C, B), C-contiguous, compute dtype
    mean, rstd : device arrays, shape (C,)
        The statistics the forward normalized with.
    weight : array of shape (C,) or None
    batch_stats : bool
        Whether ``mean`` and ``rstd`` were the batch's (training) or frozen.
    dx_dtype : dtype

    Returns
    -------
    dx3 : device array, shape (A, C, B), ``dx_dtype``
    dweight, dbias : device arrays, shape (C,), in ``x3``'s dtype
        ``sum(dy * xhat)`` and ``sum(dy)`` per channel.
    """
    A, C, B = x3.shape
    sum_dy, sum_dyx = grad_sums(x3, dy3, mean, rstd)
    dx3 = dx_from_sums(x3, dy3, mean, rstd, weight, sum_dy, sum_dyx, A * B if batch_stats else None, dx_dtype)
    return dx3, sum_dyx, sum_dy
