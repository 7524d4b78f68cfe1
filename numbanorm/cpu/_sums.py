"""Float64 sums over 1-d slices that the row-wise and channel-wise primitives share.

Statistics come from one pass of shifted sums (:func:`shifted_sums`,
:func:`shifted_moments`); gradient sums add short blocks in the data's dtype
(twice float64's SIMD lanes for float32) and the blocks in float64.
"""
import numpy as np

from ._kernel import cast_like, helper


@helper
def shifted_moments(count, shift, sum_d, sum_d2):
    """Mean and M2 (sum of squared deviations) of ``count`` values from the float64 sums of
    ``d = x - shift`` and ``d * d``, ``shift`` being one of the values.

    One pass over the data instead of two, and safe where ``E[x^2] - E[x]^2`` is
    not: as ``shift`` is a data value, ``(shift - mean)^2 <= M2``, so
    ``sum(d^2) = M2 + count * (shift - mean)^2 <= (count + 1) * M2`` and the
    subtraction costs at most a factor ``count`` of float64's precision (a few
    1e-12 for 32768 values). Callers form ``d`` in float64, where the difference
    of two float32 values is exact.
    """
    dm = sum_d / count
    return shift + dm, max(sum_d2 - sum_d * dm, 0.0)


@helper
def shifted_sums(values, shift):
    """Float64 ``sum(d)`` and ``sum(d * d)`` of ``d = x - shift`` over a 1-d slice (exact ``d`` for float32)."""
    sum_d = 0.0
    sum_d2 = 0.0
    for j in range(values.shape[0]):
        d = np.float64(values[j]) - shift
        sum_d += d
        sum_d2 += d * d
    return sum_d, sum_d2


@helper
def sum_squares(values):
    """Float64 ``sum(x * x)`` over a 1-d slice (exact squares for float32). Without a shift to
    subtract, a third fewer operations than :func:`shifted_sums`: RMS and weight norm's
    statistics in cache take 0.23 cycles a value instead of 0.36."""
    total = 0.0
    for j in range(values.shape[0]):
        v = np.float64(values[j])
        total += v * v
    return total


# Elements a block sum adds in the data's dtype before it joins a float64 total:
# float32 lanes are twice float64's, and a block is short enough for its rounding
# (a few float32 ulps of the block's magnitude) to stay far below the tolerances.
SUM_BLOCK = 256

# Rows whose per-entry sums (a dweight's, a channels-last gradient's) a work item adds
# up in the data's dtype before they join its float64 partial sums: few enough for the
# rounding to stay far below the tolerances.
FLUSH_ROWS = 8


@helper
def flush(rows, acc):
    """``acc += rows`` (float64 from the data's dtype; skipped for a zero-width ``acc``), then ``rows = 0``."""
    for j in range(acc.shape[0]):
        acc[j] += rows[j]
    rows[:] = 0


@helper
def sum_blocks(part, total):
    """``total = part.sum(axis=0)`` in block order (so independent of the threads); run after
    the parallel loop that filled ``part``, it saves a NumPy call per sum."""
    total[:] = 0
    for k in range(part.shape[0]):
        for j in range(total.shape[0]):
            total[j] += part[k, j]


@helper
def dy_sums(xs, gs, m):
    """Float64 ``sum(dy)`` and ``sum(dy * (x - m))`` over a slice, by blocks (``m`` in the data's dtype)."""
    zero = cast_like(xs, 0.0)
    sum_dy = 0.0
    sum_dyx = 0.0
    for j0 in range(0, xs.shape[0], SUM_BLOCK):
        # Slices, so each block's loop runs from 0 and LLVM vectorises it.
        xb, gb = xs[j0:j0 + SUM_BLOCK], gs[j0:j0 + SUM_BLOCK]
        block_dy = zero
        block_dyx = zero
        for j in range(xb.shape[0]):
            block_dy += gb[j]
            block_dyx += gb[j] * (xb[j] - m)
        sum_dy += block_dy
        sum_dyx += block_dyx
    return sum_dy, sum_dyx
