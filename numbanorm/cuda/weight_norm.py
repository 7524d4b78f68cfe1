"""Weight norm on the GPU: RMS norm of each slice of v through the row-wise kernels.

As on the CPU (numbanorm/cpu/weight_norm.py): with L elements in a slice,
``g * v / sqrt(sum(v**2) + eps)`` is RMS norm with ``eps / L`` and a per-row
weight ``g / sqrt(L)``. The magnitudes (one per slice) are handled on the host.
"""
import math

import numpy as np

from . import rowwise
from ._arrays import full, is_host, rows, to_device


def _slices(v, axis, dtype):
    return rows(v, tuple(i for i in range(v.ndim) if axis is None or i != axis), dtype)


def _scale(p):
    """The magnitude per slice, float64 on the host (``exp(s)`` with ``log_scale``)."""
    g = p["g"] if is_host(p["g"]) else p["g"].copy_to_host()
    g = g.astype(np.float64).reshape(-1)
    return np.exp(g) if p["log_scale"] else g


def _small(a, dtype, host):
    """A small host result as the caller's kind: host, or copied to the device."""
    a = np.array(a, dtype)  # not ascontiguousarray: it makes 0-d arrays 1-d
    return a if host else to_device(a)


def forward(v, p):
    host = is_host(v)
    v2, undo = _slices(v, p.axis, p.cdtype)
    root = math.sqrt(max(v2.shape[1], 1))
    w2, _, rstd, _ = rowwise.forward(v2, _scale(vars(p)) / root, None, v2.shape[0], 1,
                                     p.eps / max(v2.shape[1], 1), False, p.dtype)
    inverse_norm = _small(rstd.copy_to_host() / root, p.cdtype, host)
    return undo(w2), None, inverse_norm, {"v2": v2, "rstd": rstd}


def backward(dw, cache):
    p, s = cache.params, cache.saved
    host = is_host(dw)
    dw2, undo = _slices(dw, p["axis"], p["cdtype"])
    v2 = s["v2"]
    rows_n, length = v2.shape
    root = math.sqrt(max(length, 1))
    scale = _scale(p)
    dv2, dweight, _ = rowwise.backward(v2, dw2, scale / root, rows_n, 1, full(rows_n, 0.0, v2.dtype), s["rstd"],
                                       False, p["dtype"], v2.dtype, v2.dtype)
    dg = dweight.copy_to_host().astype(np.float64) / root
    if p["log_scale"]:
        dg = dg * scale
    return undo(dv2), _small(dg.reshape(p["g_shape"]), p["g_dtype"], host)
