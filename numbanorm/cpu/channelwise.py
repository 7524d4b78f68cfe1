"""The shared "per-channel statistics" primitive: batch norm in either layout, and
instance / group norm when the channels are not axis 1 (channels-last).

The input is viewed as ``x4`` of shape ``(O, A, C, B)``, C-contiguous:
statistics are taken per (o, c) over the ``A`` and ``B`` axes. Batch norm has
``O = 1``, ``A`` the product of the axes before the channel axis and ``B`` of
those after it; channels-last instance norm has ``O = N`` (one problem per
sample), ``A`` the spatial size and ``B = 1``.

``B > 1`` (channels-first): a work item is one channel of a block of rows, read
as contiguous runs of ``B``. ``B == 1`` (channels-last): a work item is a block
of rows with the loop over channels innermost, so it vectorises ("lanes"); with
several samples (instance / group norm), a work item is a whole sample, forward
or backward in one kernel (the last section).

Statistics: each item sums the deviations ``d = x - s`` from a shift ``s`` it
takes from its own data (its first row), and their squares, in float64, in one
pass over x (:func:`._sums.shifted_moments`). The items are merged with
Chan's formula in a fixed order. The item split depends on the shape only, so
results are the same for any number of threads. Per-(o, c) vectors passed in
(mean, scale, ...) are float64 arrays of shape ``(O, C)``.
"""
import numpy as np
from numba import prange

from .. import _host
from .._bench import last_level_cache
from ._kernel import ITEM_ELEMENTS, cast_like, helper, items, kernel, outputs, param, row_helper, scratch
from ._stream import store_fence, stream_row, streams
from ._sums import FLUSH_ROWS, dy_sums, flush, shifted_moments, shifted_sums, sum_blocks

# Bytes of data a chunk of samples may hold and still be in the last-level
# cache when a second pass reads it (half the cache: the other half is for the
# outputs and the other threads' work).
CHUNK_BYTES = (last_level_cache() or (3, 8 << 20))[1] // 2


