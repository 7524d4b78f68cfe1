"""The shared "per-channel statistics" primitive: batch norm in either layout.

The input is viewed as ``x3`` of shape ``(A, C, B)``, C-contiguous, with the
channel in the middle: ``A`` is the product of the axes before the channel axis
and ``B`` of those after it. Channels-first data (N, C, H, W) has ``B > 1``: a
work item is one channel of a block of rows, read as contiguous runs of ``B``.
Channels-last data (N, H, W, C) has ``B == 1``: a work item is a block of rows
with the loop over channels innermost, so it vectorises ("lanes").

Statistics: each item computes its count, mean and sum of squared deviations
in two passes over data that stays in cache (float64), and the items are merged
with Chan's formula in a fixed order. The item split depends on the shape only,
so results are the same for any number of threads.
"""
import numpy as np
from numba import prange

from ._kernel import ITEM_ELEMENTS, helper, items, kernel


def rows_per_item(x3):
    A, C, B = x3.shape
    return max(1, ITEM_ELEMENTS // (B if B > 1 else max(C, 1)))


# ----------------------------------------------------------------------------- statistics

@kernel
def _moments_rows(x3, per_item, mean, m2):
    A, C, B = x3.shape
    for i in prange(mean.shape[0] * C):
        k, c = i // C, i % C
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        total = 0.0
        for a in range(a0, a1):
            for b in range(B):
                total += x3[a, c, b]
        mu = total / ((a1 - a0) * B)
        squares = 0.0
        for a in range(a0, a1):
            for b in range(B):
                d = x3[a, c, b] - mu
                squares += d * d
        mean[k, c], m2[k, c] = mu, squares


@kernel
def _moments_lanes(x2, per_item, mean, m2):
    A, C = x2.shape
    for k in prange(mean.shape[0]):
        a0, a1 = k * per_item, min(A, (k + 1) * per_item)
        mu, sq = mean[k], m2[k]
        for a in range(a0, a1):
            for c in range(C):
                mu[c] += x2[a, c]
        for c in range(C):
            mu[c] /= a1 - a0
        for a in range(a0, a1):
            for c in range(C):
                d = x2[a, c] - mu[c]
                sq[c] += d * d


@helper
def chan_merge(count, mean, m2):
    """Merge per-item (count, mean, M2) rows of shape (K, C) into (C,) with Chan's formula."""
    n = np.zeros(mean.shape[1])
    mu = np.zeros(mean.shape[1])
    sq = np.zeros(mean.shape[1])
    for k in range(mean.shape[0]):
        for c in range(mean.shape[1]):
            nk = count[k]
            total = n[c] + nk
            if total > 0:
                delta = mean[k, c] - mu[c]
                mu[c] += delta * nk / total
                sq[c] += m2[k, c] + delta * delta * n[c] * nk / total
                n[c] = total
    return n, mu, sq


def moments(x3):
    """Per-channel count, mean and biased variance (float64) of ``x3`` over axes 0 and 2."""
    A, C, B = x3.shape
    per_item = rows_per_item(x3)
    k = items(A, per_item)
    mean, m2 = np.zeros((k, C)), np.zeros((k, C))
    if B == 1:
        _moments_lanes(x3.reshape(A, C), per_item, mean, m2, work=x3.size)
    else:
        _moments_rows(x3, per_item, mean, m2, work=x3.size)
    count = np.minimum(per_item, A - per_item * np.arange(k)).astype(np.float64) * B
    n, mu, sq = chan_merge(count, mean, m2)
    return A * B, mu, sq / max(A * B, 1)


# ----------------------------------------------------------------------------- y = (x - mean) * scale + shift

@kernel
def _apply_rows(x3, y3, mean, scale, shift):
    A, C, B = x3.shape
    for i in prange(A * C):
        a, c = i // C, i % C
        m, s, t = mean[c], scale[c], shift[c]
        for b in range(B):
            y3[a, c, b] = (x3[a, c, b] - m) * s + t


@kernel
def _apply_lanes(x2, y2, mean, scale, shift):
    A, C = x2.shape
    for a in prange(A):
        for c in range(C):
            y2[a, c] = (x2[a, c] - mean[c]) * scale[c] + shift[c]


def scale_shift(x3, mean, scale, shift):
    """``y = (x - mean[c]) * scale[c] + shift[c]`` with float64 per-channel vectors."""
    y3 = np.empty_like(x3)
    if x3.shape[2] == 1:
        _apply_lanes(x3[:, :, 0], y3[:, :, 0], mean, scale, shift, work=x3.size)
    else:
        _apply_rows(x3, y3, mean, scale, shift, work=x3.size)
    return y3


# ----------------------------------------------------------------------------- backward

@kernel
def _grad_sums_rows(x3, dy3, mean, per_item, sum_dy, sum_dyx):
    A, C, B = x3.shape
    for i in prange(sum_dy.shape[0] * C):
        k, c = i // C, i % C
        m = mean[c]
        s1 = 0.0
        s2 = 0.0
        for a in range(k * per_item, min(A, (k + 1) * per_item)):
            for b in range(B):
                d = 1.0 * dy3[a, c, b]
                s1 += d
                s2 += d * (x3[a, c, b] - m)
        sum_dy[k, c], sum_dyx[k, c] = s1, s2


@kernel
def _grad_sums_lanes(x2, dy2, mean, per_item, sum_dy, sum_dyx):
    A, C = x2.shape
    for k in prange(sum_dy.shape[0]):
        s1, s2 = sum_dy[k], sum_dyx[k]
        for a in range(k * per_item, min(A, (k + 1) * per_item)):
            for c in range(C):
                d = 1.0 * dy2[a, c]
                s1[c] += d
                s2[c] += d * (x2[a, c] - mean[c])


def grad_sums(x3, dy3, mean):
    """Per-channel float64 ``sum(dy)`` and ``sum(dy * (x - mean))``."""
    A, C, B = x3.shape
    per_item = rows_per_item(x3)
    k = items(A, per_item)
    sum_dy, sum_dyx = np.zeros((k, C)), np.zeros((k, C))
    if B == 1:
        _grad_sums_lanes(x3[:, :, 0], dy3[:, :, 0], mean, per_item, sum_dy, sum_dyx, work=x3.size)
    else:
        _grad_sums_rows(x3, dy3, mean, per_item, sum_dy, sum_dyx, work=x3.size)
    return sum_dy.sum(axis=0), sum_dyx.sum(axis=0)


@kernel
def _dx_rows(x3, dy3, dx3, mean, alpha, beta, gamma):
    A, C, B = x3.shape
    for i in prange(A * C):
        a, c = i // C, i % C
        m, p, q, r = mean[c], alpha[c], beta[c], gamma[c]
        for b in range(B):
            dx3[a, c, b] = p * dy3[a, c, b] + q * (x3[a, c, b] - m) + r


@kernel
def _dx_lanes(x2, dy2, dx2, mean, alpha, beta, gamma):
    A, C = x2.shape
    for a in prange(A):
        for c in range(C):
            dx2[a, c] = alpha[c] * dy2[a, c] + beta[c] * (x2[a, c] - mean[c]) + gamma[c]


def dx(x3, dy3, mean, alpha, beta, gamma):
    """``dx = alpha[c] * dy + beta[c] * (x - mean[c]) + gamma[c]`` with float64 vectors."""
    dx3 = np.empty_like(x3)
    if x3.shape[2] == 1:
        _dx_lanes(x3[:, :, 0], dy3[:, :, 0], dx3[:, :, 0], mean, alpha, beta, gamma, work=x3.size)
    else:
        _dx_rows(x3, dy3, dx3, mean, alpha, beta, gamma, work=x3.size)
    return dx3
