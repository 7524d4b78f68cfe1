"""Device arrays: moving arrays to and from the kernels' layouts, and the canonical views.

Every kernel reads C-contiguous device arrays in the compute dtype (float32 or
float64; outputs may be float16, cast on store). Host input is laid out on the
host, as the CPU backend does, then copied over; device input is permuted on
the device, and not copied at all when it is laid out already.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .. import _host
from ._launch import SIM, flat_config, kernel


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


@kernel
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
