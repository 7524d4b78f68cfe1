"""The shared "normalize rows" primitive: layer, RMS, group and instance norm.

Every row-wise op is put in the form ``x2`` of shape ``(R, L)``, C-contiguous,
one normalized group per row. The affine parameters are a vector ``w`` of
``period * nseg`` entries: row ``r`` is cut into ``nseg`` equal segments and
segment ``q`` uses ``w[(r % period) * nseg + q]``. So layer norm is
``period=1, nseg=L`` (one weight per element), instance norm
``period=C, nseg=1`` (one per row) and group norm ``period=G, nseg=C // G``
(one per channel of the group).

Per row: the mean and the sum of squared deviations in one pass of shifted
float64 sums (:func:`._sums.shifted_moments`), then the output from the row,
still in cache, in the data's dtype with the mean split into its rounded value
and the rounding error, so large-mean float32 data keeps its precision.
"""
import numpy as np
from numba import prange

from ._kernel import ITEM_ELEMENTS, SERIAL_BELOW, cast_like, helper, kernel, outputs, param, row_blocks, row_helper, scratch
from ._stream import store_fence, stream_row, streams
from ._sums import FLUSH_ROWS, SUM_BLOCK, dy_sums, flush, shifted_moments, shifted_sums, sum_blocks, sum_squares


@helper
def _row_stats(row, center, eps):
    """Mean (0 without centering), biased variance and 1/sqrt(var + eps) of a row, in float64.

    One pass of float64 sums of ``d = x - row[0]`` and ``d * d`` (:func:`shifted_moments`;
    without centering, of ``x * x``): never ``E[x^2] - E[x]^2``.
    """
    L = row.shape[0]
    if center:
        shift = np.float64(row[0]) if L > 0 else 0.0
        sum_d, sum_d2 = shifted_sums(row, shift)
        mean, m2 = shifted_moments(L, shift, sum_d, sum_d2)
    else:
        mean, m2 = 0.0, sum_squares(row)
    var = m2 / L
    return mean, var, 1.0 / np.sqrt(var + eps)


@helper
def _xhat_terms(row, mean, rstd):
    """Scalars in the row's dtype such that ``xhat = (x - m_hi) * rs + lo``.

    ``m_hi`` is the mean rounded to the row's dtype; the rounding error goes
    into ``lo``, so float32 data with a large mean keeps float64 accuracy.
    """
    m_hi = cast_like(row, mean)
    return m_hi, cast_like(row, rstd), cast_like(row, -(mean - m_hi) * rstd)


@row_helper
def _row_forward(x, out, w, b, period, nseg, eps, center, r, mean_out, rstd_out, var_out):
    """Row ``r`` of x normalized into the vector ``out``; its statistics into ``*_out[r]``."""
    L = x.shape[1]
    seg = L // nseg
    row = x[r]
    mean, var, rstd = _row_stats(row, center, eps)
    mean_out[r], rstd_out[r], var_out[r] = mean, rstd, var
    m, rs, lo = _xhat_terms(row, mean, rstd)
    base = (r % period) * nseg
    if seg == 1:
        wr, br = w[base:base + L], b[base:base + L]
        if center:
            for j in range(L):
                out[j] = ((row[j] - m) * rs + lo) * wr[j] + br[j]
        else:  # m and lo are 0: a third fewer operations
            for j in range(L):
                out[j] = row[j] * rs * wr[j] + br[j]
    else:
        for q in range(nseg):
            # Slices, so each inner loop runs from 0 and LLVM vectorises it.
            src, dst = row[q * seg:(q + 1) * seg], out[q * seg:(q + 1) * seg]
            scale, shift = rs * w[base + q], lo * w[base + q] + b[base + q]
            if center:
                for j in range(seg):
                    dst[j] = (src[j] - m) * scale + shift
            else:
                for j in range(seg):
                    dst[j] = src[j] * scale + shift


