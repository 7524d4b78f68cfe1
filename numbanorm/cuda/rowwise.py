"""The shared "normalize rows" primitive on the GPU: layer, RMS, group and instance norm.

The form is the CPU backend's (:mod:`numbanorm.cpu.rowwise`): ``x2`` of shape
``(R, L)``, C-contiguous, one normalized group per row, and affine vectors of
``period * nseg`` entries, segment ``q`` of row ``r`` using entry
``(r % period) * nseg + q``. Layer norm is ``period=1, nseg=L``, instance norm
``period=C, nseg=1``, group norm ``period=G, nseg=C // G``. Rows may be float16:
the kernels compute in the dtype of the statistics (float32 for float16 data).

A row is handled by the lanes of one warp (short rows, several rows a block) or
of one block (long rows). Its statistics take two passes over the row, in the
compute dtype:

1. ``pivot = x[r, 0]``, then the sums of ``x - pivot`` and ``|x - pivot|``:
   ``mean = pivot + sum / L`` and ``scale = mean(|x - pivot|)``. The pivot keeps
   the sums small for large-mean data (``1e4 + randn`` in float32).
2. ``rss = scale * sqrt(sum(((x - mean) / scale)**2))``, the root of the sum of
   squared deviations: never ``E[x^2] - E[x]^2``, and no square of data near
   1e30 overflows float32. Then ``rstd = 1 / hypot(std, sqrt(eps))``, which is
   ``1 / sqrt(var + eps)`` without forming ``var``.

The row kernels (:func:`_forward_kernel`, :func:`_backward_kernel`) keep each
lane's values of the row in registers, lane ``l`` holding elements ``l, l +
lanes, ...`` (coalesced), so global memory is read once: rows of up to 16384
float32 values in the forward (8192 for group norm), x and dy of rows of up to
4096 in the backward, and float32 rows of up to 8192 with dy kept in shared
memory instead (:func:`._launch.register_row_config`; more spills at the 64 registers a
thread has). They are compiled for their number of lanes, so a lane's values
lie at constant offsets, and for how many of a lane's values lie in the row:
those are read without bounds checks, whose predicated loads cost registers and
instructions (``python -m numbanorm gpu-report``); one value a lane is checked.
Longer rows take the long-row kernels, which keep the row in shared memory when
it fits (12288 float32 values in the forward, 6144 of x and dy in the backward)
and re-read it otherwise. Indices are unsigned and strided loops are
while loops: numba's signed indices and ``range`` trip counts cost registers
and a 64-bit division.

The backward is fused per row: the row sums of ``g = dy * w`` and ``g * xhat``
(one lane reduction), then ``dx``. dweight and dbias take two stages. With a
weight per element (layer and RMS norm), each lane adds its columns'
``dy * xhat`` and ``dy`` in registers over all the rows its block handles, the
block writes one partial row, and :func:`._reduce.column_sums` adds the
partial rows up (at most PARTIAL_ROWS of them, a number fixed by the shape).
With a weight per row or per segment of a row (instance and group norm), each
row's sums per segment are written (a lane reduction per segment), and the rows
of the same entry are added up in order by the same second stage.
"""
import functools
import math

import numpy as np
from numba import cuda

from ._arrays import compute_dtype, empty, full, is_host, vector
from ._launch import ROW_CACHE_BYTES, cdiv, kernel, partial_rows_limit, register_row_config, row_config
from ._reduce import column_sums, scratch_bytes, scratch_slots, sum_lanes


# ----------------------------------------------------------------------------- rows in registers

ELEMENT, ROW, SEGMENT = 0, 1, 2  # what an affine entry covers: an element, a row, a segment of a row


def weights_of(period, nseg, L):
    """Which of ELEMENT, ROW or SEGMENT the affine entries of rows of ``L`` cover."""
    if nseg == 1:
        return ROW
    return ELEMENT if period == 1 and nseg == L else SEGMENT


@cuda.jit(device=True)
def in_row(i, full, j, length):
    """Whether value ``i`` of a lane, element ``j`` of its row, lies in the row: the first ``full``
    of a lane's values always (no check once compiled for a constant ``full``), value ``full``
    when ``j < length``, the rest never."""
    return i < full or (i == full and j < length)


