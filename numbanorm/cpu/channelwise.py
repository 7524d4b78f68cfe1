"""The shared "per-channel statistics" primitive: batch norm in either layout, and
instance / group norm when the channels are not axis 1 (channels-last).

The input is viewed as ``x4`` of shape ``(O, A, C, B)``, C-contiguous:
statistics are taken per (o, c) over the ``A`` and ``B`` axes. Batch norm has
``O = 1``, ``A`` the product of the axes before the channel axis and ``B`` of
those after it; channels-last instance norm has ``O = N`` (one problem per
sample), ``A`` the spatial size and ``B = 1``.

``B > 1`` (channels-first): a work item is one channel of a block of rows, read
as contiguous runs of ``B``. ``B == 1`` (channels-last): a work item is a block
of rows with the loop over channels innermost, so it vectorises ("lanes").

Statistics: each item sums the deviations ``d = x - s`` from a shift ``s`` it
takes from its own data (its first row), and their squares, in float64, in one
pass over x (:func:`._sums.shifted_moments`). The items are merged with
Chan's formula in a fixed order. The item split depends on the shape only, so
results are the same for any number of threads. Per-(o, c) vectors passed in
(mean, scale, ...) are float64 arrays of shape ``(O, C)``.
"""
import numpy as np
from numba import prange

from .._bench import last_level_cache
from ._kernel import ITEM_ELEMENTS, cast_like, helper, items, kernel, outputs, scratch
from ._sums import dy_sums, shifted_moments, shifted_sums

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


# ----------------------------------------------------------------------------- statistics

@kernel
def _moments_rows(x4, per_item, mean, m2):
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


@kernel
def _moments_lanes(x3, per_item, mean, m2):
    O, A, C = x3.shape
    K = mean.shape[1]
    for i in prange(O * K):
        o, k = i // K, i % K
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        shift, s1, s2 = x3[o, a0], mean[o, k], m2[o, k]
        # One row a pass: reading two rows in step halves the accumulators' traffic,
        # which is faster in cache but 1.7x slower from memory (the prefetchers).
        for a in range(a0, a1):
            row = x3[o, a]
            for c in range(C):
                d = np.float64(row[c]) - shift[c]
                s1[c] += d
                s2[c] += d * d
        for c in range(C):
            mean[o, k, c], m2[o, k, c] = shifted_moments(a1 - a0, shift[c], s1[c], s2[c])


@helper
def chan_merge(count, mean, m2):
    """Merge (count[k], mean, M2) along axis 1 of ``(P, K, Q)`` arrays into ``(P, Q)``, Chan's formula."""
    P, K, Q = mean.shape
    n = np.zeros((P, Q))
    mu = np.zeros((P, Q))
    sq = np.zeros((P, Q))
    for p in range(P):
        for k in range(K):
            nk = count[k]
            for q in range(Q):
                total = n[p, q] + nk
                if total > 0:
                    delta = mean[p, k, q] - mu[p, q]
                    mu[p, q] += delta * nk / total
                    sq[p, q] += m2[p, k, q] + delta * delta * n[p, q] * nk / total
                    n[p, q] = total
    return n, mu, sq


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
    if B == 1:
        _moments_lanes(x4.reshape(O, A, C), per_item, mean, m2, work=x4.size)
    else:
        _moments_rows(x4, per_item, mean, m2, work=x4.size)
    count = np.minimum(per_item, A - per_item * np.arange(k)).astype(np.float64) * B
    _, mu, sq = chan_merge(count, mean, m2)
    return A * B, mu, sq


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
    return [np.ascontiguousarray(np.broadcast_to(v, shape), dtype=x4.dtype) for v in coefficients]


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
def _apply_lanes(x3, y3, mean, scale, shift, per_item):
    O, A, C = x3.shape
    K = (A + per_item - 1) // per_item
    for i in prange(O * K):
        o, k = i // K, i % K
        m, s, t = mean[o], scale[o], shift[o]
        for a in range(k * per_item, min(A, (k + 1) * per_item)):
            src, dst = x3[o, a], y3[o, a]
            for c in range(C):
                dst[c] = (src[c] - m[c]) * s[c] + t[c]


