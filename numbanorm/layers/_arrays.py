"""Where a layer's arrays live: host NumPy arrays or CUDA device arrays.

Layers keep their parameters, gradients and float buffers either all on the host
or all on the device (Numba device arrays); integer counters stay on the host
(the functional ops increment them there). numba.cuda is imported only when a
device array is made or touched, so the CPU path works without numba-cuda.
"""
from __future__ import annotations

import importlib

import numpy as np

from .._dispatch import is_device_array


def _cuda_arrays():
    """:mod:`numbanorm.cuda._arrays`; RuntimeError where the cuda backend cannot run."""
    try:
        return importlib.import_module("numbanorm.cuda._arrays")
    except ImportError as exc:
        raise RuntimeError(f"backend 'cuda' is not available: {exc}") from exc


def on_device(a):
    return not isinstance(a, np.ndarray) and is_device_array(a)


def require_cuda():
    """Raise RuntimeError unless device arrays can be made here (before anything is moved)."""
    _cuda_arrays()


def to_host(a):
    """``a`` as a NumPy array: itself when it is one, a copy of a device array, else ``np.asarray``."""
    if isinstance(a, np.ndarray):
        return a
    if is_device_array(a):
        return _cuda_arrays().device_view(a).copy_to_host()
    return np.asarray(a)


def to_device(a, dtype=None):
    """``a`` as a C-contiguous Numba device array of ``dtype``: itself when it is one already."""
    arrays = _cuda_arrays()
    if on_device(a):
        return arrays.to_device(arrays.device_view(a), dtype)
    return arrays.cuda.to_device(np.asarray(a, dtype=dtype, order="C"))  # keeps 0-d arrays 0-d


def host_copy(a):
    """A NumPy copy of ``a``, never sharing memory with it."""
    return a.copy() if isinstance(a, np.ndarray) else to_host(a)


def assign(dst, src):
    """Write the values of ``src`` (any kind, same number of elements) into ``dst`` in place."""
    values = to_host(src).reshape(dst.shape)
    if isinstance(dst, np.ndarray):
        dst[...] = values
    else:
        dst.copy_to_device(np.asarray(values, dtype=dst.dtype, order="C"))


def zero(a):
    """Set ``a`` to zeros in place."""
    if isinstance(a, np.ndarray):
        a[...] = 0
    else:
        a.copy_to_device(np.zeros(a.shape, a.dtype))


def accumulate(acc, g):
    """``acc += g`` in place; ``g`` of any kind (host, Numba, CuPy, torch CUDA) and layout."""
    if isinstance(acc, np.ndarray):
        acc += to_host(g).reshape(acc.shape)
        return
    if acc.size == 0:
        return
    g = to_device(g, acc.dtype)
    from ._cuda import add_into
    from ..cuda._launch import flat_config
    grid, block = flat_config(acc.size)
    add_into[grid, block](acc.reshape(acc.size), g.reshape(g.size))
