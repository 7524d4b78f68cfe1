"""Device arrays: moving arrays to and from the kernels' layouts, and the canonical views.

Every kernel reads C-contiguous device arrays in the compute dtype (float32 or
float64; outputs may be float16, cast on store). Host input is laid out on the
host, as the CPU backend does, then copied over; device input is permuted on
the device, and not copied at all when it is laid out already.

Memory. Every device array the backend makes (outputs, saved statistics,
temporaries, uploads) comes from :func:`empty`, which draws from a caching pool
per GPU (:class:`numbanorm._pool.Pool`): a buffer goes back to the pool when the
last array over it (views included) is garbage collected, and is handed out
again to a later request of its size class, so a training loop makes no
``cuMemAlloc`` after its first step. Reuse is ordered because every kernel and
copy of the backend runs on the default stream; an array given to work on
another stream must be kept alive until that work is done (as with PyTorch's
caching allocator). ``NUMBANORM_POOL_BYTES`` caps the free bytes each GPU's pool
keeps (default 1 GiB; 0 keeps none) and ``numbanorm.empty_cache()`` releases
them. To allocate through RMM instead (its pool serves every library in the
process), enable RMM's Numba plugin before any CUDA use,
``NUMBA_CUDA_MEMORY_MANAGER=rmm.allocators.numba`` (or
``numba.cuda.set_memory_manager(rmm.allocators.numba.RMMNumbaManager)``), with
``NUMBANORM_POOL_BYTES=0`` so that numbanorm keeps no buffers of its own.

Parameters. The fast path is device arrays: weights, biases and running
statistics already on the GPU are used in place, with no copy. A small host
parameter (weight or bias vector of up to :data:`PARAM_CHECK_BYTES`) is copied
over once and kept, per GPU; as training updates weights in place, every call
compares the host array with a copy of what was uploaded (a read of the vector,
about a microsecond per KiB) and uploads again when it changed, so host weights
in a training loop are still copied every step. Larger host arrays are copied
every call. Constant ones/zeros for absent parameters are made once per GPU.
"""
from __future__ import annotations

import collections
import functools
import math
import threading

import numpy as np
from numba import cuda

from .. import _host, _pool
from .._validate import compute_dtype as _compute_dtype_of
from ._launch import SIM, flat_config, kernel

# Host parameters up to this size are kept on the device and re-checked each call.
PARAM_CHECK_BYTES = 1 << 16
# How many host parameters are kept on the device (least recently used dropped).
PARAM_ENTRIES = 64


# ----------------------------------------------------------------------------- device arrays

def compute_dtype(a, dtype=None):
    """The dtype the kernels compute in for data ``a``: ``dtype`` when given, else ``a``'s
    (float32 for float16, which the kernels read as it is)."""
    return np.dtype(dtype) if dtype is not None else _compute_dtype_of(a.dtype)


def is_host(a):
    return isinstance(a, np.ndarray)


def device_view(obj):
    """A Numba device array sharing the memory of ``obj`` (a CuPy array, a torch CUDA tensor...)."""
    if hasattr(obj, "__cuda_ndarray__"):
        return obj
    return cuda.as_cuda_array(obj)


def _device_id():
    """The current GPU's id (the simulator has one device, 0)."""
    return getattr(cuda.get_current_device(), "id", 0)


if SIM:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    _allocate = _pool.allocate_host

    def _lend(buffer, shape, dtype):
        array, owner = _pool.lend_host(buffer, shape, dtype)
        return FakeCUDAArray(array), owner

    def _flush_frees():
        pass

    def _view(d, shape, strides):
        return type(d)(np.lib.stride_tricks.as_strided(np.asarray(d), shape, strides))
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import CudaAPIError, MemoryPointer

    def _allocate(nbytes):
        try:
            return cuda.current_context().memalloc(nbytes)
        except (CudaAPIError, MemoryError):  # out of memory: give back what the pool keeps, once
            _pools[_device_id()].clear()
            _flush_frees()
            return cuda.current_context().memalloc(nbytes)

    def _lend(buffer, shape, dtype):
        # A pointer of its own for every array lent: the array, its reshapes and
        # transposed views (gpu_data=) and its slices (views whose owner is it)
        # all keep it alive; the buffer returns to the pool when it dies.
        owner = MemoryPointer(buffer.context, buffer.device_pointer, buffer.size)
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= max(n, 1)
        return DeviceNDArray(shape, tuple(strides), dtype, gpu_data=owner), owner

    def _flush_frees():
        """Make Numba free now the memory it defers freeing (on the current GPU)."""
        deallocations = getattr(cuda.current_context().memory_manager, "deallocations", None)
        if deallocations is not None:
            deallocations.clear()

    def _view(d, shape, strides):
        return DeviceNDArray(shape, strides, d.dtype, stream=d.stream, gpu_data=d.gpu_data)


_pools = {}  # GPU id -> Pool
_pools_lock = threading.Lock()


def device_pool():
    """The current GPU's pool of device buffers (made on first use)."""
    device = _device_id()
    pool = _pools.get(device)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(device)
            if pool is None:
                pool = _pools[device] = _pool.Pool(_allocate, _lend, label=f"cuda:{device}")
    return pool


