"""Reference weight norm: ``w = g * v / ||v||``, the norm over every axis but ``axis``."""
import numpy as np

from .._host import slices_view


def forward(v, p):
    v2, undo = slices_view(v.astype(np.float64), p.axis)
    g = p.g.astype(np.float64).reshape(-1)
    scale = np.exp(g) if p.log_scale else g
    norm = np.sqrt(np.square(v2).sum(axis=1) + p.eps)
    w2 = v2 * (scale / norm)[:, None]
    return undo(w2).astype(p.cdtype), None, (1.0 / norm).astype(p.cdtype), {"v2": v2, "norm": norm, "scale": scale}


def backward(dw, cache):
    """``dv = scale / n * (dw - v * (v . dw) / n**2)``, ``dscale = (v . dw) / n``, ``ds = dscale * exp(s)``."""
    p, s = cache.params, cache.saved
    dw2, undo = slices_view(dw.astype(np.float64), p["axis"])
    v2, norm, scale = s["v2"], s["norm"], s["scale"]
    dot = (v2 * dw2).sum(axis=1)
    dv2 = (scale / norm)[:, None] * (dw2 - v2 * (dot / norm**2)[:, None])
    dg = dot / norm
    if p["log_scale"]:
        dg = dg * scale
    return undo(dv2).astype(p["cdtype"]), dg.reshape(p["g_shape"]).astype(p["cdtype"])
