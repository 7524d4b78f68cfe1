"""Weight norm on the CPU: RMS norm of each slice of v, through the row-wise primitive.

With L elements in a slice, ``g * v / sqrt(sum(v**2) + eps)`` is RMS norm of the
row with ``eps / L`` and a per-row weight ``g / sqrt(L)``; its gradients follow
from RMS norm's (dweight of the row = dg * sqrt(L)).
"""
import math

import numpy as np

from .._host import slices_view
from . import rowwise


def _row_weights(p, length):
    """The magnitudes (``exp(g)`` with ``log_scale``) and the rows' RMS-norm weights, ``/ sqrt(L)``,
    in the compute dtype (the kernel takes them in it)."""
    g = p["g"].reshape(-1)
    scale = np.exp(g) if p["log_scale"] else g
    return scale, scale * (1.0 / math.sqrt(max(length, 1)))


def forward(v, p):
    v2, undo = slices_view(v, p.axis)
    length = v2.shape[1]
    scale, weight = _row_weights(vars(p), length)
    w2, _, rstd, _ = rowwise.forward(v2, weight, None, v2.shape[0], 1, p.eps / max(length, 1), False)
    inverse_norm = rstd / math.sqrt(max(length, 1))
    return undo(w2), None, inverse_norm, {"v2": v2, "rstd": rstd}


def backward(dw, cache):
    p, s = cache.params, cache.saved
    dw2, undo = slices_view(dw, p["axis"])
    v2 = s["v2"]
    length = v2.shape[1]
    scale, weight = _row_weights(p, length)
    dv2, dweight, _ = rowwise.backward(v2, dw2, weight, v2.shape[0], 1,
                                       np.zeros(v2.shape[0]), s["rstd"], False)
    dg = dweight / math.sqrt(max(length, 1))
    if p["log_scale"]:
        dg = dg * scale
    return undo(dv2), dg.reshape(p["g_shape"]).astype(p["cdtype"])
