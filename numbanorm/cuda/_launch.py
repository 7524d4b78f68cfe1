"""Launch helpers: launch configurations, and moving arrays to and from the kernels' layouts.

Every kernel reads C-contiguous device arrays in the compute dtype (float32 or
float64; outputs may be float16, cast on store) and loops grid-stride, so a grid
may be smaller than the work.
Row kernels run ``(lanes, rows)`` blocks (see :mod:`._reduce`): a warp per row
for short rows, a block per row for long ones. The configurations depend on
the shapes only (never on timing or scheduling), so results are reproducible.

Under the CUDA simulator every thread is a Python thread, about a millisecond
each: the same kernels run with the geometry scaled down (a "warp" of 4 lanes,
blocks of 16 threads, at most 4 blocks), so that tests exercise every path -
warp per row, block per row, several blocks, grid-stride loops - in seconds.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import config, cuda

from .. import _host
from ._reduce import WARP, MAX_THREADS

SIM = bool(config.ENABLE_CUDASIM)

if SIM:
    ROW_WARP = 4          # lanes of a row when a warp works on it
    BLOCK = 16            # threads of a block
    MAX_BLOCKS = 4        # grid-stride loops cover the rest
    LONG_ROW = 32         # longer rows get a block of lanes
    MAX_LANES = 16
else:
    ROW_WARP = WARP
    BLOCK = 256
    MAX_BLOCKS = 1 << 16
    LONG_ROW = 1024
    MAX_LANES = MAX_THREADS
ELEMENTS_PER_LANE = 8     # a block per row gets about this many elements per lane
# Shared memory a row kernel may fill with its rows so that later passes do not
# re-read global memory: the 48 KiB a block gets without opting in. Small in the
# simulator, so its tests take both paths.
ROW_CACHE_BYTES = 1024 if SIM else 48 * 1024


def pow2_at_least(n):
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def cdiv(a, b):
    return -(-a // b)


@functools.lru_cache(maxsize=256)
def row_config(R, L, max_blocks=None):
    """``(grid, block)`` for a row kernel on ``(R, L)``: a warp per row, or a block per long row."""
    if L <= LONG_ROW:
        lanes, rows = ROW_WARP, max(1, BLOCK // ROW_WARP)
    else:
        lanes, rows = min(MAX_LANES, max(ROW_WARP, pow2_at_least(cdiv(L, ELEMENTS_PER_LANE)))), 1
    blocks = max(1, min(cdiv(R, rows), max_blocks or MAX_BLOCKS))
    return blocks, (lanes, rows)


@functools.lru_cache(maxsize=256)
def grid_config(R, L):
    """``(grid, block)`` for an elementwise kernel on ``(R, L)``: x along rows, y across them."""
    tx = min(ROW_WARP, pow2_at_least(L))
    ty = max(1, BLOCK // tx)
    gx = min(cdiv(L, tx), MAX_BLOCKS)
    gy = max(1, min(cdiv(R, ty), MAX_BLOCKS // gx, 65535))
    return (gx, gy), (tx, ty)


@functools.lru_cache(maxsize=256)
def flat_config(n):
    """``(grid, block)`` for a 1-D grid-stride kernel over ``n`` items."""
    threads = min(BLOCK, pow2_at_least(n))
    return max(1, min(cdiv(n, threads), MAX_BLOCKS)), threads


@functools.lru_cache(maxsize=1)
def partial_rows_limit():
    """How many blocks a kernel writing per-block partial sums gets: enough to fill the GPU."""
    if SIM:
        return MAX_BLOCKS
    return 4 * cuda.get_current_device().MULTIPROCESSOR_COUNT


# ----------------------------------------------------------------------------- device arrays

def is_host(a):
    return isinstance(a, np.ndarray)


def device_view(obj):
    """A Numba device array sharing the memory of ``obj`` (a CuPy array, a torch CUDA tensor...)."""
    if hasattr(obj, "__cuda_ndarray__"):
        return obj
    return cuda.as_cuda_array(obj)


def empty(shape, dtype):
    return cuda.device_array(shape, np.dtype(dtype))


def full(shape, value, dtype):
    return cuda.to_device(np.full(shape, value, np.dtype(dtype)))


def to_host(d, host):
    """``d`` copied to the host when ``host`` (the caller gave host arrays), else ``d``."""
    return d.copy_to_host() if host and d is not None else d


if SIM:
    def _view(d, shape, strides):
        return type(d)(np.lib.stride_tricks.as_strided(np.asarray(d), shape, strides))
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    def _view(d, shape, strides):
        return DeviceNDArray(shape, strides, d.dtype, stream=d.stream, gpu_data=d.gpu_data)


def transposed(d, perm):
    """The device array ``d`` with its axes permuted: a view, no copy."""
    perm = list(perm)
    if perm == list(range(d.ndim)):
        return d
    return _view(d, tuple(d.shape[i] for i in perm), tuple(d.strides[i] for i in perm))


def _merged_axes(shape, strides):
    """Shape and strides of the same elements in the same order, with as few axes as possible."""
    out_shape, out_strides = [], []
    for n, s in zip(shape, strides):
        if n == 1:
            continue
        if out_shape and out_strides[-1] == n * s:  # this axis continues the previous one
            out_shape[-1] *= n
            out_strides[-1] = s
        else:
            out_shape.append(n)
            out_strides.append(s)
    return out_shape, out_strides


@cuda.jit
def _gather(src, dst, shape, strides):
    """``dst[i]`` = element ``i``, in C order, of the array of ``shape`` and element ``strides`` over ``src``.

    A strided copy (cast on store): ``src`` is a flat view starting at the first element.
    """
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        k = i
        offset = 0
        for axis in range(len(shape) - 1, -1, -1):
            offset += (k % shape[axis]) * strides[axis]
            k //= shape[axis]
        dst[i] = src[offset]


def permuted(d, perm, dtype, copy=False):
    """A C-contiguous device copy of ``d`` with axes ``perm``, cast to ``dtype``.

    Unless ``copy``, ``d`` itself when it is one already: nothing is copied then.
    """
    dtype = np.dtype(dtype)
    src = transposed(d, perm)
    if src.dtype == dtype and src.is_c_contiguous() and not copy:
        return src
    out = empty(src.shape, dtype)
    if out.size:
        item = src.dtype.itemsize
        shape, strides = _merged_axes(src.shape, [s // item for s in src.strides])
        if any(s < 0 for s in strides):
            raise NotImplementedError("device arrays with negative strides are not supported")
        span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
        grid, block = flat_config(out.size)
        _gather[grid, block](_view(src, (span,), (item,)), out.reshape(out.size),
                             tuple(shape) or (1,), tuple(strides) or (1,))
    return out


def to_device(a, dtype=None, copy=False):
    """``a`` as a C-contiguous device array of ``dtype`` (default its own).

    Host arrays are copied over; a device array is cast or made contiguous on
    the device, and returned as it is when it already fits (unless ``copy``).
    """
    if a is None:
        return None
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if is_host(a):
        return cuda.to_device(np.ascontiguousarray(a, dtype))
    return permuted(a, range(a.ndim), dtype, copy)


def give(d, dtype, host):
    """The result ``d`` cast to ``dtype``, copied to the host when ``host`` (None passes)."""
    if d is None:
        return None
    return to_host(to_device(d, dtype), host)


@functools.lru_cache(maxsize=64)
def _constant(n, fill, dtype):
    return cuda.to_device(np.full(n, fill, dtype))


def vector(a, n, fill, dtype):
    """An affine parameter as a flat device vector of ``n`` entries; ``fill`` when it is absent."""
    return _constant(n, fill, np.dtype(dtype)) if a is None else to_device(a, dtype).reshape(n)


# ----------------------------------------------------------------------------- canonical views

def rows(x, axes, dtype):
    """``x`` as C-contiguous device rows ``(R, L)`` of ``dtype``, ``axes`` last; and the way back.

    Host input is laid out on the host, as the CPU backend does, then copied over;
    device input is permuted on the device (no copy when it is laid out already).
    ``undo(y2)`` gives an array of ``x``'s shape and kind: a transposed view
    where axes moved, copied to the host for host input.
    """
    if is_host(x):
        x2, undo = _host.rows_view(x, axes)
        return to_device(x2, dtype), lambda y2: undo(y2.copy_to_host())
    keep = [i for i in range(x.ndim) if i not in axes]
    perm = keep + list(axes)
    moved = permuted(x, perm, dtype)
    shape = (math.prod(x.shape[i] for i in keep), math.prod(x.shape[a] for a in axes))
    inverse = [perm.index(i) for i in range(x.ndim)]
    return moved.reshape(shape), lambda y2: transposed(y2.reshape(moved.shape), inverse)


def channels(x, axis, dtype):
    """``x`` as a C-contiguous device ``(A, C, B)`` array of ``dtype``, channel axis in the middle."""
    shape = (math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:]))
    if is_host(x):
        return to_device(_host.channel_view(x, axis), dtype), lambda y3: y3.copy_to_host().reshape(x.shape)
    return permuted(x, range(x.ndim), dtype).reshape(shape), lambda y3: y3.reshape(x.shape)