def rows_per_item(x4):
    O, A, C, B = x4.shape
    return max(1, ITEM_ELEMENTS // (B if B > 1 else max(C, 1)))


def cache_chunks(x4, arrays=1):
    """Slices of axis 0 covering it in chunks whose data (``arrays`` arrays of
    ``x4``'s shape) fits in :data:`CHUNK_BYTES`, at least one sample each.

    Statistics per (o, c) involve sample o only, so a per-sample op can take its
    statistics and normalize chunk by chunk, reading x from memory once. Results
    do not depend on the chunking: a sample's work items are the same in any chunk.
    """
    step = max(1, CHUNK_BYTES // max(1, arrays * x4[:1].nbytes))
    return [slice(i, i + step) for i in range(0, x4.shape[0], step)]


# ----------------------------------------------------------------------------- lanes (channels-last)
# A block of rows ``(rows, C)`` with the loop over channels innermost, so it vectorises.
# The item kernels and the one-sample-per-item kernels call these on their rows.

@helper
def _lanes_moments(rows, shift, s1, s2):
    """``s1[c] += sum(d)``, ``s2[c] += sum(d * d)`` over the rows, ``d = x - shift[c]`` in float64.

    Four rows a step, one from each quarter of the block: the float64 sums are loaded
    and stored once per four rows, and each quarter is read as one sequential stream,
    which the prefetchers follow (from memory: 0.74 -> 0.42 cycles per value; four
    adjacent rows a step were 1.4x slower than one row from memory, as each step then
    jumps about inside a page).
    """
    A = rows.shape[0]
    Q = A // 4
    for i in range(Q):
        r0, r1, r2, r3 = rows[i], rows[Q + i], rows[2 * Q + i], rows[3 * Q + i]
        for c in range(r0.shape[0]):
            d0 = np.float64(r0[c]) - shift[c]
            d1 = np.float64(r1[c]) - shift[c]
            d2 = np.float64(r2[c]) - shift[c]
            d3 = np.float64(r3[c]) - shift[c]
            s1[c] += (d0 + d1) + (d2 + d3)
            s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for a in range(4 * Q, A):
        row = rows[a]
        for c in range(row.shape[0]):
            d = np.float64(row[c]) - shift[c]
            s1[c] += d
            s2[c] += d * d


@row_helper
def _apply_lane_row(src, dst, m, s, t):
    """``y = (x - m[c]) * s[c] + t[c]`` over one row."""
    for c in range(src.shape[0]):
        dst[c] = (src[c] - m[c]) * s[c] + t[c]


@row_helper
def _lanes_apply(src_rows, dst_rows, m, s, t, stream):
    """:func:`_apply_lane_row` over the rows; with ``stream``, each row computed into an L1
    buffer and written out with streaming stores (:mod:`._stream`), then a fence."""
    if stream:
        buffer = np.empty(src_rows.shape[1], src_rows.dtype)
        for a in range(src_rows.shape[0]):
            _apply_lane_row(src_rows[a], buffer, m, s, t)
            stream_row(buffer, dst_rows[a])
        store_fence()
    else:
        for a in range(src_rows.shape[0]):
            _apply_lane_row(src_rows[a], dst_rows[a], m, s, t)


@helper
def _lanes_grad_sums(x_rows, dy_rows, m, s1, s2):
    """``s1[c] += sum(dy)``, ``s2[c] += sum(dy * (x - m[c]))`` over the rows. With ``m`` in the
    data's dtype each product is in it; :data:`FLUSH_ROWS` rows are added up in the data's dtype
    too, then joined to the float64 sums (float64 lanes per element cost 18% of the time)."""
    A, C = x_rows.shape
    block_dy, block_dyx = np.zeros(C, x_rows.dtype), np.zeros(C, x_rows.dtype)
    for a in range(A):
        xs, gs = x_rows[a], dy_rows[a]
        for c in range(C):
            block_dy[c] += gs[c]
            block_dyx[c] += gs[c] * (xs[c] - m[c])
        if a % FLUSH_ROWS == FLUSH_ROWS - 1 or a == A - 1:
            flush(block_dy, s1)
            flush(block_dyx, s2)


@helper
def _lanes_dx(x_rows, dy_rows, dx_rows, m, s, p, q, r):
    """``dx = s[c] * (p[c] * dy + q[c] * (x - m[c]) + r[c])`` over the rows."""
    for a in range(x_rows.shape[0]):
        xs, gs, dst = x_rows[a], dy_rows[a], dx_rows[a]
        for c in range(xs.shape[0]):
            dst[c] = s[c] * (p[c] * gs[c] + q[c] * (xs[c] - m[c]) + r[c])


# ----------------------------------------------------------------------------- statistics

@kernel
def _moments_rows(x4, per_item, mean, m2, mu, sq):
    O, A, C, B = x4.shape
    K = mean.shape[1]
    for i in prange(O * K * C):
        o, k, c = i // (K * C), (i // C) % K, i % C
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        shift = np.float64(x4[o, a0, c, 0])
        s1 = 0.0
        s2 = 0.0
        for a in range(a0, a1):
            run_d, run_d2 = shifted_sums(x4[o, a, c], shift)
            s1 += run_d
            s2 += run_d2
        mean[o, k, c], m2[o, k, c] = shifted_moments((a1 - a0) * B, shift, s1, s2)
    _merge_items(per_item, A, B, mean, m2, mu, sq)


@kernel
def _moments_lanes(x3, per_item, mean, m2, mu, sq):
    O, A, C = x3.shape
    K = mean.shape[1]
    for i in prange(O * K):
        o, k = i // K, i % K
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        shift, s1, s2 = x3[o, a0].astype(np.float64), mean[o, k], m2[o, k]  # float64: no conversion per element
        _lanes_moments(x3[o, a0:a1], shift, s1, s2)
        for c in range(C):
            mean[o, k, c], m2[o, k, c] = shifted_moments(a1 - a0, shift[c], s1[c], s2[c])
    _merge_items(per_item, A, 1, mean, m2, mu, sq)


@helper
def chan_merge(count, mean, m2, mu, sq):
    """Merge (count[k], mean, M2) along axis 1 of ``(P, K, Q)`` arrays into the ``(P, Q)`` mean ``mu``
    and M2 ``sq``, Chan's formula, in the order of k."""
    P, K, Q = mean.shape
    n = np.zeros(Q)
    for p in range(P):
        n[:] = 0
        mu[p] = 0
        sq[p] = 0
        for k in range(K):
            nk = count[k]
            for q in range(Q):
                total = n[q] + nk
                if total > 0:
                    delta = mean[p, k, q] - mu[p, q]
                    mu[p, q] += delta * nk / total
                    sq[p, q] += m2[p, k, q] + delta * delta * n[q] * nk / total
                    n[q] = total


@helper
def _merge_items(per_item, A, B, mean, m2, mu, sq):
    """:func:`chan_merge` of the items of :func:`moments_m2` into ``mu, sq``: ``per_item`` rows of ``B``
    values each, the last item what is left of ``A`` rows. Called by the kernels after their
    parallel loop: a second compiled call, and its tuple of arrays, cost more than the merge."""
    count = np.empty(mean.shape[1])
    for k in range(count.shape[0]):
        count[k] = min(per_item, A - per_item * k) * B
    chan_merge(count, mean, m2, mu, sq)


def moments(x4):
    """Count per (o, c) and the float64 mean and biased variance, shape (O, C), over axes 1 and 3."""
    n, mu, sq = moments_m2(x4)
    return n, mu, sq / max(n, 1)


def moments_m2(x4):
    """Count per (o, c) and the float64 mean and sum of squared deviations (M2), shape (O, C).

    M2 rather than the variance is what Chan's formula merges, e.g. across the
    ranks of SyncBatchNorm. An empty input gives zeros.
    """
    O, A, C, B = x4.shape
    per_item = rows_per_item(x4)
    k = items(A, per_item)
    mean, m2 = scratch.zeros((O, k, C)), scratch.zeros((O, k, C))
    mu, sq = np.empty((O, C)), np.empty((O, C))
    if B == 1:
        _moments_lanes(x4.reshape(O, A, C), per_item, mean, m2, mu, sq, work=x4.size)
    else:
        _moments_rows(x4, per_item, mean, m2, mu, sq, work=x4.size)
    return A * B, mu, sq


@helper
def _running_averages(running_mean, running_var, mean, var, unbias, factor):
    keep = 1.0 - factor
    for c in range(mean.shape[0]):
        running_mean[c] = keep * np.float64(running_mean[c]) + factor * mean[c]
        running_var[c] = keep * np.float64(running_var[c]) + factor * (var[c] * unbias)


INDEXABLE = (np.dtype(np.float32), np.dtype(np.float64))  # buffer dtypes Numba indexes on the CPU


def update_running_stats(running_mean, running_var, mean, var, n, factor):
    """PyTorch's running averages, in place: ``running = (1 - factor) * running + factor * stat``
    of the float64 per-channel batch ``mean`` and unbiased variance ``var * n / (n - 1)``.

    One compiled call instead of ten NumPy ones; float16 buffers (which Numba cannot
    index on the CPU) take the host's NumPy path.
    """
    if running_mean.dtype in INDEXABLE and running_var.dtype in INDEXABLE:
        _running_averages(running_mean, running_var, mean, var, n / (n - 1), factor)
    else:
        _host.update_running(running_mean, mean, factor)
        _host.update_running(running_var, var * n / (n - 1), factor)


# ----------------------------------------------------------------------------- y = (x - mean) * scale + shift

def _rounded_mean(x4, mean):
    """The float64 per-(o, c) mean rounded to the data's dtype, and its rounding error.

    The kernels then run in the data's dtype (float32: twice the lanes of float64
    and no conversions); ``x - m_hi`` stays exact for large-mean data, and the
    caller folds ``m_hi - mean`` into its constant term.
    """
    m_hi = mean.astype(x4.dtype)
    return m_hi, m_hi - mean


def _in_dtype(x4, *coefficients):
    """Per-(o, c) coefficients as C-contiguous ``(O, C)`` arrays of the data's dtype."""
    shape = (x4.shape[0], x4.shape[2])
    out = []
    for v in coefficients:
        if np.shape(v) != shape:  # (broadcast_to costs microseconds: only when needed)
            v = np.broadcast_to(v, shape)
        out.append(np.ascontiguousarray(v, dtype=x4.dtype))
    return out


@kernel
def _apply_rows(x4, y4, mean, scale, shift):
    O, A, C, B = x4.shape
    for i in prange(O * A * C):
        o, a, c = i // (A * C), (i // C) % A, i % C
        m, s, t = mean[o, c], scale[o, c], shift[o, c]
        src, dst = x4[o, a, c], y4[o, a, c]
        for b in range(B):
            dst[b] = (src[b] - m) * s + t


@kernel
def _apply_lanes(x3, y3, mean, scale, shift, per_item, stream):
    O, A, C = x3.shape
    K = (A + per_item - 1) // per_item
    for i in prange(O * K):
        o, k = i // K, i % K
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        _lanes_apply(x3[o, a0:a1], y3[o, a0:a1], mean[o], scale[o], shift[o], stream)


def apply(x4, mean, scale, shift, out=None):
    """``y = (x - mean[o, c]) * scale[o, c] + shift[o, c]`` with ``(O, C)`` C-contiguous coefficients
    in the data's dtype, into ``out`` when given."""
    y4 = outputs.empty_like(x4) if out is None else out
    O, A, C, B = x4.shape
    if B == 1:
        _apply_lanes(x4.reshape(O, A, C), y4.reshape(O, A, C), mean, scale, shift, rows_per_item(x4), streams(y4),
                     work=x4.size)
    else:
        _apply_rows(x4, y4, mean, scale, shift, work=x4.size)
    return y4


def scale_shift(x4, mean, scale, shift, out=None):
    """``y = (x - mean[o, c]) * scale[o, c] + shift[o, c]`` (float64 coefficients, broadcast to (O, C)),
    into ``out`` when given."""
    m, error = _rounded_mean(x4, mean)
    s, t = _in_dtype(x4, scale, shift + error * scale)
    return apply(x4, m, s, t, out)


@helper
def _affine_terms_into(mean, var, eps, weight, bias, rstd, m_hi, scale, shift):
    """One sample's terms of :func:`affine_terms`, written into the vectors ``rstd`` (float64) and
    ``m_hi, scale, shift`` (the data's dtype)."""
    for c in range(mean.shape[0]):
        r = 1.0 / np.sqrt(var[c] + eps)
        s = r * weight[c]
        m_hi[c] = mean[c]
        rstd[c], scale[c] = r, s
        shift[c] = bias[c] + (np.float64(m_hi[c]) - mean[c]) * s


@helper
def affine_terms(x4, mean, var, eps, weight, bias):
    """For ``y = (x - mean) * rstd * weight + bias`` with float64 ``(O, C)`` statistics: the float64
    ``rstd`` and, in the data's dtype, the ``(O, C)`` terms of :func:`apply` (the mean rounded,
    its rounding error folded into the shift). One compiled call instead of a dozen NumPy ones.
    """
    O, C = mean.shape
    rstd = np.empty((O, C))
    m_hi = np.empty((O, C), x4.dtype)
    scale = np.empty((O, C), x4.dtype)
    shift = np.empty((O, C), x4.dtype)
    for o in range(O):
        _affine_terms_into(mean[o], var[o], eps, weight, bias, rstd[o], m_hi[o], scale[o], shift[o])
    return rstd, m_hi, scale, shift


# ----------------------------------------------------------------------------- backward

@helper
def _sum_items(sum_dy, sum_dyx, total_dy, total_dyx):
    """The ``(O, K, C)`` per-item sums added over the items, in their order, into ``(O, C)``."""
    for o in range(sum_dy.shape[0]):
        sum_blocks(sum_dy[o], total_dy[o])
        sum_blocks(sum_dyx[o], total_dyx[o])


@kernel
def _grad_sums_rows(x4, dy4, mean, per_item, sum_dy, sum_dyx, total_dy, total_dyx):
    O, A, C, B = x4.shape
    K = sum_dy.shape[1]
    for i in prange(O * K * C):
        o, k, c = i // (K * C), (i // C) % K, i % C
        m_hi = cast_like(x4, mean[o, c])
        s1 = 0.0
        s2 = 0.0
        for a in range(k * per_item, min(A, (k + 1) * per_item)):
            run_dy, run_dyx = dy_sums(x4[o, a, c], dy4[o, a, c], m_hi)
            s1 += run_dy
            s2 += run_dyx
        # sum(dy * (x - mean)) = sum(dy * (x - m_hi)) + (m_hi - mean) * sum(dy)
        sum_dy[o, k, c], sum_dyx[o, k, c] = s1, s2 + (m_hi - mean[o, c]) * s1
    _sum_items(sum_dy, sum_dyx, total_dy, total_dyx)


@kernel
def _grad_sums_lanes(x3, dy3, mean, per_item, sum_dy, sum_dyx, total_dy, total_dyx):
    O, A, C = x3.shape
    K = sum_dy.shape[1]
    m_hi = mean.astype(x3.dtype)  # (no float64 per element; the rounding error is added below)
    for i in prange(O * K):
        o, k = i // K, i % K
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        _lanes_grad_sums(x3[o, a0:a1], dy3[o, a0:a1], m_hi[o], sum_dy[o, k], sum_dyx[o, k])
    _sum_items(sum_dy, sum_dyx, total_dy, total_dyx)
    for o in range(O):
        for c in range(C):
            # sum(dy * (x - mean)) = sum(dy * (x - m_hi)) + (m_hi - mean) * sum(dy)
            total_dyx[o, c] += (np.float64(m_hi[o, c]) - mean[o, c]) * total_dy[o, c]


def grad_sums(x4, dy4, mean):
    """Float64 ``sum(dy)`` and ``sum(dy * (x - mean))`` per (o, c)."""
    O, A, C, B = x4.shape
    per_item = rows_per_item(x4)
    k = items(A, per_item)
    sum_dy, sum_dyx = scratch.zeros((O, k, C)), scratch.zeros((O, k, C))
    total_dy, total_dyx = np.empty((O, C)), np.empty((O, C))
    if B == 1:
        _grad_sums_lanes(x4.reshape(O, A, C), dy4.reshape(O, A, C), mean, per_item, sum_dy, sum_dyx,
                         total_dy, total_dyx, work=x4.size)
    else:
        _grad_sums_rows(x4, dy4, mean, per_item, sum_dy, sum_dyx, total_dy, total_dyx, work=x4.size)
    return total_dy, total_dyx


@kernel
def _dx_rows(x4, dy4, dx4, mean, rstd, alpha, beta, gamma):
    O, A, C, B = x4.shape
    for i in prange(O * A * C):
        o, a, c = i // (A * C), (i // C) % A, i % C
        m, s, p, q, r = mean[o, c], rstd[o, c], alpha[o, c], beta[o, c], gamma[o, c]
        xs, gs, dst = x4[o, a, c], dy4[o, a, c], dx4[o, a, c]
        for b in range(B):
            dst[b] = s * (p * gs[b] + q * (xs[b] - m) + r)


@kernel
def _dx_lanes(x3, dy3, dx3, mean, rstd, alpha, beta, gamma, per_item):
    O, A, C = x3.shape
    K = (A + per_item - 1) // per_item
    for i in prange(O * K):
        o, k = i // K, i % K
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        _lanes_dx(x3[o, a0:a1], dy3[o, a0:a1], dx3[o, a0:a1], mean[o], rstd[o], alpha[o], beta[o], gamma[o])


@helper
def _dx_terms_into(mean, rstd, sum_dy, sum_dyx, n, weight, batch_stats, group_size, m_hi, s, p, q, r):
    """One sample's terms of ``dx = s * (p * dy + q * (x - m_hi) + r)`` (see :func:`dx_terms`),
    written into the data-dtype vectors ``m_hi, s, p, q, r``."""
    C = mean.shape[0]
    w_dy = np.empty(C)
    w_dyx = np.empty(C)
    for c in range(C):
        w_dy[c] = weight[c] * sum_dy[c]
        w_dyx[c] = weight[c] * sum_dyx[c]
    _spread_sums(w_dy, group_size)
    _spread_sums(w_dyx, group_size)
    for c in range(C):
        beta = -rstd[c] * rstd[c] * w_dyx[c] / n if batch_stats else 0.0   # -rstd * mean(g * xhat)
        gamma = -w_dy[c] / n if batch_stats else 0.0                        # -mean(g)
        m_hi[c] = mean[c]
        s[c], p[c], q[c] = rstd[c], weight[c], beta
        r[c] = gamma + beta * (np.float64(m_hi[c]) - mean[c])


@helper
def dx_terms(x4, mean, rstd, sum_dy, sum_dyx, n, weight, batch_stats, group_size):
    """The data-dtype ``(O, C)`` terms ``(m_hi, s, p, q, r)`` of :func:`dx_apply` for the gradient of
    ``y = (x - mean) * rstd * weight + bias``.

    With ``g = weight * dy`` and ``n`` values per statistic, batch statistics give
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, i.e.
    ``rstd * (weight * dy - rstd * mean(g * xhat) * (x - mean) - mean(g))``; frozen ones
    ``dx = rstd * g``. ``sum_dy`` and ``sum_dyx = sum(dy * (x - mean))`` are float64 per
    (o, c), summed over each group of ``group_size`` channels here; ``weight`` is a float64
    vector. ``rstd`` multiplies last (``s``): a product such as ``rstd * q`` (about
    ``rstd**2``) underflows float32 when x is of order 1e20. The mean is rounded to the
    data's dtype and its rounding error folded into ``r``.
    """
    O, C = mean.shape
    m_hi = np.empty((O, C), x4.dtype)
    s = np.empty((O, C), x4.dtype)
    p = np.empty((O, C), x4.dtype)
    q = np.empty((O, C), x4.dtype)
    r = np.empty((O, C), x4.dtype)
    for o in range(O):
        _dx_terms_into(mean[o], rstd[o], sum_dy[o], sum_dyx[o], n, weight, batch_stats, group_size,
                       m_hi[o], s[o], p[o], q[o], r[o])
    return m_hi, s, p, q, r


@helper
def add_param_grads(sum_dy, sum_dyx, rstd, dweight, dbias):
    """``dweight += sum(sum_dyx * rstd)`` and ``dbias += sum(sum_dy)`` over axis 0 of the float64
    ``(O, C)`` sums, in the order of o: one compiled call instead of four NumPy ones."""
    for o in range(sum_dy.shape[0]):
        for c in range(sum_dy.shape[1]):
            dweight[c] += sum_dyx[o, c] * rstd[o, c]
            dbias[c] += sum_dy[o, c]


def dx_apply(x4, dy4, m_hi, s, p, q, r, out=None):
    """``dx = s * (p * dy + q * (x - m_hi) + r)`` with the ``(O, C)`` terms of :func:`dx_terms`,
    into ``out`` when given."""
    dx4 = outputs.empty_like(x4) if out is None else out
    O, A, C, B = x4.shape
    if B == 1:
        shape = (O, A, C)
        _dx_lanes(x4.reshape(shape), dy4.reshape(shape), dx4.reshape(shape), m_hi, s, p, q, r, rows_per_item(x4),
                  work=x4.size)
    else:
        _dx_rows(x4, dy4, dx4, m_hi, s, p, q, r, work=x4.size)
    return dx4


# ----------------------------------------------------------------------------- one sample per work item

# Channels-last instance / group norm with at least this many samples: one work
# item per sample (statistics, then the normalization while the sample is in
# cache), so the threads drift apart and one streams memory while the other
# computes, instead of all of them computing, then all streaming.
SAMPLE_ITEMS_FROM = 4


@helper
def _spread_sums(v, group_size):
    """In place: each entry becomes the sum over its group of ``group_size`` consecutive entries."""
    if group_size == 1:
        return
    for g0 in range(0, v.shape[0], group_size):
        total = 0.0
        for c in range(g0, g0 + group_size):
            total += v[c]
        for c in range(g0, g0 + group_size):
            v[c] = total


@helper
def _pool_group_moments(mean, var, group_size):
    """In place: the mean and variance of each group of ``group_size`` consecutive channels (equal
    counts, law of total variance), given to every channel of the group."""
    if group_size == 1:
        return
    group_mean = mean.copy()
    _spread_sums(group_mean, group_size)
    group_mean /= group_size
    var += (mean - group_mean) ** 2
    _spread_sums(var, group_size)
    var /= group_size
    mean[:] = group_mean


@helper
def pool_group_moments(mean, var, group_size):
    """:func:`_pool_group_moments` for each row of ``(O, C)`` statistics, in place."""
    for o in range(mean.shape[0]):
        _pool_group_moments(mean[o], var[o], group_size)


@kernel
def _normalize_sample_lanes(x3, y3, weight, bias, eps, group_size, stream, mean_out, var_out):
    O, A, C = x3.shape
    for o in prange(O):
        xs, ys, mean, var = x3[o], y3[o], mean_out[o], var_out[o]
        shift = xs[0].astype(np.float64)
        s1 = np.zeros(C)
        s2 = np.zeros(C)
        _lanes_moments(xs, shift, s1, s2)
        for c in range(C):
            mean[c], m2 = shifted_moments(A, shift[c], s1[c], s2[c])
            var[c] = m2 / A
        _pool_group_moments(mean, var, group_size)
        rstd = np.empty(C)
        m_hi, scale, shift = np.empty(C, x3.dtype), np.empty(C, x3.dtype), np.empty(C, x3.dtype)
        _affine_terms_into(mean, var, eps, weight, bias, rstd, m_hi, scale, shift)
        _lanes_apply(xs, ys, m_hi, scale, shift, stream)


def normalize_per_sample(x4, eps, weight, bias, group_size=1):
    """Instance (group) norm of channels-last ``x4`` (N, A, C, 1) with one work item per sample:
    y4 and the float64 (N, C) mean and variance, pooled over groups of ``group_size`` channels."""
    O, A, C, _ = x4.shape
    y4 = outputs.empty_like(x4)
    mean, var = np.empty((O, C)), np.empty((O, C))
    _normalize_sample_lanes(x4.reshape(O, A, C), y4.reshape(O, A, C), param(weight, C, 1.0, x4.dtype),
                            param(bias, C, 0.0, x4.dtype), eps, group_size, streams(y4), mean, var, work=x4.size)
    return y4, mean, var


@kernel
def _sample_grads_lanes(x3, dy3, mean, rstd, weight, group_size, dx3, sum_dy_out, sum_dyx_out):
    O, A, C = x3.shape
    n = A * group_size  # values per statistic
    for o in prange(O):
        xs, gs, dst_s = x3[o], dy3[o], dx3[o]
        m, rs, sum_dy, sum_dyx = mean[o], rstd[o], sum_dy_out[o], sum_dyx_out[o]
        m_hi = np.empty(C, x3.dtype)  # the data's dtype: dy * (x - m_hi) needs no float64 per element
        for c in range(C):
            m_hi[c] = m[c]
        sum_dy[:] = 0.0
        sum_dyx[:] = 0.0
        _lanes_grad_sums(xs, gs, m_hi, sum_dy, sum_dyx)
        for c in range(C):  # sum(dy * (x - m)) = sum(dy * (x - m_hi)) + (m_hi - m) * sum(dy)
            sum_dyx[c] += (np.float64(m_hi[c]) - m[c]) * sum_dy[c]
        s, p, q, r = np.empty(C, x3.dtype), np.empty(C, x3.dtype), np.empty(C, x3.dtype), np.empty(C, x3.dtype)
        _dx_terms_into(m, rs, sum_dy, sum_dyx, n, weight, True, group_size, m_hi, s, p, q, r)
        _lanes_dx(xs, gs, dst_s, m_hi, s, p, q, r)


def sample_grads(x4, dy4, mean, rstd, weight, group_size=1):
    """dx4 and the float64 (N, C) ``sum(dy)``, ``sum(dy * (x - mean))`` of :func:`normalize_per_sample`
    (batch statistics), one work item per sample; ``mean``, ``rstd`` (N, C) float64, one per channel."""
    O, A, C, _ = x4.shape
    dx4 = outputs.empty_like(x4)
    sum_dy, sum_dyx = np.empty((O, C)), np.empty((O, C))
    w = param(weight, C, 1.0, np.float64)
    shape = (O, A, C)
    _sample_grads_lanes(x4.reshape(shape), dy4.reshape(shape), np.ascontiguousarray(mean),
                        np.ascontiguousarray(rstd), w, group_size, dx4.reshape(shape), sum_dy, sum_dyx,
                        work=x4.size)
    return dx4, sum_dy, sum_dyx


# ----------------------------------------------------------------------------- small inputs in one call
# At the sizes NumPy training runs at (a batch of 32-256 by 64-1024 features), batch
# norm's four compiled calls and their Python cost more than the work: below
# SMALL_BELOW elements a training or eval step is one serial compiled call each way,
# with the same float64 statistics, rounded-mean terms and dx terms as the item kernels
# (channels-last rows through the same lane helpers).
# Measured on this project's 2-core machines (float32, forward / backward, one call vs
# the parallel items): 128x256 21/20 vs 41/47 us, 256x512 54/59 vs 72/94 us, 256x1024
# 137/168 vs 131/169 us, 64x32x16x16 159/196 vs 134/182 us: even up to 2**18.
SMALL_BELOW = 1 << 18


@helper
def small_forward(x3, y3, weight, bias, eps, training, update, running_mean, running_var, factor, given_mean,
                  given_var, mean, rstd):
    """Batch norm of the ``(A, C, B)`` array ``x3`` into ``y3`` in one pass for the statistics and one
    for y; the float64 ``(1, C)`` ``mean`` and ``rstd`` written. ``training``: batch statistics
    (``running_mean`` and ``running_var`` updated in place when ``update``); else ``given_mean``
    and ``given_var`` (which may be read-only)."""
    A, C, B = x3.shape
    var = np.empty((1, C))
    if training:
        shift = np.empty(C)
        sum_d = np.zeros(C)
        sum_d2 = np.zeros(C)
        for c in range(C):
            shift[c] = np.float64(x3[0, c, 0])
        if B == 1:
            _lanes_moments(x3.reshape(A, C), shift, sum_d, sum_d2)
        else:
            for a in range(A):
                for c in range(C):
                    s1, s2 = shifted_sums(x3[a, c], shift[c])
                    sum_d[c] += s1
                    sum_d2[c] += s2
        n = A * B
        for c in range(C):
            mean[0, c], m2 = shifted_moments(n, shift[c], sum_d[c], sum_d2[c])
            var[0, c] = m2 / n
        if update:
            _running_averages(running_mean, running_var, mean[0], var[0], n / (n - 1), factor)
    else:
        for c in range(C):
            mean[0, c] = given_mean[c]
            var[0, c] = given_var[c]
    m_hi, scale, shift_out = np.empty(C, x3.dtype), np.empty(C, x3.dtype), np.empty(C, x3.dtype)
    _affine_terms_into(mean[0], var[0], eps, weight, bias, rstd[0], m_hi, scale, shift_out)
    if B == 1:
        _lanes_apply(x3.reshape(A, C), y3.reshape(A, C), m_hi, scale, shift_out, False)
    else:
        for a in range(A):
            for c in range(C):
                m, s, t = m_hi[c], scale[c], shift_out[c]
                src, dst = x3[a, c], y3[a, c]
                for b in range(B):
                    dst[b] = (src[b] - m) * s + t


@helper
def small_backward(x3, dy3, dx3, mean, rstd, weight, batch_stats, dweight, dbias):
    """The gradients of :func:`small_forward` in one call: float64 ``sum(dy)`` and ``sum(dy * (x -
    mean))`` per channel, then ``dx`` from :func:`_dx_terms_into`'s terms; ``dweight`` and ``dbias``
    (float64, ``(C,)``) written. ``weight`` is a float64 vector."""
    A, C, B = x3.shape
    m_hi = np.empty(C, x3.dtype)
    for c in range(C):
        m_hi[c] = mean[0, c]
    sum_dy = np.zeros((1, C))
    sum_dyx = np.zeros((1, C))
    if B == 1:
        _lanes_grad_sums(x3.reshape(A, C), dy3.reshape(A, C), m_hi, sum_dy[0], sum_dyx[0])
    else:
        for a in range(A):
            for c in range(C):
                run_dy, run_dyx = dy_sums(x3[a, c], dy3[a, c], m_hi[c])
                sum_dy[0, c] += run_dy
                sum_dyx[0, c] += run_dyx
    for c in range(C):  # sum(dy * (x - mean)) = sum(dy * (x - m_hi)) + (m_hi - mean) * sum(dy)
        sum_dyx[0, c] += (np.float64(m_hi[c]) - mean[0, c]) * sum_dy[0, c]
    s, p, q, r = np.empty(C, x3.dtype), np.empty(C, x3.dtype), np.empty(C, x3.dtype), np.empty(C, x3.dtype)
    _dx_terms_into(mean[0], rstd[0], sum_dy[0], sum_dyx[0], A * B, weight, batch_stats, 1, m_hi, s, p, q, r)
    if B == 1:
        _lanes_dx(x3.reshape(A, C), dy3.reshape(A, C), dx3.reshape(A, C), m_hi, s, p, q, r)
    else:
        for a in range(A):
            for c in range(C):
                m, sc, pc, qc, rc = m_hi[c], s[c], p[c], q[c], r[c]
                xs, gs, dst = x3[a, c], dy3[a, c], dx3[a, c]
                for b in range(B):
                    dst[b] = sc * (pc * gs[b] + qc * (xs[b] - m) + rc)
    dweight[:] = 0
    dbias[:] = 0
    add_param_grads(sum_dy, sum_dyx, rstd, dweight, dbias)
