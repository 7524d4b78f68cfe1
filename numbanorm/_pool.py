"""Caching pools of freed buffers, shared by the CPU and CUDA backends; ``empty_cache()``.

A training loop asks for outputs and temporaries of the same sizes every step.
A pool keeps the buffers behind arrays the caller has dropped and hands them out
again, so that after the first step nothing is allocated: no page faults on the
CPU, no ``cuMemAlloc`` on the GPU.

A buffer is lent out behind an *owner*, an object that the array handed out and
every view of it (reshape, slice, transpose) keep alive; when the last of them
is garbage collected, a ``weakref.finalize`` on the owner gives the buffer back.
So an output never aliases a buffer that some array still uses.

``NUMBANORM_POOL_BYTES`` (bytes, read when a pool is made; default 1 GiB) caps
the bytes of *free* buffers each pool keeps: the CPU's outputs pool, its scratch
pool, and one pool per GPU. Over the cap the size classes used least recently
are released first; ``0`` keeps nothing (every request allocates).
:func:`empty_cache` releases every free buffer and the backends' cached
constants at once. Importing this module imports neither backend.
"""
from __future__ import annotations

import collections
import math
import os
import sys
import threading
import weakref

import numpy as np

DEFAULT_CAP = 1 << 30
MIN_CLASS = 512  # bytes: the smallest size class (tiny vectors share one)

_pools = {}          # label -> Pool, for empty_cache() and `python -m numbanorm info`
_clear_hooks = []    # other caches to drop in empty_cache() (the CUDA backend's constants)


def default_cap():
    """The bytes of free buffers a pool keeps: ``NUMBANORM_POOL_BYTES``, else 1 GiB."""
    value = os.environ.get("NUMBANORM_POOL_BYTES", "").strip()
    if not value:
        return DEFAULT_CAP
    try:
        cap = int(float(value))
    except ValueError:
        raise ValueError(f"NUMBANORM_POOL_BYTES must be a number of bytes, not {value!r}") from None
    return max(0, cap)