@kernel
def _forward(x, y, w, b, period, nseg, eps, center, rows_per_item, stream, mean_out, rstd_out, var_out):
    R, L = x.shape
    for k in prange((R + rows_per_item - 1) // rows_per_item):
        rows = range(k * rows_per_item, min(R, (k + 1) * rows_per_item))
        if stream:
            buffer = np.empty(L, x.dtype)  # each row is computed here, in L1, then streamed out
            for r in rows:
                _row_forward(x, buffer, w, b, period, nseg, eps, center, r, mean_out, rstd_out, var_out)
                stream_row(buffer, y[r])
            store_fence()
        else:
            for r in rows:
                _row_forward(x, y[r], w, b, period, nseg, eps, center, r, mean_out, rstd_out, var_out)


@helper
def _element_sums(xs, gs, ws, m, rs, lo, dw_rows, db_rows):
    """One pass over a row with one weight per element: float64 ``sum(g)`` and ``sum(g * (x - m))``
    for ``g = dy * w``, by blocks of the data's dtype, and ``dw_rows += dy * xhat``,
    ``db_rows += dy`` (``xhat = (x - m) * rs + lo``) into the data-dtype partials of the last
    rows. One pass instead of a sums pass and a dweight/dbias pass: the whole backward is 6% faster.
    """
    zero = cast_like(xs, 0.0)
    sum_g = 0.0
    sum_gx = 0.0
    for j0 in range(0, xs.shape[0], SUM_BLOCK):
        # Slices, so each block's loop runs from 0 and LLVM vectorises it.
        end = j0 + SUM_BLOCK
        xb, gb, wb, dwb, dbb = xs[j0:end], gs[j0:end], ws[j0:end], dw_rows[j0:end], db_rows[j0:end]
        block_g = zero
        block_gx = zero
        for j in range(xb.shape[0]):
            d = gb[j]
            dy_xc = d * (xb[j] - m)  # dy * (x - m)
            block_g += d * wb[j]
            block_gx += dy_xc * wb[j]
            dwb[j] += dy_xc * rs + d * lo
            dbb[j] += d
        sum_g += block_g
        sum_gx += block_gx
    return sum_g, sum_gx


@helper
def _element_sums_uncentered(xs, gs, ws, rs, dw_rows):
    """:func:`_element_sums` without centering (RMS norm: ``m`` and ``lo`` are 0, no bias, and
    ``sum(g)`` is not used): float64 ``sum(g * x)`` and ``dw_rows += dy * x * rs``, two of its five
    streams fewer (paired A/B: 0.85-0.95x the time of the backward)."""
    zero = cast_like(xs, 0.0)
    sum_gx = 0.0
    for j0 in range(0, xs.shape[0], SUM_BLOCK):
        end = j0 + SUM_BLOCK
        xb, gb, wb, dwb = xs[j0:end], gs[j0:end], ws[j0:end], dw_rows[j0:end]
        block_gx = zero
        for j in range(xb.shape[0]):
            dy_x = gb[j] * xb[j]
            block_gx += dy_x * wb[j]
            dwb[j] += dy_x * rs
        sum_gx += block_gx
    return sum_gx


@row_helper
def _row_backward(x, dy, dx, w, period, nseg, mean, rstd, center, r, dw_acc, db_acc, dw_rows, db_rows):
    """dx of one row, and its dweight/dbias terms: into the float64 ``dw_acc``, ``db_acc`` with one
    weight per segment, into the data-dtype ``dw_rows``, ``db_rows`` with one per element.

    With g = dy * w and xhat = (x - mean) * rstd:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); mean(g) drops without centering.
    Sums of ``g * (x - m)`` become sums of ``g * xhat`` as ``xhat = (x - m) * rs + lo``.
    """
    L = x.shape[1]
    seg = L // nseg
    xr, gr, out = x[r], dy[r], dx[r]
    m, rs, lo = _xhat_terms(xr, mean[r], rstd[r])
    base = (r % period) * nseg
    if seg == 1:
        wr = w[base:base + L]
        if center:
            sum_g, sum_gx = _element_sums(xr, gr, wr, m, rs, lo, dw_rows[base:base + L], db_rows[base:base + L])
        else:
            sum_g, sum_gx = 0.0, _element_sums_uncentered(xr, gr, wr, rs, dw_rows[base:base + L])
        sum_gx = sum_gx * rs + sum_g * lo
    else:
        sum_g = 0.0
        sum_gx = 0.0
        for q in range(nseg):
            sum_dy, sum_dyx = dy_sums(xr[q * seg:(q + 1) * seg], gr[q * seg:(q + 1) * seg], m)
            sum_dyx = sum_dyx * rs + sum_dy * lo
            dw_acc[base + q] += sum_dyx
            db_acc[base + q] += sum_dy
            sum_g += w[base + q] * sum_dy
            sum_gx += w[base + q] * sum_dyx
    mean_g = cast_like(xr, sum_g / L if center else 0.0)
    mean_gx = cast_like(xr, sum_gx / L)
    if seg == 1:
        for j in range(L):
            xhat = (xr[j] - m) * rs + lo
            out[j] = rs * (gr[j] * wr[j] - mean_g - xhat * mean_gx)
    else:
        for q in range(nseg):
            xs, gs, dst = xr[q * seg:(q + 1) * seg], gr[q * seg:(q + 1) * seg], out[q * seg:(q + 1) * seg]
            wq = w[base + q]
            for j in range(seg):
                xhat = (xs[j] - m) * rs + lo
                dst[j] = rs * (gs[j] * wq - mean_g - xhat * mean_gx)


@kernel
def _backward(x, dy, dx, w, period, nseg, mean, rstd, center, rows_per_item, dw_part, db_part, dw_rows, db_rows,
              dweight, dbias):
    R = x.shape[0]
    for k in prange(dw_part.shape[0]):
        start, end = k * rows_per_item, min(R, (k + 1) * rows_per_item)
        for r in range(start, end):
            _row_backward(x, dy, dx, w, period, nseg, mean, rstd, center, r, dw_part[k], db_part[k],
                          dw_rows[k], db_rows[k])
            if dw_rows.shape[1] and ((r - start) % FLUSH_ROWS == FLUSH_ROWS - 1 or r == end - 1):
                flush(dw_rows[k], dw_part[k])
                flush(db_rows[k], db_part[k])
    sum_blocks(dw_part, dweight)
    sum_blocks(db_part, dbias)


# Below SERIAL_BELOW elements, where the serial twin runs, a backward's outputs and scratch
# are allocated inside one compiled call: seven allocations from Python cost about 2 us, as
# much as a small row block's work. The same twin does the work, so the bits are those of the
# larger path's one block. (The forward's four allocations gain nothing measurable.)
_backward_serial = _backward.serial


@helper
def _small_backward(x, dy, w, period, nseg, mean, rstd, center, dw_width, db_width, rows_width):
    dw_part, db_part = np.zeros((1, dw_width)), np.zeros((1, db_width))
    dw_rows, db_rows = np.zeros((1, rows_width), x.dtype), np.zeros((1, rows_width), x.dtype)
    dx, dweight, dbias = np.empty_like(x), np.empty(dw_width), np.empty(db_width)
    _backward_serial(x, dy, dx, w, period, nseg, mean, rstd, center, max(1, x.shape[0]), dw_part, db_part,
                     dw_rows, db_rows, dweight, dbias)
    return dx, dweight, dbias


def forward(x2, weight, bias, period, nseg, eps, center):
    """Normalize each row of ``x2``; returns ``y2`` and float64 ``mean``, ``rstd``, ``var`` per row."""
    R, L = x2.shape
    w = param(weight, period * nseg, 1.0, x2.dtype)
    b = param(bias, period * nseg, 0.0, x2.dtype)
    y2 = outputs.empty_like(x2)
    mean, rstd, var = np.empty(R), np.empty(R), np.empty(R)
    stream = streams(y2) and L <= ITEM_ELEMENTS  # (a row's buffer stays in L2)
    _forward(x2, y2, w, b, period, nseg, eps, center, max(1, ITEM_ELEMENTS // max(L, 1)), stream, mean, rstd, var,
             work=x2.size)
    return y2, mean, rstd, var


def backward(x2, dy2, weight, period, nseg, mean, rstd, center, need_dweight=True, need_dbias=True):
    """dx2 and the float64 per-entry sums dweight = sum(dy * xhat), dbias = sum(dy).

    With one weight per element, a sum not needed (no weight, or no bias as in RMS
    norm) is skipped and comes back empty.
    """
    R, L = x2.shape
    w = param(weight, period * nseg, 1.0, x2.dtype)
    rows_per_item, blocks = row_blocks(R, L, period * nseg)  # partial dweight/dbias per block
    # Zero-width float64 partials: the flush skips a per-element sum nobody asked for.
    width = lambda needed: period * nseg if needed or nseg != L else 0  # noqa: E731
    # One weight per element: the last rows' terms in the data's dtype (always full width;
    # the flush skips what nobody asked for).
    rows_width = period * nseg if nseg == L else 0
    if x2.size < SERIAL_BELOW and blocks == 1:  # one block of rows: one call
        return _small_backward(x2, dy2, w, period, nseg, mean, rstd, center, width(need_dweight),
                               width(need_dbias), rows_width)
    dw_part = scratch.zeros((blocks, width(need_dweight)))
    db_part = scratch.zeros((blocks, width(need_dbias)))
    dw_rows, db_rows = scratch.zeros((blocks, rows_width), x2.dtype), scratch.zeros((blocks, rows_width), x2.dtype)
    dx2 = outputs.empty_like(x2)
    dweight, dbias = np.empty(dw_part.shape[1]), np.empty(db_part.shape[1])
    _backward(x2, dy2, dx2, w, period, nseg, mean, rstd, center, rows_per_item, dw_part, db_part,
              dw_rows, db_rows, dweight, dbias, work=x2.size)
    return dx2, dweight, dbias
