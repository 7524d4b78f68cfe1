"""Group norm on the CPU.

Channels at axis 1: one row per (sample, group), one weight per channel segment
of it, for the row-wise primitive. Channels elsewhere (channels-last): per
(sample, channel) statistics from the per-channel primitive, combined over each
group's channels, so no transposed copy is made.
"""
import math

import numpy as np

from .._host import rows_view, sample_channel_view
from . import rowwise
from .batch_norm import channel_grads, normalize_samples


def _group_rows(x, p):
    """Rows of shape (N * G, C // G * spatial) with channels first, and the way back."""
    groups = p["num_groups"]
    if p["axis"] == 1 and x.flags.c_contiguous:  # the common call, in two reshapes
        shape = x.shape
        return x.reshape(shape[0] * groups, math.prod(shape[1:]) // groups), lambda y: y.reshape(shape)
    spatial = tuple(i for i in range(1, x.ndim) if i != p["axis"])
    x2, undo = rows_view(x, (p["axis"], *spatial))
    return x2.reshape(x2.shape[0] * groups, x2.shape[1] // groups), lambda y: undo(y.reshape(x2.shape))


def forward(x, p):
    groups = p.num_groups
    channels_per_group = x.shape[p.axis] // groups
    public = (x.shape[0], groups)
    if p.axis == 1:
        xg, undo = _group_rows(x, vars(p))
        y2, mean, rstd, _ = rowwise.forward(xg, p.weight, p.bias, groups, channels_per_group, p.eps, True)
        y, saved = undo(y2), {"x2": xg}
        mean, rstd = mean.reshape(public), rstd.reshape(public)
    else:
        x4 = sample_channel_view(x, p.axis)
        y4, mean, var = normalize_samples(x4, p.eps, p.weight, p.bias, channels_per_group)
        mean, var = mean[:, ::channels_per_group], var[:, ::channels_per_group]  # one per group
        rstd = 1.0 / np.sqrt(var + p.eps)
        y, saved = y4.reshape(x.shape), {"x4": x4}
    saved.update(mean=mean, rstd=rstd)
    return y, mean, rstd, saved


def backward(dy, cache):
    p, s = cache.params, cache.saved
    groups = p["num_groups"]
    channels_per_group = dy.shape[p["axis"]] // groups
    weight, bias = p["weight"], p["bias"]
    if "x4" in s:
        spread = lambda v: np.repeat(v, channels_per_group, axis=1)  # noqa: E731
        dx4, dweight, dbias = channel_grads(s["x4"], sample_channel_view(dy, p["axis"]), spread(s["mean"]),
                                            spread(s["rstd"]), weight, bias, True, channels_per_group)
        return dx4.reshape(dy.shape), dweight, dbias
    dyg, undo = _group_rows(dy, p)
    dx2, dweight, dbias = rowwise.backward(s["x2"], dyg, weight, groups, channels_per_group,
                                           s["mean"].reshape(-1), s["rstd"].reshape(-1), True)
    return (undo(dx2), None if weight is None else dweight, None if bias is None else dbias)