def scale_shift(x4, mean, scale, shift, out=None):
    """``y = (x - mean[o, c]) * scale[o, c] + shift[o, c]`` (float64 coefficients, broadcast to (O, C)),
    into ``out`` when given."""
    y4 = outputs.empty_like(x4) if out is None else out
    O, A, C, B = x4.shape
    m, error = _rounded_mean(x4, mean)
    s, t = _in_dtype(x4, scale, shift + error * scale)
    if B == 1:
        _apply_lanes(x4.reshape(O, A, C), y4.reshape(O, A, C), m, s, t, rows_per_item(x4), work=x4.size)
    else:
        _apply_rows(x4, y4, m, s, t, work=x4.size)
    return y4


# ----------------------------------------------------------------------------- backward

@kernel
def _grad_sums_rows(x4, dy4, mean, per_item, sum_dy, sum_dyx):
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


@kernel
def _grad_sums_lanes(x3, dy3, mean, per_item, sum_dy, sum_dyx):
    O, A, C = x3.shape
    K = sum_dy.shape[1]
    for i in prange(O * K):
        o, k = i // K, i % K
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        s1, s2, m = sum_dy[o, k], sum_dyx[o, k], mean[o]
        for a in range(a0, a1):  # one row a pass, as in _moments_lanes
            xs, gs = x3[o, a], dy3[o, a]
            for c in range(C):
                s1[c] += gs[c]
                s2[c] += gs[c] * (xs[c] - m[c])


def grad_sums(x4, dy4, mean):
    """Float64 ``sum(dy)`` and ``sum(dy * (x - mean))`` per (o, c)."""
    O, A, C, B = x4.shape
    per_item = rows_per_item(x4)
    k = items(A, per_item)
    sum_dy, sum_dyx = scratch.zeros((O, k, C)), scratch.zeros((O, k, C))
    if B == 1:
        _grad_sums_lanes(x4.reshape(O, A, C), dy4.reshape(O, A, C), mean, per_item, sum_dy, sum_dyx,
                         work=x4.size)
    else:
        _grad_sums_rows(x4, dy4, mean, per_item, sum_dy, sum_dyx, work=x4.size)
    return sum_dy.sum(axis=1), sum_dyx.sum(axis=1)


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
        m, s, p, q, r = mean[o], rstd[o], alpha[o], beta[o], gamma[o]
        for a in range(k * per_item, min(A, (k + 1) * per_item)):
            xs, gs, dst = x3[o, a], dy3[o, a], dx3[o, a]
            for c in range(C):
                dst[c] = s[c] * (p[c] * gs[c] + q[c] * (xs[c] - m[c]) + r[c])


def dx(x4, dy4, mean, rstd, alpha, beta, gamma, out=None):
    """``dx = rstd * (alpha * dy + beta * (x - mean) + gamma)`` with per-(o, c) float64 coefficients.

    rstd multiplies last: a product such as ``rstd * beta`` (about ``rstd**2``)
    underflows float32 when x is of order 1e20, and fastmath may hoist any
    product of per-channel constants out of the loop. Written into ``out`` when given.
    """
    dx4 = outputs.empty_like(x4) if out is None else out
    O, A, C, B = x4.shape
    m, error = _rounded_mean(x4, mean)
    s, p, q, r = _in_dtype(x4, rstd, alpha, beta, gamma + beta * error)
    if B == 1:
        shape = (O, A, C)
        _dx_lanes(x4.reshape(shape), dy4.reshape(shape), dx4.reshape(shape), m, s, p, q, r, rows_per_item(x4),
                  work=x4.size)
    else:
        _dx_rows(x4, dy4, dx4, m, s, p, q, r, work=x4.size)
    return dx4