def size_class(nbytes):
    """``nbytes`` rounded up to its size class: 8 classes per power of two (at most 12.5% waste)."""
    if nbytes <= MIN_CLASS:
        return MIN_CLASS
    step = 1 << max(0, nbytes.bit_length() - 4)
    return -(-nbytes // step) * step


class Pool:
    """Free buffers kept by size class for reuse, least recently used released over a cap.

    Parameters
    ----------
    allocate : callable
        ``allocate(nbytes) -> buffer``: fresh memory (a pool miss).
    lend : callable
        ``lend(buffer, shape, dtype) -> (array, owner)``: an array over the start
        of ``buffer``, and the object that it and all its views keep alive.
    cap_bytes : int, optional
        The most bytes of free buffers kept (default: :func:`default_cap`).
    max_buffers : int, optional
        The most free buffers kept (default: no limit).
    label : str, optional
        Registers the pool under this name for :func:`empty_cache` and :func:`pool_report`.
    """

    def __init__(self, allocate, lend, cap_bytes=None, max_buffers=None, label=None):
        self._allocate = allocate
        self._lend = lend
        self.cap_bytes = default_cap() if cap_bytes is None else cap_bytes
        self.max_buffers = math.inf if max_buffers is None else max_buffers
        self._free = collections.OrderedDict()  # size class -> [buffers]; least recently used first
        self._returned = collections.deque()    # (size, buffer) given back by finalizers, not yet filed
        self._lock = threading.Lock()
        self.kept_bytes = 0       # free buffers kept
        self.kept_buffers = 0
        self.total_bytes = 0      # every buffer made and not released: kept, or behind live arrays
        self.hits = 0
        self.misses = 0
        if label is not None:
            _pools[label] = self

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` over a pooled buffer."""
        dtype = np.dtype(dtype)
        size = size_class(math.prod(shape) * dtype.itemsize)
        with self._lock:
            self._file_returned()
            buffers = self._free.get(size)
            if buffers:
                buffer = buffers.pop()  # the most recently freed: likeliest still in cache
                if not buffers:
                    del self._free[size]
                self.kept_bytes -= size
                self.kept_buffers -= 1
                self.hits += 1
            else:
                buffer = None
                self.misses += 1
        if buffer is None:
            buffer = self._allocate(size)  # outside the lock: on a full GPU it clears this pool
            with self._lock:
                self.total_bytes += size
        array, owner = self._lend(buffer, shape, dtype)
        # The finalizer must not take the lock: it may run in a garbage collection
        # triggered while this thread holds it. A deque append is atomic.
        weakref.finalize(owner, self._returned.append, (size, buffer)).atexit = False
        return array

    def _file_returned(self):
        """File the buffers given back since the last call; release the oldest over the caps."""
        while self._returned:
            size, buffer = self._returned.popleft()
            self._free.setdefault(size, []).append(buffer)
            self._free.move_to_end(size)
            self.kept_bytes += size
            self.kept_buffers += 1
        while self.kept_bytes > self.cap_bytes or self.kept_buffers > self.max_buffers:
            size, buffers = next(iter(self._free.items()))
            buffers.pop(0)
            if not buffers:
                del self._free[size]
            self.kept_bytes -= size
            self.kept_buffers -= 1
            self.total_bytes -= size

    def clear(self):
        """Release every free buffer (buffers behind live arrays come back, and are kept, later)."""
        with self._lock:
            self._file_returned()
            self._free.clear()
            self.total_bytes -= self.kept_bytes
            self.kept_bytes = self.kept_buffers = 0

    def stats(self):
        """``dict(kept_bytes, lent_bytes, hits, misses)`` once the buffers given back so far are filed.

        ``kept_bytes``: free buffers kept; ``lent_bytes``: buffers behind live arrays.
        """
        with self._lock:
            self._file_returned()
            return dict(kept_bytes=self.kept_bytes, lent_bytes=self.total_bytes - self.kept_bytes,
                        hits=self.hits, misses=self.misses)


class _HostOwner:
    """What a host array lent from a pool refers to: NumPy keeps it as the ``base`` of the
    array and of every view of it, so it lives exactly as long as they do."""

    __slots__ = ("__array_interface__", "buffer", "__weakref__")

    def __init__(self, buffer, shape, dtype):
        self.buffer = buffer
        self.__array_interface__ = dict(version=3, shape=tuple(shape), typestr=dtype.str,
                                        data=(buffer.ctypes.data, False))


def allocate_host(nbytes):
    """A fresh host buffer of ``nbytes`` (a pool's ``allocate``)."""
    return np.empty(nbytes, np.uint8)


def lend_host(buffer, shape, dtype):
    """An array of ``shape`` and ``dtype`` over the start of the host ``buffer``, and its owner
    (a pool's ``lend``)."""
    owner = _HostOwner(buffer, shape, dtype)
    return np.asarray(owner), owner


def on_empty_cache(fn):
    """Decorator: call ``fn()`` in :func:`empty_cache`, before the pools are cleared."""
    _clear_hooks.append(fn)
    return fn


def empty_cache():
    """Release the free buffers of every pool and the cached device constants and parameters.

    Arrays still alive keep their memory; their buffers return to the pools when
    they are dropped. Touches only the backends already in use: it never imports
    ``numba.cuda``.
    """
    for hook in _clear_hooks:   # first: the constants they drop go back to the pools
        hook()
    for pool in list(_pools.values()):
        pool.clear()


def pool_report():
    """``{label: stats()}`` of every pool made so far (see :meth:`Pool.stats`)."""
    return {label: pool.stats() for label, pool in list(_pools.items())}


def _size(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def describe_pools():
    """One line for ``python -m numbanorm info``: each pool's free and lent bytes, and the cap."""
    report = pool_report()
    pools = [f"{label} {_size(s['kept_bytes'])} free + {_size(s['lent_bytes'])} in use" for label, s in report.items()]
    if "numbanorm.cuda._arrays" in sys.modules and not any(label.startswith("cuda") for label in report):
        pools.append("cuda none yet (no device array made)")
    pools = ", ".join(pools)
    return (f"{pools or 'none made yet'} (free bytes kept per pool at most {_size(default_cap())}: "
            f"NUMBANORM_POOL_BYTES; numbanorm.empty_cache() releases them)")