@functools.lru_cache(maxsize=None)
def _forward_kernel(per, lanes, full, weights):
    """The forward for rows whose ``lanes`` lanes keep ``per`` values each in registers, with
    affine entries per ``weights`` (ELEMENT, ROW or SEGMENT). All fixed at compile time, so
    a lane's values lie at constant offsets; ``full = min(per, L // lanes)``: the values of
    every lane that lie in the row, read without bounds checks (predicated loads cost
    registers and instructions), value ``full`` checked, the rest past the end of every row."""

    @kernel
    def forward_rows(x, y, w, b, period, nseg, inv_len, sqrt_eps, center, mean_out, rstd_out, std_out):
        T = mean_out.dtype.type
        U = np.uint64  # unsigned indices: no code for negative ones
        scratch = cuda.shared.array(0, mean_out.dtype)  # sum_lanes' scratch, sized at launch
        values = cuda.local.array(per, mean_out.dtype)  # this lane's elements of the row
        R, L = x.shape
        length = U(L)
        seg = U(L // nseg)
        q_step, rem_step = U(lanes) // seg, U(lanes) % seg
        lane, rows = U(cuda.threadIdx.x), cuda.blockDim.y
        first = cuda.blockIdx.x * rows
        while first < R:  # the same trips for the block
            r = first + cuda.threadIdx.y
            valid = r < R  # rows past the end compute on the last row (no predicate per load) and write nothing
            row = x[r if valid else R - 1]
            out = y[r if valid else R - 1]
            pivot = T(row[0]) if center else T(0)
            total = T(0)
            size = T(0)
            for i in range(per):
                j = lane + U(i * lanes)
                v = T(row[j]) if in_row(i, full, j, length) else pivot  # past the row's end: adds nothing
                values[i] = v
                total += v - pivot
                size += abs(v - pivot)
            total, size = sum_lanes(total, size, scratch)
            mean = pivot + total * inv_len if center else T(0)
            scale = size * inv_len
            inv_scale = T(1) / scale if scale > 0 else T(0)
            squares = T(0)
            for i in range(per):
                d = (values[i] - mean) * inv_scale if in_row(i, full, lane + U(i * lanes), length) else T(0)
                squares += d * d
            squares, _ = sum_lanes(squares, T(0), scratch)
            if valid:  # (rows past the end would divide by zero when eps is 0)
                std = scale * T(math.sqrt(squares * inv_len))
                rstd = T(1) / T(math.hypot(std, sqrt_eps))
                if lane == 0:
                    mean_out[r], rstd_out[r], std_out[r] = mean, rstd, std
                base = U((r % period) * nseg)
                # SEGMENT: element j = lane + i * lanes is in segment q = j // seg, stepped
                # without a division per element: q += lanes // seg, plus one when the remainder wraps.
                q, rem = lane // seg, lane % seg
                for i in range(per):
                    j = lane + U(i * lanes)
                    if in_row(i, full, j, length):
                        if weights == ELEMENT:
                            k = j
                        elif weights == ROW:
                            k = base
                        else:
                            k = base + q
                        out[j] = (values[i] - mean) * rstd * T(w[k]) + T(b[k])
                    if weights == SEGMENT:
                        q += q_step
                        rem += rem_step
                        if rem >= seg:
                            rem -= seg
                            q += U(1)
            first += cuda.gridDim.x * rows

    forward_rows.py_func.factory_key = (__name__, "_forward_kernel", (per, lanes, full, weights))
    return forward_rows


@functools.lru_cache(maxsize=None)
def _backward_kernel(per, lanes, full, weights, dy_shared):
    """The backward for rows whose ``lanes`` lanes keep ``per`` values of x and of dy each in
    registers (``per``, ``lanes`` and ``full`` as for :func:`_forward_kernel`).

    ``weights``: ELEMENT, a weight per element (``period == 1, nseg == L``),
    whose dweight/dbias sums each lane keeps in registers over its rows; ROW or
    SEGMENT, a weight per row or per segment of a row, whose sums over the row's
    segments are written per row (one lane reduction per segment).
    ``dy_shared``: dy (then g) is kept in the dynamic shared memory after the
    reduction scratch instead (``per * lanes`` values a row of the block), which
    leaves the registers to x-hat and the dweight/dbias sums: rows twice as long.
    """

    @kernel
    def backward_rows(x, dy, dx, w, period, nseg, mean, rstd, inv_len, center, dw_part, db_part):
        T = mean.dtype.type
        shared = cuda.shared.array(0, mean.dtype)  # sum_lanes' scratch, then dy's or the block's dw, db rows
        xhats = cuda.local.array(per, mean.dtype)
        gs = cuda.local.array(1 if dy_shared else per, mean.dtype)  # dy, and g = dy * w once known
        dws = cuda.local.array(per, mean.dtype)   # sum(dy * xhat) of this lane's columns (ELEMENT)
        dbs = cuda.local.array(per, mean.dtype)   # sum(dy)
        U = np.uint64  # unsigned indices: no code for negative ones
        R, L = x.shape
        length = U(L)
        seg = U(L // nseg)
        lane, rows = U(cuda.threadIdx.x), cuda.blockDim.y
        g_at = U(scratch_slots()) + U(cuda.threadIdx.y * per * lanes)  # this row's g, with dy_shared
        for i in range(per):
            dws[i] = T(0)
            dbs[i] = T(0)
        first = cuda.blockIdx.x * rows
        while first < R:  # the same trips for the block
            r = first + cuda.threadIdx.y
            valid = r < R  # rows past the end compute on the last row (no predicate per load) and write nothing
            rr = r if valid else R - 1
            x_row, dy_row, dx_row = x[rr], dy[rr], dx[rr]
            m, rs = mean[rr], rstd[rr]
            base = U((rr % period) * nseg)
            s1 = T(0)  # ELEMENT: sum(g), sum(g * xhat); ROW: sum(dy), sum(dy * xhat)
            s2 = T(0)
            for i in range(per):
                j = lane + U(i * lanes)
                inside = in_row(i, full, j, length)
                d = T(dy_row[j]) if inside else T(0)  # past the row's end: xhat = 0, dy = 0
                xhat = (T(x_row[j]) - m) * rs if inside else T(0)
                xhats[i] = xhat
                if weights == ELEMENT:
                    if valid:
                        dws[i] += d * xhat
                        dbs[i] += d
                    d *= T(w[j]) if inside else T(0)  # g
                if dy_shared:  # each lane reads back only what it stored: no barrier needed
                    shared[g_at + j] = d
                else:
                    gs[i] = d
                s1 += d
                s2 += d * xhat
            if weights == SEGMENT:  # per segment q: the sums of dy and dy * xhat, then g = dy * w[q]
                s1 = T(0)
                s2 = T(0)
                for q in range(nseg):
                    w_q = T(w[base + U(q)])
                    q_start = np.uint32(q) * np.uint32(seg)  # 32 bits: fewer registers (rows < 2**32)
                    sum_dy = T(0)
                    sum_dyx = T(0)
                    for i in range(per):
                        j = np.uint32(lane) + np.uint32(i * lanes)
                        if j >= q_start and j < q_start + np.uint32(seg):
                            d = shared[g_at + j] if dy_shared else gs[i]
                            sum_dy += d
                            sum_dyx += d * xhats[i]
                            if dy_shared:
                                shared[g_at + j] = d * w_q
                            else:
                                gs[i] = d * w_q
                    sum_dy, sum_dyx = sum_lanes(sum_dy, sum_dyx, shared)
                    if valid and lane == 0:
                        dw_part[r, q], db_part[r, q] = sum_dyx, sum_dy
                    s1 += w_q * sum_dy
                    s2 += w_q * sum_dyx
            else:
                s1, s2 = sum_lanes(s1, s2, shared)
            w_row = T(1)
            if weights == ROW:
                if valid and lane == 0:
                    dw_part[r, 0], db_part[r, 0] = s2, s1
                w_row = T(w[base])
                s1 *= w_row
                s2 *= w_row
            mean_g = s1 * inv_len if center else T(0)
            mean_gx = s2 * inv_len
            if valid:
                for i in range(per):
                    j = lane + U(i * lanes)
                    if in_row(i, full, j, length):
                        g = shared[g_at + j] if dy_shared else gs[i]
                        if weights == ROW:
                            g *= w_row
                        dx_row[j] = rs * (g - mean_g - xhats[i] * mean_gx)
            first += cuda.gridDim.x * rows
        if weights == ELEMENT:  # the block's row groups add their columns' sums in order, into one partial row
            p = cuda.blockIdx.x
            if rows == 1:
                for i in range(per):
                    j = lane + U(i * lanes)
                    if in_row(i, full, j, length):
                        dw_part[p, j], db_part[p, j] = dws[i], dbs[i]
                return
            start = scratch_slots()
            for group in range(rows):
                cuda.syncthreads()
                if cuda.threadIdx.y == group:
                    for i in range(per):
                        j = lane + U(i * lanes)
                        if in_row(i, full, j, length):
                            before_w = shared[start + j] if group > 0 else T(0)
                            before_b = shared[start + length + j] if group > 0 else T(0)
                            shared[start + j] = before_w + dws[i]
                            shared[start + length + j] = before_b + dbs[i]
            cuda.syncthreads()
            j = U(cuda.threadIdx.y * lanes) + lane
            while j < length:
                dw_part[p, j], db_part[p, j] = shared[start + j], shared[start + length + j]
                j += U(lanes * rows)

    backward_rows.py_func.factory_key = (__name__, "_backward_kernel", (per, lanes, full, weights, dy_shared))
    return backward_rows


# ----------------------------------------------------------------------------- long rows

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
    The sums are in ``scratch``'s dtype. The first pass keeps the first ``cache.shape[0]``
    values (a prefix of the row, all of it, or none) in ``cache`` and the second reads
    them back from there. Each lane reads back only what it stored itself, so no
    synchronization is needed.
    """
    T = scratch.dtype.type
    lane, lanes = cuda.threadIdx.x, cuda.blockDim.x
    stop = j0 + cache.shape[0]  # cached below this column
    pivot = T(x[r, j0]) if valid and center else T(0)
    total = T(0)
    size = T(0)
    if valid:
        j = j0 + lane
        while j < j1:  # (a while loop: no division for the trip count)
            v = T(x[r, j])
            if j < stop:
                cache[j - j0] = v
            d = v - pivot
            total += d
            size += abs(d)
            j += lanes
    total, size = sum_lanes(total, size, scratch)
    n = T(j1 - j0)
    mean = pivot + total / n if center else T(0)
    scale = size / n
    squares = T(0)
    if valid and scale > 0:
        inv_scale = T(1) / scale
        j = j0 + lane
        while j < j1:  # (a while loop: no division for the trip count)
            d = ((cache[j - j0] if j < stop else T(x[r, j])) - mean) * inv_scale
            squares += d * d
            j += lanes
    squares, _ = sum_lanes(squares, T(0), scratch)
    return mean, scale * T(math.sqrt(squares))


@functools.lru_cache(maxsize=None)
def _forward_long_kernel(per_element):
    """The forward for long rows: a weight per element (``per_element``) or per segment;
    the first ``cache_length`` values of a row kept in shared memory between the passes,
    the rest re-read."""

    @kernel
    def forward_long(x, y, w, b, period, nseg, sqrt_eps, center, cache_length, mean_out, rstd_out, std_out):
        T = mean_out.dtype.type
        shared = cuda.shared.array(0, mean_out.dtype)  # sum_lanes' scratch, then the cached rows
        start = row_cache_start(cache_length)
        cache = shared[start:start + cache_length]
        R, L = x.shape
        seg = L // nseg
        lane, lanes, rows = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockDim.y
        first = cuda.blockIdx.x * rows
        while first < R:
            r = first + cuda.threadIdx.y
            valid = r < R
            mean, rss = row_moments(x, r, 0, L, valid, center, shared, cache)
            if not per_element:  # the segments' lanes read what other lanes cached
                cuda.syncthreads()
            if valid:  # (rows past the end would divide by zero when eps is 0)
                std = rss / math.sqrt(T(L))
                rstd = T(1) / math.hypot(std, sqrt_eps)
                if lane == 0:
                    mean_out[r], rstd_out[r], std_out[r] = mean, rstd, std
                base = (r % period) * nseg
                if per_element:
                    j = lane
                    while j < L:  # (a while loop: no division for the trip count)
                        y[r, j] = ((cache[j] if j < cache_length else T(x[r, j])) - mean) * rstd * T(w[base + j]) \
                            + T(b[base + j])
                        j += lanes
                else:
                    for q in range(nseg):  # one weight and bias over the segment
                        scale = rstd * T(w[base + q])
                        shift = T(b[base + q])
                        j = q * seg + lane
                        while j < (q + 1) * seg:  # (a while loop: no division for the trip count)
                            y[r, j] = ((cache[j] if j < cache_length else T(x[r, j])) - mean) * scale + shift
                            j += lanes
            if not per_element:  # read before the next rows overwrite the cache
                cuda.syncthreads()
            first += cuda.gridDim.x * rows

    forward_long.py_func.factory_key = (__name__, "_forward_long_kernel", (per_element,))
    return forward_long


@kernel
def _moments(x, length, mean_out, rss_out):
    """Moments of every piece ``x[r, s * length:(s + 1) * length]``, at ``[r, s]`` of the outputs."""
    shared = cuda.shared.array(0, mean_out.dtype)  # sum_lanes' scratch, sized at launch
    no_cache = shared[0:0]
    R, L = x.shape
    pieces = mean_out.shape[1]
    rows = cuda.blockDim.y
    first = cuda.blockIdx.x * rows
    while first < R * pieces:
        i = first + cuda.threadIdx.y
        valid = i < R * pieces
        r, s = i // pieces, i % pieces
        j0 = s * length
        mean, rss = row_moments(x, r, j0, min(L, j0 + length), valid, True, shared, no_cache)
        if valid and cuda.threadIdx.x == 0:
            mean_out[r, s], rss_out[r, s] = mean, rss
        first += cuda.gridDim.x * rows


@functools.lru_cache(maxsize=None)
def _backward_long_kernel(per_element):
    """The backward for long rows: a weight per element (``per_element``) or per segment;
    the first ``cache_length`` values of x and dy kept in shared memory between the passes,
    the rest re-read."""

    @kernel
    def backward_long(x, dy, dx, w, period, nseg, mean, rstd, center, cache_length, dw_part, db_part):
        """dx of every row, and this row group's partial dweight, dbias sums in row ``p`` of the partials.

        With g = dy * w and xhat = (x - mean) * rstd:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); mean(g) drops without centering.
        The sums' pass keeps the first ``cache_length`` values of x and dy in shared memory for dx.
        """
        T = mean.dtype.type
        shared = cuda.shared.array(0, mean.dtype)  # sum_lanes' scratch, then the cached rows; sized at launch
        start = row_cache_start(2 * cache_length)
        x_cache = shared[start:start + cache_length]
        dy_cache = shared[start + cache_length:start + 2 * cache_length]
        R, L = x.shape
        seg = L // nseg
        lane, lanes, rows = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockDim.y
        p = cuda.blockIdx.x * rows + cuda.threadIdx.y
        k = lane
        while k < dw_part.shape[1]:
            dw_part[p, k] = T(0)
            db_part[p, k] = T(0)
            k += lanes
        cuda.syncthreads()
        first = cuda.blockIdx.x * rows
        while first < R:  # the same trips for the block
            r = first + cuda.threadIdx.y
            valid = r < R
            m = mean[r] if valid else T(0)
            rs = rstd[r] if valid else T(0)
            base = (r % period) * nseg
            sum_g = T(0)
            sum_gx = T(0)
            if per_element:  # each lane owns its columns of the partials
                if valid:
                    j = lane
                    while j < L:  # (a while loop: no division for the trip count)
                        d = T(dy[r, j])
                        v = T(x[r, j])
                        if j < cache_length:
                            x_cache[j], dy_cache[j] = v, d
                        xhat = (v - m) * rs
                        dw_part[p, base + j] += d * xhat
                        db_part[p, base + j] += d
                        g = d * T(w[base + j])
                        sum_g += g
                        sum_gx += g * xhat
                        j += lanes
                sum_g, sum_gx = sum_lanes(sum_g, sum_gx, shared)
            else:  # a weight per segment: the segment's sums over the lanes
                for q in range(nseg):
                    sum_dy = T(0)
                    sum_dyx = T(0)
                    if valid:
                        j = q * seg + lane
                        while j < (q + 1) * seg:  # (a while loop: no division for the trip count)
                            d = T(dy[r, j])
                            v = T(x[r, j])
                            if j < cache_length:
                                x_cache[j], dy_cache[j] = v, d
                            sum_dy += d
                            sum_dyx += d * ((v - m) * rs)
                            j += lanes
                    sum_dy, sum_dyx = sum_lanes(sum_dy, sum_dyx, shared)
                    if valid and lane == 0:
                        dw_part[p, base + q] += sum_dyx
                        db_part[p, base + q] += sum_dy
                    sum_g += T(w[base + q]) * sum_dy
                    sum_gx += T(w[base + q]) * sum_dyx
            mean_g = sum_g / T(L) if center else T(0)
            mean_gx = sum_gx / T(L)
            if not per_element:  # the segments' lanes stored elements other lanes read below
                cuda.syncthreads()
            if valid:
                for q in range(1 if per_element else nseg):
                    j0, j1 = (0, L) if per_element else (q * seg, (q + 1) * seg)
                    j = j0 + lane
                    while j < j1:  # (a while loop: no division for the trip count)
                        hit = j < cache_length
                        v = x_cache[j] if hit else T(x[r, j])
                        d = dy_cache[j] if hit else T(dy[r, j])
                        g = d * T(w[base + (j if per_element else q)])
                        dx[r, j] = rs * (g - mean_g - (v - m) * rs * mean_gx)
                        j += lanes
            if not per_element:  # the cache is read before the next rows overwrite it
                cuda.syncthreads()
            first += cuda.gridDim.x * rows

    backward_long.py_func.factory_key = (__name__, "_backward_long_kernel", (per_element,))
    return backward_long


@functools.lru_cache(maxsize=256)
def cache_length(block, L, arrays, dtype, scratch=scratch_bytes):
    """How many values of a row (a prefix: all ``L`` when they fit) a long-row kernel keeps in
    shared memory, ``arrays`` row arrays per row of the block, beside the reduction scratch
    (of ``scratch(block, dtype)`` bytes); the kernel re-reads the rest from global memory."""
    free = ROW_CACHE_BYTES - scratch(block, dtype)
    return max(0, min(L, free // (block[1] * arrays * np.dtype(dtype).itemsize)))


def _shared_bytes(block, length, arrays, dtype):
    """Dynamic shared memory of a row kernel: the reduction scratch and ``arrays`` rows of
    ``length`` values per row of the block."""
    return scratch_bytes(block, dtype) + block[1] * arrays * length * np.dtype(dtype).itemsize


# ----------------------------------------------------------------------------- host side

def forward(x2, weight, bias, period, nseg, eps, center, out_dtype, dtype=None):
    """Normalize each row of ``x2``: ``y = (x - mean) * rstd * w + b`` with per-row statistics.

    Parameters
    ----------
    x2 : device array, shape (R, L), C-contiguous
        The rows: float16, float32 or float64.
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
    dtype : dtype, optional
        The compute dtype: float32 or float64 (default ``x2``'s, float32 for float16).

    Returns
    -------
    y2 : device array, shape (R, L), ``out_dtype``
    mean, rstd, std : device arrays, shape (R,), in the compute dtype
        ``std`` is the square root of the biased variance (its square may overflow).
    """
    R, L = x2.shape
    dtype = compute_dtype(x2, dtype)
    if L == 0:  # statistics of nothing
        return empty((R, 0), out_dtype), full(R, np.nan, dtype), full(R, np.nan, dtype), full(R, np.nan, dtype)
    w = vector(weight, period * nseg, 1.0, _param_dtype(weight, dtype))
    b = vector(bias, period * nseg, 0.0, _param_dtype(bias, dtype))
    y2 = empty((R, L), out_dtype)
    mean, rstd, std = empty(R, dtype), empty(R, dtype), empty(R, dtype)
    if R == 0:
        return y2, mean, rstd, std
    sqrt_eps = dtype.type(math.sqrt(eps))
    weights = weights_of(period, nseg, L)
    config = register_row_config(R, L, "forward_segments" if weights == SEGMENT else "forward", dtype.itemsize)
    if config is not None:
        grid, block, per = config
        _forward_kernel(per, block[0], min(per, L // block[0]), weights)[grid, block, 0, scratch_bytes(block, dtype)](
            x2, y2, w, b, period, nseg, dtype.type(1 / L), sqrt_eps, center, mean, rstd, std)
    else:
        grid, block = row_config(R, L)
        length = cache_length(block, L, 1, dtype)
        _forward_long_kernel(nseg == L)[grid, block, 0, _shared_bytes(block, length, 1, dtype)](
            x2, y2, w, b, period, nseg, sqrt_eps, center, length, mean, rstd, std)
    return y2, mean, rstd, std


def moments(x2, length, dtype=None):
    """``mean`` and ``rss = sqrt(sum((x - mean)**2))`` of the device rows ``x2`` cut in pieces.

    Each row of ``L > 0`` values is cut into ``ceil(L / length)`` pieces, so that
    a few long rows still keep many blocks busy; the results are ``(R, pieces)``,
    in the compute ``dtype`` (default ``x2``'s, float32 for float16).
    """
    R, L = x2.shape
    dtype = compute_dtype(x2, dtype)
    pieces = cdiv(L, length)
    mean, rss = empty((R, pieces), dtype), empty((R, pieces), dtype)
    if R:
        grid, block = row_config(R * pieces, length)
        _moments[grid, block, 0, scratch_bytes(block, dtype)](x2, length, mean, rss)
    return mean, rss


def backward(x2, dy2, weight, period, nseg, mean, rstd, center, dx_dtype, dw_dtype, db_dtype):
    """Gradients of :func:`forward`.

    Parameters
    ----------
    x2, dy2 : device arrays, shape (R, L), C-contiguous
        The forward's rows and the gradient of ``y2`` (float16, float32 or float64).
    weight, period, nseg, center
        As given to :func:`forward`.
    mean, rstd : device arrays, shape (R,)
        The statistics :func:`forward` returned; their dtype is the compute dtype.
    dx_dtype, dw_dtype, db_dtype : dtype
        The dtypes of the three results.

    Returns
    -------
    dx2 : device array, shape (R, L)
    dweight, dbias : device arrays, shape (period * nseg,)
        ``sum(dy * xhat)`` and ``sum(dy)`` per affine entry.
    """
    R, L = x2.shape
    dtype = mean.dtype
    entries = period * nseg
    dx2 = empty((R, L), dx_dtype)
    dw, db = empty(entries, dw_dtype), empty(entries, db_dtype)
    if R == 0 or L == 0:
        return dx2, full(entries, 0.0, dw_dtype), full(entries, 0.0, db_dtype)
    w = vector(weight, entries, 1.0, _param_dtype(weight, dtype))
    weights = weights_of(period, nseg, L)
    dy_shared = False  # x and dy in registers, else dy in shared memory for rows twice as long
    config = register_row_config(R, L, "backward", dtype.itemsize, partial_rows_limit())
    if config is None:
        config = register_row_config(R, L, "backward_dy_shared", dtype.itemsize, partial_rows_limit())
        dy_shared = True
    if config is not None:
        grid, block, per = config
        lanes, rows = block
        kept = rows * lanes * per if dy_shared else 0  # dy's values in shared memory
        if weights == ELEMENT:  # a partial row per block
            dw_part, db_part = empty((grid, L), dtype), empty((grid, L), dtype)
            kept = max(kept, 2 * L if rows > 1 else 0)  # the block's dw, db rows, after the loop
        else:  # sums per row and segment; the rows of entry c are rows c, c + period, ...
            dw_part, db_part = empty((R, nseg), dtype), empty((R, nseg), dtype)
        rows_kernel = _backward_kernel(per, lanes, min(per, L // lanes), weights, dy_shared)
        rows_kernel[grid, block, 0, scratch_bytes(block, dtype) + kept * dtype.itemsize](
            x2, dy2, dx2, w, period, nseg, mean, rstd, dtype.type(1 / L), center, dw_part, db_part)
        if weights != ELEMENT:
            dw_part, db_part = (a.reshape(R // period, entries) for a in (dw_part, db_part))
    else:
        grid, block = row_config(R, L, partial_rows_limit())
        parts = grid * block[1]
        dw_part, db_part = empty((parts, entries), dtype), empty((parts, entries), dtype)
        length = cache_length(block, L, 2, dtype)
        _backward_long_kernel(nseg == L)[grid, block, 0, _shared_bytes(block, length, 2, dtype)](
            x2, dy2, dx2, w, period, nseg, mean, rstd, center, length, dw_part, db_part)
    column_sums(dw_part, db_part, dw, db)
    return dx2, dw, db


def _param_dtype(a, dtype):
    """The dtype the kernels read an affine parameter in: float16 device parameters as they are
    (no cast launch), else the compute dtype."""
    return a.dtype if a is not None and a.dtype == np.float16 and not is_host(a) else dtype
