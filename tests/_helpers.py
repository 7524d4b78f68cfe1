"""Helpers shared by the test modules: calling the ops uniformly, building inputs,
scale-aware comparisons, snapshots of caller-owned arrays, and a float64 reference
written by hand with NumPy (independent of :mod:`numbanorm.reference`)."""
from __future__ import annotations

import math
import zlib

import numpy as np

import numbanorm as nbn

OPS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")
CHANNEL_OPS = ("batch_norm", "group_norm", "instance_norm")
GRAD_NAMES = {op: ("dx", "dweight") if op == "rms_norm" else ("dx", "dweight", "dbias") for op in OPS}

# Relative tolerances, applied scale-aware (see assert_close).
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4, np.dtype(np.float16): 5e-3}


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


def rng_for(*key):
    """A generator seeded from a stable hash of ``key`` (test ids), so failures reproduce."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ----------------------------------------------------------------------------- calling ops

def forward(op, x, backend=None, **kw):
    """``OP_forward(x, ...)``; ``num_groups`` is passed positionally for group_norm."""
    kw = dict(kw)
    fn = getattr(nbn, f"{op}_forward")
    if op == "group_norm":
        return fn(x, kw.pop("num_groups"), backend=backend, **kw)
    return fn(x, backend=backend, **kw)


def plain(op, x, backend=None, **kw):
    """``OP(x, ...)``, the forward-only function."""
    kw = dict(kw)
    fn = getattr(nbn, op)
    if op == "group_norm":
        return fn(x, kw.pop("num_groups"), backend=backend, **kw)
    return fn(x, backend=backend, **kw)


def backward(op, dy, cache, **kw):
    return getattr(nbn, f"{op}_backward")(dy, cache, **kw)


def channel_axis(op, kw, ndim):
    return kw.get("axis", 1) % ndim


def norm_axes(kw, ndim):
    """The normalized axes of layer/rms norm, sorted and non-negative."""
    axis = kw.get("axis", -1)
    items = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in items))


def param_shape(op, shape, kw):
    """Shape of weight/bias (and running stats for channel ops)."""
    if op in CHANNEL_OPS:
        return (shape[channel_axis(op, kw, len(shape))],)
    return tuple(shape[a] for a in norm_axes(kw, len(shape)))


def param_bshape(op, shape, kw):
    """The shape that broadcasts weight/bias against x."""
    ndim = len(shape)
    out = [1] * ndim
    if op in CHANNEL_OPS:
        ax = channel_axis(op, kw, ndim)
        out[ax] = shape[ax]
    else:
        for a in norm_axes(kw, ndim):
            out[a] = shape[a]
    return tuple(out)


def make_params(rng, op, shape, kw, affine="wb", running=False, dtype=np.float64, running_dtype=None):
    """Keyword arguments with weight ("w" in affine), bias ("b") and running stats."""
    kw = dict(kw)
    pshape = param_shape(op, shape, kw)
    if "w" in affine:
        kw["weight"] = rng.uniform(0.5, 1.5, pshape).astype(dtype)
    if "b" in affine and op != "rms_norm":
        kw["bias"] = rng.standard_normal(pshape).astype(dtype)
    if running:
        rdtype = dtype if running_dtype is None else running_dtype
        kw["running_mean"] = (0.5 * rng.standard_normal(pshape)).astype(rdtype)
        kw["running_var"] = rng.uniform(0.5, 2.0, pshape).astype(rdtype)
    return kw


def copy_kwargs(kw):
    """A copy of ``kw`` in which every array is a fresh copy (running stats are written)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


# ----------------------------------------------------------------------------- comparisons

def assert_close(actual, desired, tol, name=""):
    """``actual`` matches ``desired`` to ``tol`` relative to the largest magnitude of ``desired``.

    Shapes must agree exactly; an absent value (None) must be absent on both sides.
    """
    if desired is None or actual is None:
        assert actual is None and desired is None, f"{name}: got {actual!r}, expected {desired!r}"
        return
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, f"{name}: shape {actual.shape} != {desired.shape}"
    a64, d64 = actual.astype(np.float64), desired.astype(np.float64)
    assert np.all(np.isfinite(a64) == np.isfinite(d64)), f"{name}: non-finite values differ"
    scale = float(np.max(np.abs(d64[np.isfinite(d64)]), initial=0.0))
    atol = tol * scale if scale > 0 else tol
    np.testing.assert_allclose(a64, d64, rtol=tol, atol=atol, equal_nan=True, err_msg=name)


def assert_bitwise(actual, desired, name=""):
    if desired is None or actual is None:
        assert actual is None and desired is None, name
        return
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.dtype == desired.dtype and actual.shape == desired.shape, name
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(desired).tobytes(), (
        f"{name}: not bitwise equal (max abs diff "
        f"{np.max(np.abs(actual.astype(np.float64) - desired.astype(np.float64)), initial=0)})")


