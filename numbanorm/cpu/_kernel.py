"""How every CPU kernel is compiled and launched.

Each kernel is compiled twice: ``parallel=True`` for real work, and serial for
tiny inputs, where waking the thread pool costs more than the work. Results do
not depend on the thread count because every kernel splits its work into a
fixed number of items fixed by the shapes alone, and per-item partial sums are
combined afterwards in a fixed order.
"""
import contextlib
import importlib
import os
import threading
import types

import numba
from numba import njit
from numba.extending import overload

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
    """``value`` converted to ``arr``'s dtype (inside kernels: a float64 statistic to float32)."""
    raise NotImplementedError("cast_like is only callable from compiled code")


@overload(cast_like)
def _cast_like(arr, value):
    dtype = arr.dtype
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
