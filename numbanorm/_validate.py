"""Shared argument checks and their error messages.

Every public function runs these before any backend is called, so a call that
fails has written nothing: running statistics, u vectors and outputs stay as
they were.
"""
from __future__ import annotations

import operator

import numpy as np

from ._dispatch import device_view

# Concrete types: isinstance against the numbers ABCs costs microseconds per call.
_REALS = (int, float, np.integer, np.floating)


def float_dtype(name, a):
    """The dtype of ``a``; TypeError unless it is float16, float32 or float64."""
    dtype = a.dtype if isinstance(a, np.ndarray) else np.dtype(getattr(a, "dtype", None) or np.asarray(a).dtype)
    if dtype.kind != "f" or dtype.itemsize > 8:
        raise TypeError(f"{name} has dtype {dtype}; numbanorm supports float16, float32 and float64")
    return dtype


_COMPUTE_DTYPES = {np.dtype(np.float16): np.dtype(np.float32)}


def compute_dtype(dtype):
    """The dtype kernels compute in: float16 computes in float32."""
    dtype = np.dtype(dtype)
    return _COMPUTE_DTYPES.get(dtype, dtype)


def as_array(name, a):
    """``a`` as an array (device arrays pass through); TypeError for non-numeric objects.

    [cuda] A CuPy array or torch CUDA tensor becomes a Numba device array view of
    the same memory, so the checks (and the kernels) see NumPy dtypes and shapes.
    """
    if type(a) is np.ndarray:  # the common call, checked without a function call
        dtype = a.dtype
        if dtype.kind != "f" or dtype.itemsize > 8:
            float_dtype(name, a)
        return a
    if not isinstance(a, np.ndarray):
        if hasattr(a, "__cuda_ndarray__"):  # a Numba (or simulator) device array
            pass
        elif hasattr(a, "__cuda_array_interface__"):
            a = device_view(a)
        else:
            try:
                a = np.asarray(a)
            except Exception as exc:  # ragged lists and the like
                raise TypeError(f"{name} cannot be read as an array: {exc}") from None
    float_dtype(name, a)
    return a


def channel_axis(axis, ndim, name="axis"):
    """Normalize a channel axis; it may not be axis 0, the batch axis."""
    axis = _one_axis(axis, ndim, name)
    if axis == 0:
        raise ValueError(f"{name}=0 names the batch axis; the channel axis must be one of 1..{ndim - 1}")
    return axis


def _one_axis(axis, ndim, name):
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def axes(axis, ndim, name="axis"):
    """Normalize an int or tuple of axes to a sorted tuple of distinct non-negative axes."""
    if type(axis) is int and -ndim <= axis < ndim:  # the common call, without the general checks
        return (axis % ndim,)
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if not items:
        raise ValueError(f"{name} must name at least one axis")
    out = tuple(sorted(_one_axis(a, ndim, name) for a in items))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axis!r} names an axis twice")
    return out


def min_ndim(x, ndim, op, what):
    if x.ndim < ndim:
        raise ValueError(f"{op} expects {what} (at least {ndim} dimensions), got shape {tuple(x.shape)}")


def positive(name, value):
    if not isinstance(value, _REALS) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def at_least(name, value, low):
    if not isinstance(value, _REALS) or not value >= low:
        raise ValueError(f"{name} must be a number >= {low:g}, got {value!r}")
    return float(value)


def real(name, value):
    if not isinstance(value, _REALS):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def fraction(name, value):
    if not isinstance(value, _REALS) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def param(name, a, shape, what):
    """An optional affine parameter or statistic of exactly ``shape`` (None passes).

    ``what`` says what the shape means, for the error: a string, or a function
    giving one (so a call that passes does not format it).
    """
    if a is None:
        return None
    a = as_array(name, a)
    if a.shape != shape and tuple(a.shape) != tuple(shape):
        what = what() if callable(what) else what
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected {tuple(shape)} ({what})")
    return a


def buffer(name, a, shape, what):
    """A running statistic updated in place: the right shape, a float dtype and writeable."""
    given = a
    a = param(name, a, shape, what)
    if isinstance(a, np.ndarray) and not a.flags.writeable or a is not given and _read_only_device(given):
        raise ValueError(f"{name} is read-only; it is updated in place")
    if a is not None and not (isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__")
                              or hasattr(a, "__cuda_ndarray__")):
        raise TypeError(f"{name} must be an array (it is updated in place), got {type(a).__name__}")
    return a


def _read_only_device(a):
    """[cuda] A CuPy array or torch tensor exported read-only (its Numba view would not say)."""
    return bool(getattr(a, "__cuda_array_interface__", {}).get("data", (0, False))[1])


def counter(name, a):
    """A ``num_batches_tracked`` buffer: a one-element integer array, incremented in place."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray) or a.size != 1 or a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a one-element integer array (it is incremented in place)")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is incremented in place")
    return a


def more_than_one(count, shape, what="value per channel"):
    """PyTorch's training check: statistics of a single value are meaningless."""
    if count <= 1:
        raise ValueError(f"Expected more than 1 {what} when training, got input size {tuple(shape)}")


def same_shape(name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected {tuple(shape)}, the shape of x")
