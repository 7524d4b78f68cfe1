"""Group norm on the GPU: one row per (sample, group), one weight per channel segment of it."""
from . import rowwise
from ._arrays import give, is_host, rows, to_host


def _group_rows(x, p):
    """Device rows of shape (N * G, C // G * spatial) with channels first, and the way back."""
    spatial = tuple(i for i in range(1, x.ndim) if i != p["axis"])
    x2, undo = rows(x, (p["axis"], *spatial), None)  # float16 stays float16: the kernels read it
    groups = p["num_groups"]
    return x2.reshape(x2.shape[0] * groups, x2.shape[1] // groups), lambda y: undo(y.reshape(x2.shape))


def forward(x, p):
    host = is_host(x)
    xg, undo = _group_rows(x, vars(p))
    groups = p.num_groups
    channels_per_group = x.shape[p.axis] // groups
    y2, mean, rstd, _ = rowwise.forward(xg, p.weight, p.bias, groups, channels_per_group, p.eps, True, p.dtype,
                                        p.cdtype)
    public = (x.shape[0], groups)
    return (undo(y2), to_host(mean.reshape(public), host), to_host(rstd.reshape(public), host),
            {"x2": xg, "mean": mean, "rstd": rstd})


def backward(dy, cache):
    p, s = cache.params, cache.saved
    host = is_host(dy)
    dyg, undo = _group_rows(dy, p)
    groups = p["num_groups"]
    dx2, dweight, dbias = rowwise.backward(s["x2"], dyg, p["weight"], groups, dy.shape[p["axis"]] // groups,
                                           s["mean"], s["rstd"], True, p["dtype"],
                                           p["weight_dtype"] or p["cdtype"], p["bias_dtype"] or p["cdtype"])
    return (undo(dx2), None if p["weight"] is None else give(dweight, None, host),
            None if p["bias"] is None else give(dbias, None, host))
