"""Group norm on the CPU: one row per (sample, group), one weight per channel segment of it."""
from .._host import rows_view
from . import rowwise


def _group_rows(x, p):
    """Rows of shape (N * G, C // G * spatial) with channels first, and the way back."""
    spatial = tuple(i for i in range(1, x.ndim) if i != p["axis"])
    x2, undo = rows_view(x, (p["axis"], *spatial))
    groups = p["num_groups"]
    return x2.reshape(x2.shape[0] * groups, x2.shape[1] // groups), lambda y: undo(y.reshape(x2.shape))


def forward(x, p):
    xg, undo = _group_rows(x, vars(p))
    groups = p.num_groups
    channels_per_group = x.shape[p.axis] // groups
    y2, mean, rstd, _ = rowwise.forward(xg, p.weight, p.bias, groups, channels_per_group, p.eps, True)
    public = (x.shape[0], groups)
    return (undo(y2), mean.reshape(public).astype(p.cdtype), rstd.reshape(public).astype(p.cdtype),
            {"x2": xg, "mean": mean, "rstd": rstd})


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dyg, undo = _group_rows(dy, p)
    groups = p["num_groups"]
    dx2, dweight, dbias = rowwise.backward(s["x2"], dyg, p["weight"], groups,
                                           dy.shape[p["axis"]] // groups, s["mean"], s["rstd"], True)
    return (undo(dx2), None if p["weight"] is None else dweight,
            None if p["bias"] is None else dbias)
