"""How every CPU kernel is compiled and launched.

Each kernel is compiled twice: ``parallel=True`` for real work, and serial for
tiny inputs, where waking the thread pool costs more than the work. Results do
not depend on the thread count because every kernel splits its work into a
fixed number of items fixed by the shapes alone, and per-item partial sums are
combined afterwards in a fixed order.
"""
import contextlib
import functools
import importlib
import math
import os
import threading
import types

import numba
import numpy as np
from numba import njit
from numba.extending import overload

from .._pool import allocate_host, lend_host, Pool

# reassoc lets LLVM vectorise reductions (the order is still fixed by the code, so
# results stay reproducible); no nnan/ninf, so NaN and inf propagate as in NumPy.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
OPTIONS = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)

# Below this many elements a call runs serially.
SERIAL_BELOW = 1 << 15

# Target number of elements one work item handles: small enough to stay in L2
# between the passes over it, large enough to amortise the scheduling.
ITEM_ELEMENTS = 1 << 15


def _choose_threading_layer():
    """Prefer a thread-safe layer (TBB or OpenMP) so Python threads may call kernels at once.

    Returns True when calls into parallel kernels must be serialized by a lock
    (only Numba's workqueue layer, which is not thread-safe, is left).
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return os.environ["NUMBA_THREADING_LAYER"] in ("workqueue", "default")
    for pool in ("numba.np.ufunc.tbbpool", "numba.np.ufunc.omppool"):
        try:
            importlib.import_module(pool)
        except ImportError:
            continue
        numba.config.THREADING_LAYER = "threadsafe"
        return False
    return True


_launch_guard = threading.Lock() if _choose_threading_layer() else contextlib.nullcontext()

helper = njit(**OPTIONS)
"""Decorator for a small function called from inside kernels."""

row_helper = njit(inline="always", **OPTIONS)
"""Decorator for the per-row body of a kernel: inlined into the kernel's loop (at Numba's
IR level), so a row does not pay a call that passes every array field by value."""


def cast_like(arr, value):
    """``value`` converted to the dtype of ``arr`` (an array or a scalar); inside kernels, e.g.
    a float64 statistic to float32."""
    raise NotImplementedError("cast_like is only callable from compiled code")


@overload(cast_like)
def _cast_like(arr, value):
    dtype = getattr(arr, "dtype", arr)
    return lambda arr, value: dtype(value)


class Kernel:
    """A kernel body compiled as a parallel and a serial function; call it with ``work=``."""

    def __init__(self, fn):
        self.parallel = njit(parallel=True, **OPTIONS)(fn)
        # A distinct qualname keeps the two compilations apart in Numba's disk cache.
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_serial"
        twin.__module__ = fn.__module__
        self.serial = njit(**OPTIONS)(twin)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __call__(self, *args, work):
        if work < SERIAL_BELOW:
            return self.serial(*args)
        with _launch_guard:
            return self.parallel(*args)


def kernel(fn):
    """Decorator: compile ``fn`` (which loops with ``prange``) as a :class:`Kernel`."""
    return Kernel(fn)


def items(n, per_item):
    """The number of work items covering ``n`` units, ``per_item`` units each."""
    return -(-n // per_item) if n else 0


def row_blocks(rows, length, width):
    """``(rows_per_block, blocks)`` for a sum over rows of ``length`` elements kept as one
    float64 partial of ``width`` entries per block of rows, the partials summed afterwards.

    About :data:`ITEM_ELEMENTS` elements a block, at most 64 blocks and 2**21 partial
    entries in all; fixed by the shape, never the threads, so results do not depend on them.
    """
    blocks = max(1, min(64, items(rows, max(1, ITEM_ELEMENTS // max(length, 1))), (1 << 21) // max(width, 1)))
    rows_per_block = items(rows, blocks) or 1
    return rows_per_block, items(rows, rows_per_block)


@functools.lru_cache(maxsize=64)
def _constant(n, fill, dtype):
    """A read-only vector standing in for an absent weight (ones) or bias (zeros)."""
    a = np.full(n, fill, dtype)
    a.flags.writeable = False
    return a


def param(a, n, fill, dtype):
    """An affine parameter as a C-contiguous vector of ``n`` entries of ``dtype``; None gives ones or zeros."""
    if a is None:
        return _constant(n, fill, dtype)
    if a.ndim == 1 and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


class OutputPool:
    """Large buffers, reused once the caller has dropped every array made from them.

    A training loop asks for outputs and scratch of the same sizes every step. A
    fresh large array is fresh memory from the OS, which the kernel must fault in
    and zero page by page: as costly as writing the output a second time, and
    when a kernel's threads fault pages of the same array at once, several times
    that (measured: 12 ms for 4 MiB of per-block partial sums). Arrays of
    ``min_bytes`` or more come from a :class:`numbanorm._pool.Pool`, which hands
    a buffer out again only once every array over it is gone (any view,
    memoryview or ``torch.from_numpy`` of an output keeps it out of reach). The
    pool keeps at most ``max_buffers`` free buffers and ``NUMBANORM_POOL_BYTES``
    bytes of them (default 1 GiB); ``numbanorm.empty_cache()`` releases them.
    """

    def __init__(self, min_bytes=1 << 22, max_buffers=8, cap_bytes=None, label=None):
        self.min_bytes = min_bytes
        self.pool = Pool(allocate_host, lend_host, cap_bytes, max_buffers, label)

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array, like ``np.empty(shape, dtype)``."""
        dtype = np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize < self.min_bytes:
            return np.empty(shape, dtype)
        return self.pool.empty(shape, dtype)

    def empty_like(self, a):
        if a.nbytes < self.min_bytes:  # (the common small call, without the pool's bookkeeping)
            return np.empty(a.shape, a.dtype)
        return self.pool.empty(a.shape, a.dtype)

    def zeros(self, shape, dtype=np.float64):
        """A zeroed C-contiguous array, like ``np.zeros(shape, dtype)``."""
        dtype = np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize < self.min_bytes:
            return np.zeros(shape, dtype)  # (calloc: cheaper than empty and fill for small sizes)
        a = self.pool.empty(shape, dtype)
        a.fill(0)
        return a


outputs = OutputPool(label="cpu outputs")
"""The pool every CPU op takes its large outputs (y, dx, and what a cache keeps) from."""

scratch = OutputPool(min_bytes=1 << 16, label="cpu scratch")
"""The pool of buffers an op uses only during a call: per-block partial sums, temporaries.
Apart from :data:`outputs`, so that they never push a large output out."""