class Snapshot:
    """Copies of caller-owned arrays, to prove later that nothing wrote to them."""

    def __init__(self, **arrays):
        self.items = {k: (a, a.copy(order="K")) for k, a in arrays.items() if isinstance(a, np.ndarray)}

    def assert_unchanged(self):
        for name, (a, saved) in self.items.items():
            assert a.dtype == saved.dtype and a.shape == saved.shape, f"{name} changed shape/dtype"
            assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(saved).tobytes(), (
                f"{name} was modified")


# ----------------------------------------------------------------------------- hand reference

def group_rows(op, a, kw):
    """``a`` as rows, one per normalization group, and the function mapping rows back.

    Written independently of the library: batch norm groups every element of a
    channel, layer/RMS norm every element over the normalized axes, group norm a
    group of channels of one sample, instance norm one channel of one sample.
    """
    ndim = a.ndim
    if op == "batch_norm":
        ax = channel_axis(op, kw, ndim)
        m = np.moveaxis(a, ax, 0)
        rows = m.reshape(m.shape[0], -1)
        return rows, lambda r: np.moveaxis(r.reshape(m.shape), 0, ax)
    if op in ("layer_norm", "rms_norm"):
        axes = norm_axes(kw, ndim)
        dest = tuple(range(ndim - len(axes), ndim))
        m = np.moveaxis(a, axes, dest)
        width = math.prod(m.shape[ndim - len(axes):])
        rows = m.reshape(-1, width)
        return rows, lambda r: np.moveaxis(r.reshape(m.shape), dest, axes)
    ax = channel_axis(op, kw, ndim)
    m = np.moveaxis(a, ax, 1)
    groups = m.shape[0] * (kw["num_groups"] if op == "group_norm" else m.shape[1])
    rows = m.reshape(groups, math.prod(m.shape) // groups if groups else 0)
    return rows, lambda r: np.moveaxis(r.reshape(m.shape), 1, ax)


def hand_eps(op, kw, dtype):
    eps = kw.get("eps", None if op == "rms_norm" else 1e-5)
    return float(np.finfo(dtype).eps) if eps is None else eps


def hand_stats(op, x, kw):
    """float64 (mean, rstd) per group row, with the op's input statistics."""
    rows, _ = group_rows(op, np.asarray(x, dtype=np.float64), kw)
    eps = hand_eps(op, kw, x.dtype)
    if op == "rms_norm":
        mean = np.zeros((rows.shape[0], 1))
        var = np.mean(rows * rows, axis=1, keepdims=True)
    else:
        mean = rows.mean(axis=1, keepdims=True)
        var = np.mean((rows - mean) ** 2, axis=1, keepdims=True)
    return mean, 1.0 / np.sqrt(var + eps)


def hand_forward(op, x, kw):
    """float64 forward with input statistics (batch norm in training), affine included."""
    x64 = np.asarray(x, dtype=np.float64)
    rows, back = group_rows(op, x64, kw)
    mean, rstd = hand_stats(op, x, kw)
    y = back((rows - mean) * rstd)
    bshape = param_bshape(op, x.shape, kw)
    if kw.get("weight") is not None:
        y = y * kw["weight"].astype(np.float64).reshape(bshape)
    if kw.get("bias") is not None:
        y = y + kw["bias"].astype(np.float64).reshape(bshape)
    return y


def hand_backward(op, x, dy, kw):
    """float64 gradients (dx, dweight, dbias) of hand_forward, derived by hand."""
    x64, dy64 = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    bshape = param_bshape(op, x.shape, kw)
    weight, bias = kw.get("weight"), kw.get("bias")
    g = dy64 if weight is None else dy64 * weight.astype(np.float64).reshape(bshape)
    rows, back = group_rows(op, x64, kw)
    grows, _ = group_rows(op, g, kw)
    mean, rstd = hand_stats(op, x, kw)
    xhat = (rows - mean) * rstd
    inner = grows - xhat * np.mean(grows * xhat, axis=1, keepdims=True)
    if op != "rms_norm":
        inner = inner - grows.mean(axis=1, keepdims=True)
    dx = back(rstd * inner)
    xhat_full = back(xhat)
    kept = (channel_axis(op, kw, x.ndim),) if op in CHANNEL_OPS else norm_axes(kw, x.ndim)
    sum_axes = tuple(i for i in range(x.ndim) if i not in kept)
    dweight = None if weight is None else (dy64 * xhat_full).sum(axis=sum_axes).reshape(weight.shape)
    dbias = None if bias is None else dy64.sum(axis=sum_axes).reshape(bias.shape)
    return (dx, dweight) if op == "rms_norm" else (dx, dweight, dbias)