def empty(shape, dtype):
    """An uninitialised C-contiguous device array, from the current GPU's pool.

    Parameters
    ----------
    shape : int or tuple of int
    dtype : dtype

    Returns
    -------
    device array
        Its buffer returns to the pool once it and every view of it are dropped.
    """
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(map(int, shape))
    return device_pool().empty(shape, np.dtype(dtype))


def to_host(d, host):
    """``d`` copied to the host when ``host`` (the caller gave host arrays), else ``d``."""
    return d.copy_to_host() if host and d is not None else d


@kernel
def _fill(out, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


def full(shape, value, dtype):
    """A device array of ``shape`` and ``dtype`` filled with ``value`` on the device (no copy)."""
    out = empty(shape, dtype)
    if out.size:
        grid, block = flat_config(out.size)
        _fill[grid, block](out.reshape(out.size), out.dtype.type(value))
    return out


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
    """A C-contiguous device copy of ``d`` with axes ``perm``, cast to ``dtype`` (None: ``d``'s own).

    Unless ``copy``, ``d`` itself when it is one already: nothing is copied then.
    """
    src = transposed(d, perm)
    dtype = src.dtype if dtype is None else np.dtype(dtype)
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
    """``a`` as a C-contiguous device array of ``dtype`` (None: its own, no cast).

    Host arrays are copied over; a device array is cast or made contiguous on
    the device, and returned as it is when it already fits (unless ``copy``).
    """
    if a is None:
        return None
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if is_host(a):
        out = empty(a.shape, dtype)
        _upload(out, a)
        return out
    return permuted(a, range(a.ndim), dtype, copy)


def _upload(d, a):
    """Copy the host array ``a`` into the C-contiguous device array ``d`` (cast to its dtype)."""
    if d.size:
        d.copy_to_device(np.asarray(a, d.dtype, order="C"))  # (ascontiguousarray makes 0-d 1-d)


def give(d, dtype, host):
    """The result ``d`` cast to ``dtype``, copied to the host when ``host`` (None passes)."""
    if d is None:
        return None
    return to_host(to_device(d, dtype), host)


@functools.lru_cache(maxsize=64)
def _constant_on(device, n, fill, dtype):
    return full(n, fill, dtype)


def _constant(n, fill, dtype):
    """A cached device vector of ``n`` entries ``fill`` on the current GPU (never written to)."""
    return _constant_on(_device_id(), n, fill, np.dtype(dtype))


_params = collections.OrderedDict()  # key -> (host copy, device copy), least recently used first
_params_lock = threading.Lock()


def _host_parameter(a, dtype):
    """The host vector ``a`` on the current GPU in ``dtype``: uploaded once, again when it changed."""
    if a.nbytes > PARAM_CHECK_BYTES:
        return to_device(a, dtype)
    # id and address tell arrays apart; a recycled id passes only with equal contents.
    key = (_device_id(), id(a), a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str, dtype.str)
    with _params_lock:
        entry = _params.get(key)
        if entry is not None:
            _params.move_to_end(key)
    if entry is None:
        entry = (a.copy(), to_device(a, dtype))
        with _params_lock:
            _params[key] = entry
            while len(_params) > PARAM_ENTRIES:
                _params.popitem(last=False)
    elif not np.array_equal(entry[0], a):  # updated in place since (w -= lr * g): upload again
        np.copyto(entry[0], a)
        _upload(entry[1], a)
    return entry[1]


def vector(a, n, fill, dtype):
    """An affine parameter as a flat device vector of ``n`` entries of ``dtype``; ``fill`` when it is absent.

    Device parameters are used as they are (cast or made contiguous on the
    device when needed); host ones are kept on the device between calls (see the
    module's docstring). Kernels only read the result.
    """
    dtype = np.dtype(dtype)
    if a is None:
        return _constant(n, fill, dtype)
    if is_host(a):
        return _host_parameter(a, dtype).reshape(n)
    return to_device(a, dtype).reshape(n)


@_pool.on_empty_cache
def _release():
    """``numbanorm.empty_cache()`` on the GPU: drop the cached constants and parameters and
    every free buffer of the pools, and have Numba free that memory now."""
    _constant_on.cache_clear()
    with _params_lock:
        _params.clear()
    for device, pool in list(_pools.items()):
        pool.clear()
        if not SIM:
            with cuda.gpus[device]:
                _flush_frees()


# ----------------------------------------------------------------------------- canonical views

def rows(x, axes, dtype):
    """``x`` as C-contiguous device rows ``(R, L)`` of ``dtype`` (None: ``x``'s own), ``axes`` last; and the way back.

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
    """``x`` as a C-contiguous device ``(A, C, B)`` array of ``dtype`` (None: ``x``'s own), channel axis
    in the middle; and the way back."""
    shape = (math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:]))
    if is_host(x):
        return to_device(_host.channel_view(x, axis), dtype), lambda y3: y3.copy_to_host().reshape(x.shape)
    return permuted(x, range(x.ndim), dtype).reshape(shape), lambda y3: y3.reshape(x.shape)
